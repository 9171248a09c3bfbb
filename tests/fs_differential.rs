//! Differential test: a seeded stream of random file-system operations is applied to a
//! mounted volume and to a plain directory; every operation must give the same result (the
//! same data or the same errno) on both, and at checkpoints the two trees must be identical.
//!
//! Besides reads, writes, truncates and namespace operations, the stream punches holes and
//! zeroes ranges (fallocate), sets set-ID modes and writes and truncates as nobody, whose
//! writes clear those bits.
//!
//! The seed is printed; rerun a failure with `KMSFS_TEST_SEED=<seed> cargo test --test
//! fs_differential`. `KMSFS_TEST_OPS` changes the number of operations.

mod common;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::mount::{errno, pattern, Mounted};
use common::users::{as_user, share_with_everyone, NOBODY};

/// xorshift64*: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[self.below(items.len())])
        }
    }
}

const NAMES: [&str; 8] = ["a", "b", "c", "dd", "e", "file", "g", "h"];

/// Names at the edges of how kmsfs stores them: 175 bytes is the longest stored directly,
/// 176 the shortest stored as a hash with a sidecar, 255 is NAME_MAX (in 1-, 2-, 3- and
/// 4-byte characters), and short multi-byte ones.
fn edge_names() -> Vec<String> {
    let fill = |tag: &str, c: char, len: usize| {
        let mut s = tag.to_string();
        while s.len() + c.len_utf8() <= len {
            s.push(c);
        }
        while s.len() < len {
            s.push('_');
        }
        s
    };
    vec![
        "a".into(),
        "Grüße-😀".into(),
        fill("s175-", 's', 175),
        fill("l176-", 'l', 176),
        fill("m255-", 'm', 255),
        fill("é255-", 'é', 255),
        fill("語255-", '語', 255),
        fill("😀255-", '😀', 255),
    ]
}
const SLOTS: usize = 4;
const MAX_DEPTH: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Create {
        path: String,
        excl: bool,
        trunc: bool,
    },
    Write {
        path: String,
        off: u64,
        len: usize,
        seed: u64,
    },
    Append {
        path: String,
        len: usize,
        seed: u64,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Read {
        path: String,
        off: u64,
        len: usize,
    },
    ReadAll {
        path: String,
    },
    Stat {
        path: String,
    },
    Lstat {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Readlink {
        path: String,
    },
    Open {
        slot: usize,
        path: String,
        append: bool,
    },
    HWrite {
        slot: usize,
        off: u64,
        len: usize,
        seed: u64,
    },
    HRead {
        slot: usize,
        off: u64,
        len: usize,
    },
    HTruncate {
        slot: usize,
        len: u64,
    },
    HStat {
        slot: usize,
    },
    Close {
        slot: usize,
    },
    /// fallocate(PUNCH_HOLE | KEEP_SIZE) through a new descriptor.
    Punch {
        path: String,
        off: u64,
        len: u64,
    },
    /// fallocate(ZERO_RANGE [| KEEP_SIZE]) through a new descriptor.
    ZeroRange {
        path: String,
        off: u64,
        len: u64,
        keep_size: bool,
    },
    HPunch {
        slot: usize,
        off: u64,
        len: u64,
    },
    HZeroRange {
        slot: usize,
        off: u64,
        len: u64,
        keep_size: bool,
    },
    /// chmod, set-ID modes among others.
    Chmod {
        path: String,
        mode: u32,
    },
    /// A write by nobody (no CAP_FSETID): where it may write, it clears set-ID bits.
    WriteAsNobody {
        path: String,
        off: u64,
        len: usize,
        seed: u64,
    },
    /// truncate(2) by nobody.
    TruncateAsNobody {
        path: String,
        len: u64,
    },
}

/// Modes for chmod: set-user-ID and set-group-ID (with and without group execute), files
/// others may or may not write.
const MODES: [u32; 9] = [0o644, 0o666, 0o4777, 0o2777, 0o6777, 0o2767, 0o6766, 0o4755, 0o2666];

/// What an operation returned, compared between the two sides.
#[derive(Debug, PartialEq)]
enum Out {
    Unit,
    Data(Vec<u8>),
    /// (kind, size, nlink, mode); size only for regular files and symlinks.
    Attr(char, u64, u64, u32),
}

fn kind_of(meta: &fs::Metadata) -> char {
    let t = meta.file_type();
    if t.is_symlink() {
        'l'
    } else if t.is_dir() {
        'd'
    } else if t.is_file() {
        'f'
    } else {
        '?'
    }
}

fn attr(meta: &fs::Metadata) -> Out {
    let kind = kind_of(meta);
    let size = if kind == 'd' { 0 } else { meta.len() };
    Out::Attr(kind, size, meta.nlink(), meta.mode() & 0o7777)
}

fn read_range(f: &File, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f.read_at(&mut buf[got..], off + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

/// Applies `op` under `root`, with that side's open handles.
fn apply(root: &Path, handles: &mut [Option<File>], op: &Op) -> Result<Out, i32> {
    let p = |rel: &str| root.join(rel);
    let unit = |r: std::io::Result<()>| r.map(|_| Out::Unit).map_err(|e| errno(&e));
    let handle = |h: &Option<File>| h.as_ref().expect("generator only uses open slots").try_clone().unwrap();
    match op {
        Op::Create { path, excl, trunc } => {
            let mut o = OpenOptions::new();
            o.write(true).truncate(*trunc);
            if *excl {
                o.create_new(true);
            } else {
                o.create(true);
            }
            unit(o.open(p(path)).map(drop))
        }
        Op::Write { path, off, len, seed } => unit(
            OpenOptions::new()
                .write(true)
                .open(p(path))
                .and_then(|f| f.write_all_at(&pattern(*seed, *len), *off)),
        ),
        Op::Append { path, len, seed } => unit(
            OpenOptions::new()
                .append(true)
                .open(p(path))
                .and_then(|mut f| f.write_all(&pattern(*seed, *len))),
        ),
        Op::Truncate { path, len } => {
            unit(OpenOptions::new().write(true).open(p(path)).and_then(|f| f.set_len(*len)))
        }
        Op::Read { path, off, len } => {
            File::open(p(path)).and_then(|f| read_range(&f, *off, *len)).map(Out::Data).map_err(|e| errno(&e))
        }
        Op::ReadAll { path } => fs::read(p(path)).map(Out::Data).map_err(|e| errno(&e)),
        Op::Stat { path } => fs::metadata(p(path)).map(|m| attr(&m)).map_err(|e| errno(&e)),
        Op::Lstat { path } => fs::symlink_metadata(p(path)).map(|m| attr(&m)).map_err(|e| errno(&e)),
        Op::Rename { from, to } => unit(fs::rename(p(from), p(to))),
        Op::Link { from, to } => unit(fs::hard_link(p(from), p(to))),
        Op::Unlink { path } => unit(fs::remove_file(p(path))),
        Op::Mkdir { path } => unit(fs::create_dir(p(path))),
        Op::Rmdir { path } => unit(fs::remove_dir(p(path))),
        Op::Symlink { target, path } => unit(std::os::unix::fs::symlink(target, p(path))),
        Op::Readlink { path } => fs::read_link(p(path))
            .map(|t| Out::Data(t.as_os_str().as_bytes().to_vec()))
            .map_err(|e| errno(&e)),
        Op::Open { slot, path, append } => {
            let mut o = OpenOptions::new();
            o.read(true);
            if *append {
                o.append(true);
            } else {
                o.write(true);
            }
            let f = o.open(p(path)).map_err(|e| errno(&e))?;
            handles[*slot] = Some(f);
            Ok(Out::Unit)
        }
        Op::HWrite { slot, off, len, seed } => {
            let f = handle(&handles[*slot]);
            unit(f.write_all_at(&pattern(*seed, *len), *off))
        }
        Op::HRead { slot, off, len } => {
            read_range(&handle(&handles[*slot]), *off, *len).map(Out::Data).map_err(|e| errno(&e))
        }
        Op::HTruncate { slot, len } => unit(handle(&handles[*slot]).set_len(*len)),
        Op::HStat { slot } => handle(&handles[*slot]).metadata().map(|m| attr(&m)).map_err(|e| errno(&e)),
        Op::Close { slot } => {
            handles[*slot] = None;
            Ok(Out::Unit)
        }
        Op::Punch { path, off, len } => OpenOptions::new()
            .write(true)
            .open(p(path))
            .map_err(|e| errno(&e))
            .and_then(|f| fallocate(&f, PUNCH, *off, *len)),
        Op::ZeroRange { path, off, len, keep_size } => OpenOptions::new()
            .write(true)
            .open(p(path))
            .map_err(|e| errno(&e))
            .and_then(|f| fallocate(&f, zero_mode(*keep_size), *off, *len)),
        Op::HPunch { slot, off, len } => fallocate(&handle(&handles[*slot]), PUNCH, *off, *len),
        Op::HZeroRange { slot, off, len, keep_size } => {
            fallocate(&handle(&handles[*slot]), zero_mode(*keep_size), *off, *len)
        }
        Op::Chmod { path, mode } => unit(fs::set_permissions(p(path), fs::Permissions::from_mode(*mode))),
        Op::WriteAsNobody { path, off, len, seed } => {
            let path = p(path);
            as_user(NOBODY.0, NOBODY.1, 0o022, || {
                unit(
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.write_all_at(&pattern(*seed, *len), *off)),
                )
            })
        }
        Op::TruncateAsNobody { path, len } => {
            let path = p(path);
            as_user(NOBODY.0, NOBODY.1, 0o022, || {
                unit(OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(*len)))
            })
        }
    }
}

const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

fn zero_mode(keep_size: bool) -> i32 {
    libc::FALLOC_FL_ZERO_RANGE | if keep_size { libc::FALLOC_FL_KEEP_SIZE } else { 0 }
}

fn fallocate(f: &File, mode: i32, off: u64, len: u64) -> Result<Out, i32> {
    // SAFETY: an open descriptor.
    match unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) } {
        0 => Ok(Out::Unit),
        _ => Err(common::mount::last_errno()),
    }
}

/// Entries of the plain tree (relative paths), to pick operands from.
#[derive(Default)]
struct Scan {
    dirs: Vec<String>,
    files: Vec<String>,
    links: Vec<String>,
    all: Vec<String>,
}

fn scan(root: &Path, rel: &str, out: &mut Scan) {
    let dir = root.join(rel);
    let mut names: Vec<String> =
        fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for name in names {
        let path = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
        let meta = fs::symlink_metadata(root.join(&path)).unwrap();
        out.all.push(path.clone());
        match kind_of(&meta) {
            'd' => {
                out.dirs.push(path.clone());
                scan(root, &path, out);
            }
            'l' => out.links.push(path),
            _ => out.files.push(path),
        }
    }
}

fn depth(path: &str) -> usize {
    if path.is_empty() {
        0
    } else {
        path.split('/').count()
    }
}

struct Gen {
    rng: Rng,
    seed_counter: u64,
    names: Vec<String>,
}

impl Gen {
    fn name(&mut self) -> String {
        self.names[self.rng.below(self.names.len())].clone()
    }

    /// A path that may or may not exist: an existing directory plus one of the names.
    fn new_path(&mut self, s: &Scan) -> String {
        let dir = self.rng.pick(&s.dirs).cloned().unwrap_or_default();
        let name = self.name();
        if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        }
    }

    /// Mostly an existing entry of the wanted kind, sometimes anything.
    fn path_from(&mut self, pool: &[String], s: &Scan) -> String {
        if self.rng.chance(85) {
            if let Some(p) = self.rng.pick(pool) {
                return p.clone();
            }
        }
        self.new_path(s)
    }

    fn offset(&mut self) -> u64 {
        match self.rng.below(10) {
            0 => self.rng.below(3 << 20) as u64,
            1..=3 => (self.rng.below(16) * 4096) as u64 + [0, 1, 4095][self.rng.below(3)],
            _ => self.rng.below(70_000) as u64,
        }
    }

    fn length(&mut self) -> usize {
        match self.rng.below(10) {
            0 => 1,
            1 => 4096,
            2 => 20_000 + self.rng.below(50_000),
            _ => 1 + self.rng.below(12_000),
        }
    }

    fn data_seed(&mut self) -> u64 {
        self.seed_counter += 1;
        self.seed_counter
    }

    fn op(&mut self, s: &Scan, open: &[bool]) -> Op {
        let open_slots: Vec<usize> = (0..SLOTS).filter(|&i| open[i]).collect();
        let free_slots: Vec<usize> = (0..SLOTS).filter(|&i| !open[i]).collect();
        loop {
            let op = match self.rng.below(120) {
                0..=9 => Op::Create {
                    path: self.new_path(s),
                    excl: self.rng.chance(30),
                    trunc: self.rng.chance(30),
                },
                10..=21 => Op::Write {
                    path: self.path_from(&s.files, s),
                    off: self.offset(),
                    len: self.length(),
                    seed: self.data_seed(),
                },
                22..=25 => Op::Append {
                    path: self.path_from(&s.files, s),
                    len: self.length(),
                    seed: self.data_seed(),
                },
                26..=31 => Op::Truncate {
                    path: self.path_from(&s.files, s),
                    len: if self.rng.chance(10) {
                        self.rng.below(3 << 20) as u64
                    } else {
                        self.rng.below(70_000) as u64
                    },
                },
                32..=39 => {
                    Op::Read { path: self.path_from(&s.files, s), off: self.offset(), len: self.length() }
                }
                40..=42 => Op::ReadAll { path: self.path_from(&s.files, s) },
                43..=45 => Op::Stat { path: self.path_from(&s.all, s) },
                46..=47 => Op::Lstat { path: self.path_from(&s.all, s) },
                48..=53 => Op::Rename { from: self.path_from(&s.all, s), to: self.new_path(s) },
                54..=57 => Op::Link { from: self.path_from(&s.files, s), to: self.new_path(s) },
                58..=62 => Op::Unlink { path: self.path_from(&s.all, s) },
                63..=67 => {
                    let path = self.new_path(s);
                    if depth(&path) > MAX_DEPTH {
                        continue;
                    }
                    Op::Mkdir { path }
                }
                68..=70 => Op::Rmdir { path: self.path_from(&s.dirs[1..], s) },
                71..=74 => {
                    let target = if self.rng.chance(70) {
                        self.name()
                    } else {
                        format!("{}/{}", self.name(), self.name())
                    };
                    Op::Symlink { target, path: self.new_path(s) }
                }
                75..=76 => Op::Readlink { path: self.path_from(&s.links, s) },
                77..=80 => match self.rng.pick(&free_slots) {
                    Some(&slot) => {
                        Op::Open { slot, path: self.path_from(&s.files, s), append: self.rng.chance(25) }
                    }
                    None => continue,
                },
                81..=87 => match self.rng.pick(&open_slots) {
                    Some(&slot) => {
                        Op::HWrite { slot, off: self.offset(), len: self.length(), seed: self.data_seed() }
                    }
                    None => continue,
                },
                88..=92 => match self.rng.pick(&open_slots) {
                    Some(&slot) => Op::HRead { slot, off: self.offset(), len: self.length() },
                    None => continue,
                },
                93..=94 => match self.rng.pick(&open_slots) {
                    Some(&slot) => Op::HTruncate { slot, len: self.rng.below(70_000) as u64 },
                    None => continue,
                },
                95..=96 => match self.rng.pick(&open_slots) {
                    Some(&slot) => Op::HStat { slot },
                    None => continue,
                },
                97..=99 => match self.rng.pick(&open_slots) {
                    Some(&slot) => Op::Close { slot },
                    None => continue,
                },
                100..=103 => Op::Punch {
                    path: self.path_from(&s.files, s),
                    off: self.offset(),
                    len: self.length() as u64,
                },
                104..=106 => Op::ZeroRange {
                    path: self.path_from(&s.files, s),
                    off: self.offset(),
                    len: self.length() as u64,
                    keep_size: self.rng.chance(50),
                },
                107..=109 => match self.rng.pick(&open_slots) {
                    Some(&slot) => Op::HPunch { slot, off: self.offset(), len: self.length() as u64 },
                    None => continue,
                },
                110..=111 => match self.rng.pick(&open_slots) {
                    Some(&slot) => Op::HZeroRange {
                        slot,
                        off: self.offset(),
                        len: self.length() as u64,
                        keep_size: self.rng.chance(50),
                    },
                    None => continue,
                },
                112..=114 => {
                    Op::Chmod { path: self.path_from(&s.files, s), mode: MODES[self.rng.below(MODES.len())] }
                }
                115..=117 => Op::WriteAsNobody {
                    path: self.path_from(&s.files, s),
                    off: self.offset(),
                    len: self.length(),
                    seed: self.data_seed(),
                },
                _ => Op::TruncateAsNobody {
                    path: self.path_from(&s.files, s),
                    len: self.rng.below(70_000) as u64,
                },
            };
            return op;
        }
    }
}

fn describe(r: &Result<Out, i32>) -> String {
    match r {
        Ok(Out::Data(d)) => format!("Ok(Data, {} bytes)", d.len()),
        Ok(other) => format!("Ok({other:?})"),
        Err(e) => format!("Err({})", std::io::Error::from_raw_os_error(*e)),
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("first difference at byte {i} (lengths {} and {})", a.len(), b.len()),
        None => format!("lengths differ: {} and {}", a.len(), b.len()),
    }
}

/// Compares the trees under `a` (the mount) and `b` (plain); returns the differences.
fn compare_trees(a: &Path, b: &Path, rel: &str, diffs: &mut Vec<String>) {
    let list = |root: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let (na, nb) = (list(a), list(b));
    if na != nb {
        diffs.push(format!("directory /{rel}: mount has {na:?}, plain has {nb:?}"));
        return;
    }
    for name in na {
        let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let (ma, mb) =
            (fs::symlink_metadata(a.join(&path)).unwrap(), fs::symlink_metadata(b.join(&path)).unwrap());
        let (aa, ab) = (attr(&ma), attr(&mb));
        if aa != ab {
            diffs.push(format!("/{path}: mount {aa:?}, plain {ab:?} (kind, size, nlink, mode)"));
            continue;
        }
        match kind_of(&ma) {
            'd' => compare_trees(a, b, &path, diffs),
            'l' => {
                let (ta, tb) = (fs::read_link(a.join(&path)).unwrap(), fs::read_link(b.join(&path)).unwrap());
                if ta != tb {
                    diffs.push(format!("/{path}: link targets {ta:?} and {tb:?}"));
                }
            }
            _ => {
                let (ca, cb) = (fs::read(a.join(&path)), fs::read(b.join(&path)));
                match (ca, cb) {
                    (Ok(ca), Ok(cb)) if ca != cb => {
                        diffs.push(format!("/{path}: contents differ, {}", first_difference(&ca, &cb)))
                    }
                    (Ok(_), Ok(_)) => {}
                    (ca, cb) => diffs.push(format!("/{path}: read gave {:?} and {:?}", ca.err(), cb.err())),
                }
            }
        }
    }
}

struct Run {
    test: &'static str,
    seed: u64,
    mnt: PathBuf,
    plain: PathBuf,
    history: VecDeque<String>,
}

impl Run {
    fn fail(&self, what: String) -> ! {
        let recent: Vec<&String> = self.history.iter().collect();
        panic!(
            "{what}\nseed {seed} (rerun: KMSFS_TEST_SEED={seed} cargo test --test fs_differential {test})\n\
             last operations:\n  {}",
            recent.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
            seed = self.seed,
            test = self.test
        );
    }

    fn checkpoint(&self, label: &str) {
        let mut diffs = Vec::new();
        compare_trees(&self.mnt, &self.plain, "", &mut diffs);
        if !diffs.is_empty() {
            self.fail(format!("trees differ at {label}:\n  {}", diffs.join("\n  ")));
        }
    }
}

fn seed_from_env() -> u64 {
    match std::env::var("KMSFS_TEST_SEED") {
        Ok(s) => s.trim().parse().expect("KMSFS_TEST_SEED must be an unsigned integer"),
        Err(_) => {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
        }
    }
}

#[test]
fn random_operations_match_a_plain_directory() {
    differential(
        "random_operations_match_a_plain_directory",
        NAMES.iter().map(|n| n.to_string()).collect(),
        3000,
    );
}

/// The same with names of up to 255 bytes (stored as hashes with sidecars) and multi-byte
/// characters; a seed of its own unless KMSFS_TEST_SEED is set.
#[test]
fn random_operations_on_long_and_unicode_names_match_a_plain_directory() {
    differential("random_operations_on_long_and_unicode_names_match_a_plain_directory", edge_names(), 1500);
}

/// Applies a seeded stream of `ops` random operations (KMSFS_TEST_OPS overrides the number)
/// on entries named from `names` to a mount and a plain directory, and compares them.
fn differential(test: &'static str, names: Vec<String>, default_ops: usize) {
    let seed = seed_from_env();
    let ops: usize = std::env::var("KMSFS_TEST_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_ops);
    eprintln!("{test}: seed {seed} ({ops} operations; rerun with KMSFS_TEST_SEED={seed})");
    // Shared, so that nobody's writes reach it; both roots traversable by nobody.
    let mut m = Mounted::with_options(&["allow_other"]);
    share_with_everyone(&m);
    let plain_dir = tempfile::tempdir().unwrap();
    for root in [m.mnt(), plain_dir.path()] {
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut run = Run {
        test,
        seed,
        mnt: m.mnt().to_path_buf(),
        plain: plain_dir.path().to_path_buf(),
        history: VecDeque::new(),
    };
    let mut gen = Gen { rng: Rng::new(seed), seed_counter: seed % 1_000_000, names };
    let mut hm: Vec<Option<File>> = (0..SLOTS).map(|_| None).collect();
    let mut hp: Vec<Option<File>> = (0..SLOTS).map(|_| None).collect();
    let mut errors = 0;
    for i in 0..ops {
        let mut s = Scan { dirs: vec![String::new()], ..Scan::default() };
        scan(&run.plain, "", &mut s);
        let open: Vec<bool> = hp.iter().map(Option::is_some).collect();
        let op = gen.op(&s, &open);
        let rp = apply(&run.plain, &mut hp, &op);
        let rm = apply(&run.mnt, &mut hm, &op);
        run.history.push_back(format!("#{i} {op:?} -> {}", describe(&rp)));
        if run.history.len() > 25 {
            run.history.pop_front();
        }
        if rm != rp {
            let detail = match (&rm, &rp) {
                (Ok(Out::Data(a)), Ok(Out::Data(b))) => first_difference(a, b),
                _ => String::new(),
            };
            run.fail(format!(
                "operation #{i} {op:?}: mount gave {}, plain gave {} {detail}",
                describe(&rm),
                describe(&rp)
            ));
        }
        if hm.iter().map(Option::is_some).ne(hp.iter().map(Option::is_some)) {
            run.fail(format!("operation #{i} {op:?}: open handles diverged"));
        }
        errors += rp.is_err() as usize;
        if (i + 1) % 500 == 0 {
            run.checkpoint(&format!("operation {}", i + 1));
        }
    }
    let mut s = Scan::default();
    scan(&run.plain, "", &mut s);
    eprintln!(
        "{ops} operations, {errors} of them refused identically on both sides; final tree: {} files, {} \
         directories, {} symlinks",
        s.files.len(),
        s.dirs.len(),
        s.links.len()
    );
    assert!(errors < ops / 2, "the generator should mostly produce operations that succeed");
    hm.clear();
    hp.clear();
    run.checkpoint("the end");
    m.remount();
    run.mnt = m.mnt().to_path_buf();
    run.checkpoint("the end, after a remount");
}

//! Crash consistency: `kill -9` of the mount daemon in the middle of writes, renames, mkdir
//! storms and truncates, then a new mount.
//!
//! A killed process (unlike a power cut) loses nothing it handed to the backing file system,
//! and kmsfs writes through (no write-back cache), so the promise checked here is: every file
//! whose last change was acknowledged (fsynced, or only closed) reads back exactly; the one
//! operation in flight leaves its file in the state before or after it (for an interrupted
//! rewrite: a prefix of the new version; for an overwrite: the new bytes up to a page
//! boundary, since the kernel sends a write(2) to the daemon in pieces that end at page
//! boundaries where the page is not cached), or the file answers EIO; never other bytes. Every
//! directory lists, and `kmsfs fsck` (after unmounting) reports exactly the files that
//! answered EIO, apart from leftovers it can remove (temporary files, orphan sidecars).
//!
//! The workloads run in worker processes (this test binary again, entry point
//! `worker_process`), which log each operation before it starts and after it returns; the
//! test reads the log after the kill to know what was acknowledged.
//!
//! A second test cuts backing files short at random offsets (seeded): each reads as EIO and
//! fsck reports each one. `KMSFS_CRASH_SEED` picks other seeds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::mount::{pattern, wait_until, Mounted};
use serde_json::Value;

const WORKER_ENV: &str = "KMSFS_CRASH_WORKER";

/// A small deterministic generator (splitmix64): seeds make failures reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
}

fn base_seed() -> u64 {
    std::env::var("KMSFS_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_261_123)
}

// ---------------------------------------------------------------------------------------
// The worker processes.

/// Not a test of its own: the entry point of the worker processes the tests start (this
/// binary run again with `KMSFS_CRASH_WORKER` set). Without that variable it returns at once.
#[test]
fn worker_process() {
    let Ok(kind) = std::env::var(WORKER_ENV) else { return };
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"));
    let mut w = Worker {
        log: OpenOptions::new().create(true).append(true).open(var("KMSFS_CRASH_LOG")).unwrap(),
        dir: PathBuf::from(var("KMSFS_CRASH_DIR")),
        rng: Rng(var("KMSFS_CRASH_SEED").parse().unwrap()),
        arg: var("KMSFS_CRASH_ARG"),
    };
    // Stops at the first error (the daemon's death), or after 30 s if nobody kills it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let result = match kind.as_str() {
        "write" => w.writes(deadline),
        "rename" => w.renames(deadline),
        "mkdir" => w.mkdirs(deadline),
        "truncate" => w.truncates(deadline),
        other => panic!("unknown worker {other}"),
    };
    if let Err(e) = result {
        w.line(&format!("error {} {}", now_ms(), e.raw_os_error().unwrap_or(0)));
    }
    std::process::exit(0);
}

struct Worker {
    log: fs::File,
    dir: PathBuf,
    rng: Rng,
    arg: String,
}

/// Lengths of the versions the writers write: empty, around block boundaries, several blocks.
const LENGTHS: [usize; 9] = [0, 1, 100, 4095, 4096, 4097, 12_000, 40_000, 150_000];

/// Version `v` of file `i` of the write workload.
fn version(i: u64, v: u64) -> Vec<u8> {
    let mut r = Rng(i * 1_000_003 + v);
    pattern(i * 1_000_003 + v, LENGTHS[r.below(LENGTHS.len() as u64) as usize])
}

/// Truncate sizes: zero, block boundaries and either side of them, several blocks.
const SIZES: [u64; 11] = [0, 1, 100, 4095, 4096, 4097, 8192, 8193, 12_788, 20_000, 40_000];

impl Worker {
    /// One log line, in one write (O_APPEND): the test reads what was written before the kill.
    fn line(&mut self, text: &str) {
        self.log.write_all(format!("{text}\n").as_bytes()).unwrap();
    }

    /// Rewrites files `w/f{base}..w/f{base+19}` with numbered versions, in chunks of assorted
    /// sizes, fsyncing about half of them.
    fn writes(&mut self, deadline: Instant) -> io::Result<()> {
        let base: u64 = self.arg.parse().unwrap();
        let mut v = 0;
        while Instant::now() < deadline {
            let i = base + self.rng.below(20);
            v += 1;
            let data = version(i, v);
            self.line(&format!("begin {i} {v}"));
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(self.dir.join(format!("f{i}")))?;
            let mut at = 0;
            while at < data.len() {
                let chunk = *self.rng.pick(&[1000usize, 4096, 5000, 65_536, 1 << 20]);
                let end = data.len().min(at + chunk);
                f.write_all(&data[at..end])?;
                at = end;
            }
            if self.rng.below(2) == 0 {
                f.sync_all()?;
                self.line(&format!("synced {i} {v}"));
            }
            drop(f);
            self.line(&format!("closed {i} {v}"));
        }
        Ok(())
    }

    /// Moves the entries of `a/` and `b/` back and forth between the two directories.
    fn renames(&mut self, deadline: Instant) -> io::Result<()> {
        let (a, b) = (self.dir.join("a"), self.dir.join("b"));
        let mut names: Vec<(String, bool)> = fs::read_dir(&a)?
            .map(|e| e.map(|e| (e.file_name().into_string().unwrap(), false)))
            .collect::<io::Result<_>>()?;
        names.sort();
        while Instant::now() < deadline {
            let k = self.rng.below(names.len() as u64) as usize;
            let (name, in_b) = names[k].clone();
            let (from, to) = if in_b { (&b, &a) } else { (&a, &b) };
            let side = if in_b { "a" } else { "b" };
            self.line(&format!("begin {name} {side}"));
            fs::rename(from.join(&name), to.join(&name))?;
            self.line(&format!("done {name} {side}"));
            names[k].1 = !in_b;
        }
        Ok(())
    }

    /// Creates directories under random earlier ones (names prefixed by the worker's
    /// argument), and now and then a small file in one.
    fn mkdirs(&mut self, deadline: Instant) -> io::Result<()> {
        let prefix = self.arg.clone();
        let mut dirs = vec![String::from("s")];
        let mut n = 0;
        while Instant::now() < deadline {
            n += 1;
            let parent = self.rng.pick(&dirs).clone();
            if n % 3 == 0 {
                let rel = format!("{parent}/{prefix}f{n}");
                self.line(&format!("begin-file {rel}"));
                fs::write(self.dir.join(&rel), rel.as_bytes().repeat(20))?;
                self.line(&format!("file {rel}"));
            } else {
                let rel = format!("{parent}/{prefix}d{n}");
                self.line(&format!("begin-dir {rel}"));
                fs::create_dir(self.dir.join(&rel))?;
                self.line(&format!("dir {rel}"));
                dirs.push(rel);
            }
        }
        Ok(())
    }

    /// Truncates files `t/t0..t/t15` to assorted sizes (shrinking and growing) and writes
    /// small chunks at random offsets between.
    fn truncates(&mut self, deadline: Instant) -> io::Result<()> {
        while Instant::now() < deadline {
            let i = self.rng.below(16);
            let f = OpenOptions::new().write(true).open(self.dir.join(format!("t{i}")))?;
            if self.rng.below(3) == 0 {
                let (off, len, seed) =
                    (self.rng.below(40_000), 1 + self.rng.below(6000), self.rng.next() >> 16);
                self.line(&format!("begin write {i} {off} {len} {seed}"));
                f.write_all_at(&pattern(seed, len as usize), off)?;
            } else {
                let size = *self.rng.pick(&SIZES);
                self.line(&format!("begin truncate {i} {size}"));
                f.set_len(size)?;
            }
            self.line("done");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The test side.

/// Starts a worker of `kind` on directory `dir` (on the mount), logging to `log`.
fn start_worker(kind: &str, dir: &Path, log: &Path, seed: u64, arg: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["worker_process", "--exact", "--nocapture", "--test-threads=1"])
        .env(WORKER_ENV, kind)
        .env("KMSFS_CRASH_DIR", dir)
        .env("KMSFS_CRASH_LOG", log)
        .env("KMSFS_CRASH_SEED", seed.to_string())
        .env("KMSFS_CRASH_ARG", arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start worker")
}

/// Each log line split into words.
fn log_lines(log: &Path) -> Vec<Vec<String>> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect()
}

/// How many operations the workers have completed so far.
fn completed(logs: &[PathBuf]) -> usize {
    logs.iter()
        .map(|l| log_lines(l).iter().filter(|w| !w[0].starts_with("begin") && w[0] != "error").count())
        .sum()
}

/// Lets the workers get going (at least `min_ops` completed operations), waits a seeded
/// while longer, kills the daemon, waits for the workers to notice, and mounts again.
/// Checks that no worker failed before the kill.
fn crash_during(m: &mut Mounted, mut workers: Vec<Child>, logs: &[PathBuf], min_ops: usize, rng: &mut Rng) {
    let going = wait_until(Duration::from_secs(20), || completed(logs) >= min_ops);
    assert!(going, "the workers did not get going: {} operations\n{}", completed(logs), m.log_text());
    std::thread::sleep(Duration::from_millis(rng.below(150)));
    let killed_at = now_ms();
    m.kill_daemon();
    for w in &mut workers {
        let exited = wait_until(Duration::from_secs(10), || w.try_wait().unwrap().is_some());
        if !exited {
            // Our own child, by pid.
            let _ = w.kill();
            let _ = w.wait();
            panic!("a worker was still running 10 s after the daemon died");
        }
    }
    for log in logs {
        for words in log_lines(log).iter().filter(|w| w[0] == "error") {
            let at: u128 = words[1].parse().unwrap();
            assert!(
                at >= killed_at,
                "a worker failed before the kill (errno {}): {}",
                words[2],
                log.display()
            );
        }
    }
    m.restart_after_crash();
}

/// Reads a whole file on the mount: its bytes, or the errno.
fn read(path: &Path) -> Result<Vec<u8>, i32> {
    fs::read(path).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Lists every directory under `dir` on the mount (all must list) and returns the paths of
/// all entries, relative to the mount.
fn list_all(m: &Mounted, dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        let path = entry.path();
        out.push(path.strip_prefix(m.mnt()).unwrap().to_path_buf());
        if entry.file_type().unwrap().is_dir() {
            list_all(m, &path, out);
        }
    }
}

/// Unmounts, runs `kmsfs fsck --json`, and checks that the problems it reports are exactly
/// `eio` (plaintext paths such as "/w/f3"), apart from leftovers of interrupted operations,
/// which `--repair` then removes: temporary files, orphan sidecars, and a missing second
/// metadata copy of a directory whose mkdir was in flight (`in_flight_dirs`, relative paths).
fn fsck_reports_exactly(m: &mut Mounted, eio: &BTreeSet<String>, in_flight: &BTreeSet<String>, what: &str) {
    let status = m.unmount();
    assert!(status.success(), "{what}: the new daemon exited with {status}");
    let cipher = m.cipher().to_str().unwrap().to_string();
    let run = |extra: &[&str]| -> (i32, Value) {
        let mut args = vec!["--json", "fsck", cipher.as_str()];
        args.extend_from_slice(extra);
        let out = m.kmsfs(&args);
        let report = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{what}: fsck output: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code().unwrap(), report)
    };
    let leftover = |s: &str| s == "temp-file" || s == "orphan-sidecar";
    let (code, report) = run(&[]);
    let mut damaged = BTreeSet::new();
    for item in report["Items"].as_array().unwrap() {
        let status = item["Status"].as_str().unwrap();
        if status == "ok" || leftover(status) {
            continue;
        }
        // A mkdir killed between writing its two metadata copies: the first one serves. A
        // create killed before its header was written: an empty file fsck gives a header.
        let path = item["Path"].as_str().unwrap();
        let interrupted = ["metadata-copy-damaged", "missing-header"].contains(&status);
        if interrupted && in_flight.contains(path.trim_start_matches('/')) {
            continue;
        }
        assert!(
            ["tampered", "header-damaged"].contains(&status),
            "{what}: unexpected fsck status {status} for {item}\n{report:#}"
        );
        damaged.insert(item["Path"].as_str().unwrap().to_string());
    }
    assert_eq!(&damaged, eio, "{what}: fsck must report exactly the files that answered EIO\n{report:#}");
    let any_problem = report["ProblemsRemaining"].as_u64().unwrap() > 0;
    assert_eq!(code, if any_problem { 8 } else { 0 }, "{what}: fsck exit code");
    let (code, report) = run(&["--repair"]);
    assert_eq!(report["ProblemsRemaining"].as_u64().unwrap(), eio.len() as u64, "{what}: {report:#}");
    assert_eq!(code, if eio.is_empty() { 0 } else { 8 }, "{what}: fsck --repair exit code");
}

/// What the test found for one file.
fn note_eio(eio: &mut BTreeSet<String>, rel: &str, got: &Result<Vec<u8>, i32>) {
    if got == &Err(libc::EIO) {
        eio.insert(format!("/{rel}"));
    }
}

#[test]
fn kill_9_during_writes_keeps_every_acknowledged_version() {
    for round in 0..2u64 {
        let seed = base_seed() + round;
        let mut rng = Rng(seed);
        let mut m = Mounted::new();
        fs::create_dir(m.path("w")).unwrap();
        let logs: Vec<PathBuf> = (0..2).map(|k| m.env.path(&format!("writer{k}.log"))).collect();
        let workers = (0..2u64)
            .map(|k| {
                start_worker("write", &m.path("w"), &logs[k as usize], seed * 10 + k, &(k * 20).to_string())
            })
            .collect();
        crash_during(&mut m, workers, &logs, 30 + rng.below(60) as usize, &mut rng);

        let (mut eio, mut synced_checked, mut closed_checked) = (BTreeSet::new(), 0, 0);
        // Files whose first create was in flight and that read back empty.
        let mut created_empty = BTreeSet::new();
        for log in &logs {
            // Per file: the last version begun, the last version closed (acknowledged in
            // full) before it, and whether that one was fsynced.
            let mut files: BTreeMap<u64, (u64, Option<u64>, bool)> = BTreeMap::new();
            for w in log_lines(log) {
                let num = |k: usize| w[k].parse::<u64>().unwrap();
                match w[0].as_str() {
                    "begin" => {
                        let e = files.entry(num(1)).or_insert((0, None, false));
                        e.0 = num(2);
                    }
                    "synced" => files.get_mut(&num(1)).unwrap().2 = true,
                    "closed" => {
                        let e = files.get_mut(&num(1)).unwrap();
                        e.1 = Some(num(2));
                    }
                    _ => {}
                }
            }
            for (&i, &(begun, closed, synced)) in &files {
                let rel = format!("w/f{i}");
                let got = read(&m.path(&rel));
                let what = format!("seed {seed}: {rel} (begun v{begun}, closed {closed:?}, synced {synced})");
                if closed == Some(begun) {
                    // Acknowledged: exact, fsynced or not (a killed process loses nothing).
                    assert!(got == Ok(version(i, begun)), "{what}: {:?}", got.as_ref().map(Vec::len));
                    if synced {
                        synced_checked += 1;
                    } else {
                        closed_checked += 1;
                    }
                    continue;
                }
                // In flight: the version before, or a prefix of the new one, or EIO.
                let new = version(i, begun);
                let ok = match &got {
                    Ok(bytes) => {
                        closed.is_some_and(|c| *bytes == version(i, c))
                            || (bytes.len() <= new.len() && bytes[..] == new[..bytes.len()])
                    }
                    Err(e) => *e == libc::EIO || (*e == libc::ENOENT && closed.is_none()),
                };
                assert!(ok, "{what}: neither old nor new: {:?}", got.as_ref().map(Vec::len));
                if closed.is_none() && got == Ok(Vec::new()) {
                    created_empty.insert(rel.clone());
                }
                note_eio(&mut eio, &rel, &got);
            }
        }
        assert!(synced_checked > 0, "seed {seed}: no fsynced file was checked");
        let mut all = Vec::new();
        list_all(&m, m.mnt(), &mut all);
        eprintln!(
            "seed {seed}: {synced_checked} fsynced and {closed_checked} closed files exact, EIO: {eio:?}"
        );
        fsck_reports_exactly(&mut m, &eio, &created_empty, &format!("writes, seed {seed}"));
    }
}

#[test]
fn kill_9_during_renames_loses_and_duplicates_nothing() {
    for round in 0..2u64 {
        let seed = base_seed() + 100 + round;
        let mut rng = Rng(seed);
        let mut m = Mounted::new();
        fs::create_dir_all(m.path("r/a")).unwrap();
        fs::create_dir(m.path("r/b")).unwrap();
        // Short names, long names (stored with sidecars) and directories with a file in each.
        let mut names: Vec<String> = (0..24).map(|j| format!("n{j}")).collect();
        names.extend((0..4).map(|j| format!("L{j}{}", "x".repeat(190))));
        let content = |name: &str| format!("content of {name}\n").repeat(name.len() % 7 + 1).into_bytes();
        for name in &names {
            fs::write(m.path(&format!("r/a/{name}")), content(name)).unwrap();
        }
        let dirs: Vec<String> = (0..4).map(|j| format!("d{j}")).collect();
        for d in &dirs {
            fs::create_dir(m.path(&format!("r/a/{d}"))).unwrap();
            fs::write(m.path(&format!("r/a/{d}/inner")), content(d)).unwrap();
        }
        let log = m.env.path("renamer.log");
        let worker = start_worker("rename", &m.path("r"), &log, seed, "");
        crash_during(
            &mut m,
            vec![worker],
            std::slice::from_ref(&log),
            40 + rng.below(100) as usize,
            &mut rng,
        );

        // Where each entry may be: the side of its last completed rename, and for the one in
        // flight also the side it was going to.
        let mut allowed: BTreeMap<String, BTreeSet<String>> =
            names.iter().chain(&dirs).map(|n| (n.clone(), BTreeSet::from(["a".to_string()]))).collect();
        let mut in_flight = None;
        for w in log_lines(&log) {
            match w[0].as_str() {
                "begin" => in_flight = Some((w[1].clone(), w[2].clone())),
                "done" => {
                    allowed.insert(w[1].clone(), BTreeSet::from([w[2].clone()]));
                    in_flight = None;
                }
                _ => {}
            }
        }
        if let Some((name, side)) = &in_flight {
            allowed.get_mut(name).unwrap().insert(side.clone());
        }
        let eio = BTreeSet::new();
        for (name, sides) in &allowed {
            let found: Vec<&str> =
                ["a", "b"].into_iter().filter(|s| m.path(&format!("r/{s}/{name}")).exists()).collect();
            let what = format!("seed {seed}: {name} (allowed {sides:?}, in flight {in_flight:?})");
            assert_eq!(found.len(), 1, "{what}: found in {found:?}");
            assert!(sides.contains(found[0]), "{what}: found in {}", found[0]);
            let at = format!("r/{}/{name}", found[0]);
            let file = if dirs.contains(name) { format!("{at}/inner") } else { at };
            assert_eq!(read(&m.path(&file)), Ok(content(name)), "{what}");
        }
        let mut all = Vec::new();
        list_all(&m, m.mnt(), &mut all);
        // Nothing else appeared: r, r/a, r/b, the entries and the directories' inner files.
        assert_eq!(all.len(), 3 + allowed.len() + dirs.len(), "seed {seed}: {all:?}");
        fsck_reports_exactly(&mut m, &eio, &BTreeSet::new(), &format!("renames, seed {seed}"));
    }
}

#[test]
fn kill_9_during_a_mkdir_storm_leaves_every_directory_listable() {
    for round in 0..2u64 {
        let seed = base_seed() + 200 + round;
        let mut rng = Rng(seed);
        let mut m = Mounted::new();
        fs::create_dir(m.path("s")).unwrap();
        let logs: Vec<PathBuf> = (0..2).map(|k| m.env.path(&format!("mkdir{k}.log"))).collect();
        let workers = ["p", "q"]
            .iter()
            .enumerate()
            .map(|(k, prefix)| start_worker("mkdir", m.mnt(), &logs[k], seed * 10 + k as u64, prefix))
            .collect();
        crash_during(&mut m, workers, &logs, 60 + rng.below(150) as usize, &mut rng);

        let (mut dirs, mut files, mut in_flight) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for log in &logs {
            let mut begun = None;
            for w in log_lines(log) {
                match w[0].as_str() {
                    "begin-dir" | "begin-file" => begun = Some(w[1].clone()),
                    "dir" => {
                        dirs.insert(w[1].clone());
                        begun = None;
                    }
                    "file" => {
                        files.insert(w[1].clone());
                        begun = None;
                    }
                    _ => {}
                }
            }
            in_flight.extend(begun);
        }
        let mut all = Vec::new();
        list_all(&m, m.mnt(), &mut all);
        let found: BTreeSet<String> = all.iter().map(|p| p.to_str().unwrap().to_string()).collect();
        for d in &dirs {
            assert!(m.path(d).is_dir(), "seed {seed}: directory {d} was acknowledged but is gone");
        }
        let mut eio = BTreeSet::new();
        for f in &files {
            assert_eq!(read(&m.path(f)), Ok(f.as_bytes().repeat(20)), "seed {seed}: {f}");
        }
        for extra in found.iter().filter(|p| *p != "s" && !dirs.contains(*p) && !files.contains(*p)) {
            assert!(in_flight.contains(extra), "seed {seed}: {extra} appeared without being created");
            if m.path(extra).is_file() {
                let got = read(&m.path(extra));
                let want = extra.as_bytes().repeat(20);
                assert!(
                    got == Ok(want) || got == Ok(Vec::new()) || got == Err(libc::EIO),
                    "seed {seed}: {extra} in flight: {got:?}"
                );
                note_eio(&mut eio, extra, &got);
            }
        }
        eprintln!("seed {seed}: {} directories, {} files, in flight {in_flight:?}", dirs.len(), files.len());
        fsck_reports_exactly(&mut m, &eio, &in_flight, &format!("mkdir storm, seed {seed}"));
    }
}

#[test]
fn kill_9_during_truncates_leaves_the_state_before_or_after() {
    for round in 0..2u64 {
        let seed = base_seed() + 300 + round;
        let mut rng = Rng(seed);
        let mut m = Mounted::new();
        fs::create_dir(m.path("t")).unwrap();
        let initial = |i: u64| pattern(i + 7, 3 * 4096 + 500);
        for i in 0..16 {
            fs::write(m.path(&format!("t/t{i}")), initial(i)).unwrap();
        }
        let log = m.env.path("truncator.log");
        let worker = start_worker("truncate", &m.path("t"), &log, seed, "");
        crash_during(
            &mut m,
            vec![worker],
            std::slice::from_ref(&log),
            40 + rng.below(150) as usize,
            &mut rng,
        );

        // Replays the log on a model: the state after every completed operation, and the
        // operation in flight.
        let mut model: Vec<Vec<u8>> = (0..16).map(initial).collect();
        // The file of the operation in flight, and the states it may have left.
        let mut pending: Option<(usize, Vec<Vec<u8>>)> = None;
        for w in log_lines(&log) {
            let num = |k: usize| w[k].parse::<u64>().unwrap();
            match w[0].as_str() {
                "begin" => {
                    let i = num(2) as usize;
                    let mut states = Vec::new();
                    if w[1] == "truncate" {
                        let mut after = model[i].clone();
                        after.resize(num(3) as usize, 0);
                        states.push(after);
                    } else {
                        // The kernel may send the write in pieces that end at page
                        // boundaries: any such prefix of it may have landed.
                        let (off, len) = (num(3) as usize, num(4) as usize);
                        let data = pattern(num(5), len);
                        let cuts = (off + 1..off + len).filter(|c| c % 4096 == 0).chain([off + len]);
                        for end in cuts {
                            let mut state = model[i].clone();
                            if state.len() < end {
                                state.resize(end, 0);
                            }
                            state[off..end].copy_from_slice(&data[..end - off]);
                            states.push(state);
                        }
                    }
                    pending = Some((i, states));
                }
                "done" => {
                    let (i, mut states) = pending.take().unwrap();
                    model[i] = states.pop().unwrap();
                }
                _ => {}
            }
        }
        let mut eio = BTreeSet::new();
        for (i, want) in model.iter().enumerate() {
            let rel = format!("t/t{i}");
            let got = read(&m.path(&rel));
            match &pending {
                Some((p, states)) if *p == i => {
                    assert!(
                        got.as_ref() == Ok(want)
                            || states.iter().any(|s| got.as_ref() == Ok(s))
                            || got == Err(libc::EIO),
                        "seed {seed}: {rel} in flight: neither before ({} bytes) nor after: {:?}",
                        want.len(),
                        got.as_ref().map(Vec::len)
                    );
                    note_eio(&mut eio, &rel, &got);
                }
                _ => {
                    assert!(got.as_ref() == Ok(want), "seed {seed}: {rel}: {:?} bytes", got.map(|g| g.len()))
                }
            }
        }
        eprintln!("seed {seed}: {} operations replayed, EIO: {eio:?}", log_lines(&log).len() / 2);
        fsck_reports_exactly(&mut m, &eio, &BTreeSet::new(), &format!("truncates, seed {seed}"));
    }
}

#[test]
fn backing_files_cut_short_read_as_eio_and_fsck_reports_each() {
    for round in 0..3u64 {
        let seed = base_seed() + 400 + round;
        let mut rng = Rng(seed);
        let mut m = Mounted::new();
        fs::create_dir(m.path("c")).unwrap();
        let sizes = [0usize, 1, 100, 4095, 4096, 4097, 8192, 10_000, 50_000, 123_456];
        let data: Vec<Vec<u8>> =
            sizes.iter().enumerate().map(|(k, &n)| pattern(seed * 100 + k as u64, n)).collect();
        for (k, d) in data.iter().enumerate() {
            fs::write(m.path(&format!("c/f{k}")), d).unwrap();
        }
        let backing: Vec<PathBuf> =
            (0..sizes.len()).map(|k| m.backing_of(&m.path(&format!("c/f{k}")))).collect();
        m.unmount();
        // Cut about two thirds of the files, each at a random offset short of its end (not
        // to 0 bytes: an empty backing file is an interrupted create, see FORMAT.md).
        let mut cut = BTreeMap::new();
        for (k, path) in backing.iter().enumerate() {
            if rng.below(3) == 0 {
                continue;
            }
            let len = fs::metadata(path).unwrap().len();
            // Files 0 and 1 (0 and 1 bytes) are cut where they look empty (their length
            // short of the empty block's 316 bytes, past the header), which the kernel never
            // asks the daemon to read: the open must catch it.
            let at = if k < 2 { 289 + rng.below(27) } else { 1 + rng.below(len - 1) };
            OpenOptions::new().write(true).open(path).unwrap().set_len(at).unwrap();
            cut.insert(k, at);
        }
        m.start();
        let mut eio = BTreeSet::new();
        for (k, want) in data.iter().enumerate() {
            let rel = format!("c/f{k}");
            let got = read(&m.path(&rel));
            match cut.get(&k) {
                Some(at) => {
                    assert_eq!(got, Err(libc::EIO), "seed {seed}: {rel} cut at {at} of {}", sizes[k]);
                    note_eio(&mut eio, &rel, &got);
                }
                None => assert!(got.as_ref() == Ok(want), "seed {seed}: {rel} (not cut)"),
            }
        }
        let mut all = Vec::new();
        list_all(&m, m.mnt(), &mut all);
        m.unmount();
        let out = m.kmsfs(&["--json", "fsck", m.cipher().to_str().unwrap()]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(if cut.is_empty() { 0 } else { 8 }), "{report:#}");
        for item in report["Items"].as_array().unwrap() {
            let path = item["Path"].as_str().unwrap();
            let status = item["Status"].as_str().unwrap();
            let k: Option<usize> = path.strip_prefix("/c/f").and_then(|k| k.parse().ok());
            let want = match k.and_then(|k| cut.get(&k)) {
                // Cut inside the header: it cannot be read; after it: a block does not
                // authenticate, or the length is not a whole number of blocks.
                Some(&at) if at < 288 => "header-damaged",
                Some(_) => "tampered",
                None => "ok",
            };
            assert_eq!(
                status,
                want,
                "seed {seed}: {path} (cut at {:?})\n{report:#}",
                k.and_then(|k| cut.get(&k))
            );
        }
        assert_eq!(report["ProblemsRemaining"].as_u64(), Some(eio.len() as u64), "seed {seed}");
        eprintln!("seed {seed}: cut {cut:?}");
    }
}

//! Where a mounted volume must behave exactly like ext4 for users other than the one who
//! mounted it: modes of new objects (the caller's mode and umask, never the daemon's),
//! writes to set-ID files by non-owners, symlink targets up to PATH_MAX - 1 bytes, and
//! hole punching. Each test runs the same system calls on the mount and on a directory of
//! the machine's own ext4 and compares, as root and as nobody (`common::users`), on a mount
//! with `-o allow_other` whose key's policy lets everyone through (so Unix permissions
//! alone decide).

mod common;

use std::ffi::CString;
use std::fs::{self, File};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::mount::{last_errno, pattern, Mounted};
use common::users::{as_root, as_user, share_with_everyone, NOBODY};

/// A mount any user can reach, its daemon started under `daemon_umask`.
fn shared_mount(daemon_umask: u32) -> Mounted {
    let m = Mounted::with_daemon_umask(&["allow_other"], daemon_umask);
    share_with_everyone(&m);
    fs::set_permissions(m.mnt(), fs::Permissions::from_mode(0o777)).unwrap();
    m
}

/// A directory on the machine's own file system (ext4 here) that anyone may write.
fn plain_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// `rc` as a result: the errno when negative.
fn ok_or_errno(rc: libc::c_int) -> Result<libc::c_int, i32> {
    if rc < 0 {
        Err(last_errno())
    } else {
        Ok(rc)
    }
}

/// `kmsfs fsck` of the (unmounted) volume finds nothing.
fn fsck_clean(m: &Mounted) {
    let report = m.json(&["fsck", m.cipher().to_str().unwrap()]);
    assert_eq!(report["ProblemsRemaining"], 0, "fsck: {report:#}");
}

fn lstat_mode(path: &Path) -> Result<u32, i32> {
    fs::symlink_metadata(path).map(|m| m.mode()).map_err(|e| e.raw_os_error().unwrap())
}

/// One way of making a new object.
#[derive(Debug, Clone, Copy)]
enum Make {
    /// open(O_CREAT | O_EXCL | O_WRONLY, mode)
    Open(u32),
    Mkdir(u32),
    /// mknod(S_IFREG | mode)
    MknodReg(u32),
    Mkfifo(u32),
    Symlink,
}

/// Makes `path` as the calling thread; returns the new object's type and mode (lstat).
fn make(path: &Path, how: Make) -> Result<u32, i32> {
    let p = c(path);
    // SAFETY: NUL-terminated paths; the descriptor is closed at once.
    unsafe {
        match how {
            Make::Open(mode) => {
                let fd = ok_or_errno(libc::open(
                    p.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                    mode,
                ))?;
                libc::close(fd);
            }
            Make::Mkdir(mode) => {
                ok_or_errno(libc::mkdir(p.as_ptr(), mode))?;
            }
            Make::MknodReg(mode) => {
                ok_or_errno(libc::mknod(p.as_ptr(), libc::S_IFREG | mode, 0))?;
            }
            Make::Mkfifo(mode) => {
                ok_or_errno(libc::mkfifo(p.as_ptr(), mode))?;
            }
            Make::Symlink => {
                let target = CString::new("some/target").unwrap();
                ok_or_errno(libc::symlink(target.as_ptr(), p.as_ptr()))?;
            }
        }
    }
    lstat_mode(path)
}

const MAKES: [Make; 16] = [
    Make::Open(0o666),
    Make::Open(0o620),
    Make::Open(0o777),
    Make::Open(0o4755),
    Make::Open(0o2775),
    Make::Open(0o6777),
    Make::Mkdir(0o777),
    Make::Mkdir(0o1777),
    Make::Mkdir(0o2775),
    Make::Mkdir(0o750),
    Make::MknodReg(0o666),
    Make::MknodReg(0o4777),
    Make::Mkfifo(0o666),
    Make::Mkfifo(0o642),
    Make::Symlink,
    Make::Open(0o000),
];

/// Every way of making an object, under `root`, as `uid`/`gid` with `umask`, with short
/// names, 255-byte names, and at the end of a plaintext path of about 4095 bytes; returns
/// (what, mode or errno) for each.
fn make_all(root: &Path, uid: u32, gid: u32, umask: u32) -> Vec<(String, Result<u32, i32>)> {
    as_user(uid, gid, umask, || {
        let mut out = Vec::new();
        for (i, how) in MAKES.iter().enumerate() {
            let short = root.join(format!("u{uid}-m{umask:o}-{i}"));
            out.push((format!("{how:?} short"), make(&short, *how)));
            let mut long = format!("u{uid}-m{umask:o}-{i}-");
            long.extend(std::iter::repeat_n('n', 255 - long.len()));
            out.push((format!("{how:?} 255-byte name"), make(&root.join(long), *how)));
        }
        // 15 directories of 250-byte names, then an object of a 200-byte name: a path of
        // 3,965 bytes below the root (the backing path is longer still). Made relative to
        // the thread's own working directory, as `mkdir -p` does in a deep tree.
        let top = root.join(format!("deep-u{uid}-m{umask:o}"));
        out.push(("deep top".into(), make(&top, Make::Mkdir(0o777))));
        std::env::set_current_dir(&top).unwrap();
        let level = "d".repeat(250);
        for depth in 0..15 {
            out.push((format!("deep level {depth}"), make(Path::new(&level), Make::Mkdir(0o777))));
            std::env::set_current_dir(&level).unwrap();
        }
        for (i, how) in MAKES.iter().enumerate() {
            let name = format!("{i:02}{}", "f".repeat(198));
            out.push((format!("{how:?} at the end of a deep path"), make(Path::new(&name), *how)));
        }
        out
    })
}

#[test]
fn new_objects_get_the_callers_mode_minus_the_callers_umask_whatever_the_daemons_umask() {
    for daemon_umask in [0o077, 0o022] {
        let m = shared_mount(daemon_umask);
        let plain = plain_dir();
        for (uid, gid) in [NOBODY, (0, 0)] {
            for umask in [0, 0o022, 0o027] {
                let on_mount = make_all(m.mnt(), uid, gid, umask);
                let on_ext4 = make_all(plain.path(), uid, gid, umask);
                for ((what, got), (_, want)) in on_mount.iter().zip(&on_ext4) {
                    assert_eq!(
                        got.map(|mode| format!("{mode:o}")),
                        want.map(|mode| format!("{mode:o}")),
                        "{what} as uid {uid} with umask {umask:03o}, daemon umask {daemon_umask:03o}: \
                         mount (left) and ext4 (right) differ"
                    );
                }
                // What ext4 does, stated: the caller's mode minus the caller's umask.
                let short = |i: usize| on_mount[2 * i].1.unwrap() & 0o7777;
                assert_eq!(short(0), 0o666 & !umask, "open(O_CREAT, 0666)");
                assert_eq!(short(1), 0o620 & !umask, "open(O_CREAT, 0620)");
                assert_eq!(short(6), 0o777 & !umask, "mkdir(0777)");
                assert_eq!(short(12), 0o666 & !umask, "mkfifo(0666)");
            }
        }
    }
}

/// A root-created file `name` of `mode` (chmod, so the umask plays no part) holding 8 KiB.
fn setid_file(dir: &Path, name: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, pattern(1, 8192)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

/// What a non-owner may do to a file it can write.
#[derive(Debug, Clone, Copy)]
enum Touch {
    WriteOnly,
    ReadWrite,
    Append,
    Trunc,
    Ftruncate,
    Truncate,
    OpenOnly,
}

const TOUCHES: [Touch; 7] = [
    Touch::WriteOnly,
    Touch::ReadWrite,
    Touch::Append,
    Touch::Trunc,
    Touch::Ftruncate,
    Touch::Truncate,
    Touch::OpenOnly,
];

/// Does `how` to `path` as the calling thread; the errno of the first refusal.
fn touch(path: &Path, how: Touch) -> Result<(), i32> {
    let p = c(path);
    let open = |flags: libc::c_int| {
        // SAFETY: NUL-terminated path; the descriptor is owned by the File.
        ok_or_errno(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) })
            .map(|fd| unsafe { File::from_raw_fd(fd) })
    };
    let write =
        |f: &File, off: u64| f.write_all_at(b"written by nobody", off).map_err(|e| e.raw_os_error().unwrap());
    match how {
        Touch::WriteOnly => write(&open(libc::O_WRONLY)?, 100),
        Touch::ReadWrite => write(&open(libc::O_RDWR)?, 5000),
        Touch::Append => {
            let f = open(libc::O_WRONLY | libc::O_APPEND)?;
            ok_or_errno(unsafe { libc::write(f.as_raw_fd(), b"tail".as_ptr().cast(), 4) as libc::c_int })
                .map(drop)
        }
        Touch::Trunc => write(&open(libc::O_WRONLY | libc::O_TRUNC)?, 0),
        Touch::Ftruncate => open(libc::O_RDWR)?.set_len(3000).map_err(|e| e.raw_os_error().unwrap()),
        Touch::Truncate => ok_or_errno(unsafe { libc::truncate(p.as_ptr(), 123) }).map(drop),
        Touch::OpenOnly => open(libc::O_RDWR).map(drop),
    }
}

#[test]
fn non_owners_with_write_permission_write_set_id_files_and_the_write_clears_the_bits() {
    let m = shared_mount(0o022);
    let plain = plain_dir();
    for mode in [0o4777, 0o2777, 0o6777, 0o2767, 0o6766, 0o4666, 0o6757] {
        for how in TOUCHES {
            let name = format!("f{mode:o}-{how:?}");
            let (on_mount, on_ext4) =
                (setid_file(m.mnt(), &name, mode), setid_file(plain.path(), &name, mode));
            let got = as_user(NOBODY.0, NOBODY.1, 0o022, || touch(&on_mount, how));
            let want = as_user(NOBODY.0, NOBODY.1, 0o022, || touch(&on_ext4, how));
            assert_eq!(got, want, "{how:?} of a {mode:o} file as nobody: mount (left), ext4 (right)");
            assert_eq!(
                format!("{:o}", mode_of(&on_mount)),
                format!("{:o}", mode_of(&on_ext4)),
                "mode after {how:?} of a {mode:o} file as nobody: mount (left), ext4 (right)"
            );
            assert_eq!(fs::read(&on_mount).unwrap(), fs::read(&on_ext4).unwrap(), "{name}: content");
        }
    }
    // A file root creates with a set-ID mode (umask 0) is as writable by others as it says.
    for mode in [0o4777, 0o2777, 0o6777] {
        let name = format!("created-{mode:o}");
        let (on_mount, on_ext4) = (m.path(&name), plain.path().join(&name));
        for path in [&on_mount, &on_ext4] {
            as_root(0, || make(path, Make::Open(mode))).unwrap();
            assert_eq!(mode_of(path), mode, "{}", path.display());
            as_user(NOBODY.0, NOBODY.1, 0o022, || touch(path, Touch::WriteOnly))
                .unwrap_or_else(|e| panic!("nobody writes {}: errno {e}", path.display()));
        }
        assert_eq!(mode_of(&on_mount), 0o777, "the write cleared the set-ID bits");
        assert_eq!(mode_of(&on_mount), mode_of(&on_ext4));
        assert_eq!(fs::read(&on_mount).unwrap(), fs::read(&on_ext4).unwrap());
    }
    // Root's writes (CAP_FSETID) keep the bits, as on ext4.
    let path = setid_file(m.mnt(), "root-writes", 0o6777);
    fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(b"root", 0).unwrap();
    assert_eq!(mode_of(&path), 0o6777);
}

/// A relative symlink target of exactly `len` bytes (4, 6, or 7 and more) that resolves to
/// `./data` from the directory of the link: `./` repeated, then `data` (one `.//` first
/// where `len` is odd).
fn target_to_data(len: usize) -> String {
    let mut t = if len % 2 == 1 { ".//".to_string() } else { String::new() };
    while t.len() + 6 <= len {
        t.push_str("./");
    }
    t.push_str("data");
    assert_eq!(t.len(), len);
    t
}

fn symlink(target: &str, path: &Path) -> Result<(), i32> {
    std::os::unix::fs::symlink(target, path).map_err(|e| e.raw_os_error().unwrap())
}

fn readlink(path: &Path) -> String {
    fs::read_link(path)
        .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()))
        .to_str()
        .unwrap()
        .into()
}

#[test]
fn symlink_targets_of_up_to_4095_bytes_are_stored_and_read_back_exactly() {
    let mut m = shared_mount(0o022);
    let plain = plain_dir();
    fs::write(m.path("data"), b"the data").unwrap();
    fs::write(plain.path().join("data"), b"the data").unwrap();
    let before = m.backing_files().len();
    // 3,044 bytes is where the stored form stops fitting in a backing symlink.
    let lens = [4, 7, 1000, 3043, 3044, 3045, 4000, 4094, 4095];
    for len in lens {
        let target = target_to_data(len);
        for dir in [m.mnt(), plain.path()] {
            let link = dir.join(format!("l{len}"));
            symlink(&target, &link)
                .unwrap_or_else(|e| panic!("symlink of {len} bytes in {}: {e}", dir.display()));
            assert_eq!(readlink(&link), target, "{len} bytes");
            assert_eq!(fs::symlink_metadata(&link).unwrap().len(), len as u64, "lstat size");
            assert_eq!(fs::read(&link).unwrap(), b"the data", "followed, {len} bytes");
        }
    }
    // PATH_MAX bytes is too long, on ext4 as here.
    let too_long = "x".repeat(4096);
    assert_eq!(symlink(&too_long, &m.path("l4096")), Err(libc::ENAMETOOLONG));
    assert_eq!(symlink(&too_long, &plain.path().join("l4096")), Err(libc::ENAMETOOLONG));

    // Another user's long symlink is that user's.
    fs::create_dir(m.path("shared")).unwrap();
    fs::set_permissions(m.path("shared"), fs::Permissions::from_mode(0o777)).unwrap();
    let theirs = m.path("shared/theirs");
    let target = format!("../{}", target_to_data(4092));
    as_user(NOBODY.0, NOBODY.1, 0o022, || symlink(&target, &theirs)).unwrap();
    assert_eq!(readlink(&theirs), target);
    assert_eq!(fs::symlink_metadata(&theirs).unwrap().uid(), NOBODY.0);
    assert_eq!(fs::read(&theirs).unwrap(), b"the data");

    // Moved to another directory, hard-linked, replaced and removed, a long target stays
    // exact, and what stored it goes with the last name.
    fs::create_dir(m.path("sub")).unwrap();
    fs::rename(m.path("l4095"), m.path("sub/moved")).unwrap();
    assert_eq!(readlink(&m.path("sub/moved")), target_to_data(4095));
    // link(2) makes a second name for the symlink itself, not for what it points to.
    let (from, to) = (c(&m.path("sub/moved")), c(&m.path("second-name")));
    assert_eq!(unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), 0) }, 0);
    assert_eq!(fs::symlink_metadata(m.path("second-name")).unwrap().nlink(), 2);
    fs::remove_file(m.path("sub/moved")).unwrap();
    assert_eq!(readlink(&m.path("second-name")), target_to_data(4095));
    fs::rename(m.path("l4000"), m.path("l4094")).unwrap();
    assert_eq!(readlink(&m.path("l4094")), target_to_data(4000));

    m.remount();
    assert_eq!(readlink(&m.path("second-name")), target_to_data(4095));
    assert_eq!(readlink(&m.path("l4094")), target_to_data(4000));
    assert_eq!(readlink(&theirs), target);
    for len in [4, 7, 1000, 3043, 3044, 3045] {
        assert_eq!(readlink(&m.path(&format!("l{len}"))), target_to_data(len));
    }
    m.unmount();
    fsck_clean(&m);
    m.start();

    for name in ["second-name", "l4094", "shared/theirs", "l4", "l7", "l1000", "l3043", "l3044", "l3045"] {
        fs::remove_file(m.path(name)).unwrap();
    }
    fs::remove_dir(m.path("shared")).unwrap();
    fs::remove_dir(m.path("sub")).unwrap();
    // Removed directories may still wait in the trash for the background removal.
    let left = |m: &Mounted| {
        m.backing_files().iter().filter(|p| !p.to_string_lossy().contains("/kmsfs.trash/")).count()
    };
    assert_eq!(left(&m), before, "nothing stored for a removed symlink stays behind");
}

#[test]
fn a_damaged_long_symlink_target_reads_as_eio_and_fsck_reports_it() {
    let mut m = shared_mount(0o022);
    let before: std::collections::BTreeSet<PathBuf> = m.backing_files().into_iter().collect();
    symlink(&"t/".repeat(2000), &m.path("long")).unwrap();
    let added: Vec<PathBuf> = m.backing_files().into_iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(added.len(), 1, "one file stores the long target: {added:?}");
    m.unmount();
    fsck_clean(&m);
    let mut bytes = fs::read(&added[0]).unwrap();
    bytes[10] ^= 1;
    fs::write(&added[0], &bytes).unwrap();
    let out = m.kmsfs(&["fsck", m.cipher().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(8), "fsck finds the damage: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("symlink"), "{out:?}");
    m.start();
    let err = fs::read_link(m.path("long")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // Removing it is still possible, and removes what stored it.
    fs::remove_file(m.path("long")).unwrap();
    assert!(!added[0].exists());
}

fn fallocate(f: &File, mode: i32, off: u64, len: u64) -> Result<(), i32> {
    ok_or_errno(unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) }).map(drop)
}

const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
const ZERO_KEEP: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

fn rw_file(path: &Path) -> File {
    fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).unwrap()
}

#[test]
fn punch_hole_and_zero_range_match_ext4() {
    let m = Mounted::new();
    let plain = plain_dir();
    const B: u64 = 4096;
    let size = 40 * B + 1234;
    let cases: Vec<(i32, u64, u64)> = vec![
        (PUNCH, 0, B),
        (PUNCH, B, 2 * B),
        (PUNCH, 100, 10),
        (PUNCH, 100, 5000),
        (PUNCH, 4000, 8000),
        (PUNCH, 3 * B + 1, 10 * B - 2),
        (PUNCH, 0, size),
        (PUNCH, 0, 1 << 30),
        (PUNCH, size - 100, 50),
        (PUNCH, size - 10, 100),
        (PUNCH, 40 * B, 1234),
        (PUNCH, 39 * B, B + 1234),
        (PUNCH, size + 100, B),
        (libc::FALLOC_FL_PUNCH_HOLE, 0, B),
        (ZERO, 0, B),
        (ZERO, 100, 5000),
        (ZERO, 5 * B + 7, 7 * B),
        (ZERO, size - 10, 100),
        (ZERO, size + 5000, 3 * B),
        (ZERO, 2 * B, 100 * B),
        (ZERO_KEEP, size - 10, 100),
        (ZERO_KEEP, size + 5000, 3 * B),
        (ZERO_KEEP, 10, 20 * B),
    ];
    for (i, &(mode, off, len)) in cases.iter().enumerate() {
        let what = format!("case {i}: mode {mode:#x} at {off}, {len} bytes");
        let results: Vec<(Result<(), i32>, Vec<u8>, u64)> = [m.mnt(), plain.path()]
            .iter()
            .map(|dir| {
                let path = dir.join(format!("case-{i}"));
                let f = rw_file(&path);
                f.write_all_at(&pattern(i as u64, size as usize), 0).unwrap();
                let r = fallocate(&f, mode, off, len);
                // A new descriptor: what any reader sees, not a cached view of this one.
                (r, fs::read(&path).unwrap(), fs::metadata(&path).unwrap().len())
            })
            .collect();
        assert_eq!(results[0].0, results[1].0, "{what}: mount (left), ext4 (right)");
        assert_eq!(results[0].2, results[1].2, "{what}: size");
        assert!(results[0].1 == results[1].1, "{what}: content differs");
    }
    // ext4 collapses and inserts ranges; the block index is part of every block's
    // authentication, so kmsfs would have to re-encrypt everything after the range and a
    // crash could leave a mix: refused, the file unchanged.
    let path = m.path("collapse");
    let f = rw_file(&path);
    f.write_all_at(&pattern(9, 64 * B as usize), 0).unwrap();
    for mode in [libc::FALLOC_FL_COLLAPSE_RANGE, libc::FALLOC_FL_INSERT_RANGE] {
        assert_eq!(fallocate(&f, mode, 4 * B, 4 * B), Err(libc::EOPNOTSUPP), "mode {mode:#x}");
    }
    assert!(fs::read(&path).unwrap() == pattern(9, 64 * B as usize));
}

/// Bytes the backing file system has allocated to `path`.
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn punched_and_zeroed_blocks_become_holes_in_the_backing_file() {
    let mut m = Mounted::new();
    const MIB: u64 = 1 << 20;
    let path = m.path("image");
    let f = rw_file(&path);
    let data = pattern(3, 8 * MIB as usize + 777);
    f.write_all_at(&data, 0).unwrap();
    f.sync_all().unwrap();
    let backing = m.backing_of(&path);
    let full = allocated(&backing);
    assert!(full > 8 * MIB, "{full}");
    let mut model = data.clone();
    // Unaligned edges: the partial blocks are rewritten, the whole ones freed.
    fallocate(&f, PUNCH, MIB + 5, 3 * MIB).unwrap();
    model[(MIB + 5) as usize..(4 * MIB + 5) as usize].fill(0);
    fallocate(&f, ZERO_KEEP, 5 * MIB, 2 * MIB - 3).unwrap();
    model[(5 * MIB) as usize..(7 * MIB - 3) as usize].fill(0);
    f.sync_all().unwrap();
    let after = allocated(&backing);
    eprintln!("backing file: {} KiB allocated before, {} KiB after", full >> 10, after >> 10);
    assert!(after < full - 49 * MIB / 10, "5 MiB punched, {} KiB freed", (full - after) >> 10);
    assert!(fs::read(&path).unwrap() == model, "content after punching");
    drop(f);
    m.remount();
    assert!(fs::read(&path).unwrap() == model, "content after a remount");
    m.unmount();
    fsck_clean(&m);
}

#[test]
fn a_daemon_killed_while_punching_leaves_every_block_readable_old_or_zero() {
    let mut m = Mounted::new();
    const B: u64 = 4096;
    let size = 300 * B + 555;
    let original = pattern(11, size as usize);
    for round in 0..3u64 {
        let path = m.path(&format!("victim-{round}"));
        fs::write(&path, &original).unwrap();
        let f = rw_file(&path);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ round;
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let off = state % size;
                    let len = 1 + (state >> 20) % (40 * B);
                    let mode = if state & 1 == 0 { PUNCH } else { ZERO_KEEP };
                    if fallocate(&f, mode, off, len).is_err() {
                        break; // the daemon is gone
                    }
                    n += 1;
                }
                n
            });
            std::thread::sleep(std::time::Duration::from_millis(30 + 40 * round));
            m.kill_daemon();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let done = worker.join().unwrap();
            eprintln!("round {round}: {done} fallocate calls before the kill");
            assert!(done > 0, "round {round}: no fallocate call succeeded");
        });
        drop(f);
        m.restart_after_crash();
        let got = fs::read(&path).unwrap_or_else(|e| panic!("round {round}: the file reads as {e}"));
        assert_eq!(got.len(), original.len(), "round {round}: size");
        let bad = got.iter().zip(&original).position(|(g, o)| g != o && *g != 0);
        assert_eq!(bad, None, "round {round}: a byte that is neither old nor zero");
    }
    m.unmount();
    fsck_clean(&m);
}

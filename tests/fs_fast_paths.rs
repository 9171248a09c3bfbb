//! The performance paths keep the file system's meaning: listings that carry
//! attributes (readdirplus), unsupported xattr namespaces answered once for all, removal in
//! the background through `kmsfs.trash`, read-ahead across a directory's files, the mount's
//! 4 MiB read-ahead, the one dispatching thread that polls for the next request (bounded),
//! with large READs and fsyncs on worker threads, and the opt-in `-o writeback_cache`.

mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use common::mount::{pattern, wait_until, Mounted};

const TRASH: &str = "kmsfs.trash";

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// getxattr's result: the value's length, or the errno.
fn getxattr(path: &Path, name: &str) -> Result<usize, i32> {
    let (p, n) = (cstr(path), CString::new(name).unwrap());
    let mut buf = [0u8; 256];
    // SAFETY: NUL-terminated strings and a buffer of the length given.
    let rc = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        Err(common::mount::last_errno())
    } else {
        Ok(rc as usize)
    }
}

fn statfs(path: &Path) {
    let p = cstr(path);
    // SAFETY: a NUL-terminated path and a zeroed struct for the kernel to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(p.as_ptr(), &mut st) }, 0);
}

fn trash_entries(m: &Mounted) -> usize {
    fs::read_dir(m.cipher().join(TRASH)).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn listings_carry_the_attributes_that_stat_gives() {
    let mut m = Mounted::new();
    let sizes = [0usize, 1, 4095, 4096, 5000, 100_000];
    fs::create_dir(m.path("d")).unwrap();
    for (i, &len) in sizes.iter().enumerate() {
        fs::write(m.path(&format!("d/f{i}")), pattern(i as u64, len)).unwrap();
    }
    fs::set_permissions(m.path("d/f1"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let target = "a/target/of/twenty+b";
    std::os::unix::fs::symlink(target, m.path("d/link")).unwrap();
    fs::create_dir(m.path("d/sub")).unwrap();
    // Nothing cached in the kernel: the listing below is what brings the names in.
    m.remount();
    let mut seen = 0;
    for entry in fs::read_dir(m.path("d")).unwrap() {
        let entry = entry.unwrap();
        let listed = entry.metadata().unwrap();
        let name = entry.file_name().into_string().unwrap();
        let expected_len = match name.as_str() {
            "link" => target.len() as u64,
            "sub" => listed.len(), // a directory's size is the backing one's
            f => sizes[f[1..].parse::<usize>().unwrap()] as u64,
        };
        assert_eq!(listed.len(), expected_len, "{name}: the listed size is the plaintext size");
        let stat = fs::symlink_metadata(entry.path()).unwrap();
        assert_eq!(
            (listed.ino(), listed.mode(), listed.len(), listed.mtime(), listed.nlink()),
            (stat.ino(), stat.mode(), stat.len(), stat.mtime(), stat.nlink()),
            "{name}: listing and stat agree"
        );
        seen += 1;
    }
    assert_eq!(seen, sizes.len() + 2);
    assert_eq!(fs::metadata(m.path("d/f1")).unwrap().mode() & 0o777, 0o600);
    assert_eq!(fs::read_link(m.path("d/link")).unwrap(), Path::new(target));
    // The names taken from the listing work like looked-up ones.
    assert_eq!(fs::read(m.path("d/f5")).unwrap(), pattern(5, 100_000));
    fs::rename(m.path("d/f2"), m.path("d/sub/moved")).unwrap();
    assert_eq!(fs::read(m.path("d/sub/moved")).unwrap(), pattern(2, 4095));
}

#[test]
fn only_user_xattrs_are_supported() {
    let m = Mounted::new();
    let f = m.path("file");
    fs::write(&f, b"x").unwrap();
    for name in ["security.selinux", "security.capability", "system.posix_acl_access", "trusted.x"] {
        assert_eq!(getxattr(&f, name), Err(libc::EOPNOTSUPP), "{name}");
    }
    assert_eq!(getxattr(&f, "user.absent"), Err(libc::ENODATA));
    let status =
        std::process::Command::new("setfattr").args(["-n", "user.note", "-v", "hello"]).arg(&f).status();
    assert!(status.unwrap().success());
    assert_eq!(getxattr(&f, "user.note"), Ok(5));
}

#[test]
fn removed_files_leave_through_the_trash_and_names_are_free_at_once() {
    let mut m = Mounted::new();
    fs::create_dir_all(m.path("tree/a/b")).unwrap();
    for i in 0..300 {
        fs::write(m.path(&format!("tree/a/f{i}")), pattern(i, 3000)).unwrap();
    }
    fs::write(m.path("tree/a/b/deep"), b"deep").unwrap();
    let mut held = File::open(m.path("tree/a/f7")).unwrap();
    fs::remove_dir_all(m.path("tree")).unwrap();
    assert!(!m.path("tree").exists(), "the names are gone when rm returns");
    // A removed name can be taken again at once.
    fs::create_dir_all(m.path("tree/a")).unwrap();
    fs::write(m.path("tree/a/f1"), b"new").unwrap();
    assert_eq!(fs::read(m.path("tree/a/f1")).unwrap(), b"new");
    // A file open when it was removed stays readable.
    let mut data = Vec::new();
    held.read_to_end(&mut data).unwrap();
    assert_eq!(data, pattern(7, 3000));
    // statfs waits until the removals are done: df after rm is right.
    statfs(m.mnt());
    assert_eq!(trash_entries(&m), 0, "statfs returned before the trash was emptied");
    let root: Vec<_> = fs::read_dir(m.mnt()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(root, vec![std::ffi::OsString::from("tree")], "the trash is not listed");
    drop(held);

    // What a killed daemon left in the trash is removed by the next mount.
    m.unmount();
    let leftover = m.cipher().join(TRASH).join("left-by-a-crash");
    fs::create_dir_all(leftover.join("sub")).unwrap();
    fs::write(leftover.join("sub/file"), b"ciphertext").unwrap();
    fs::write(m.cipher().join(TRASH).join("a-file"), b"ciphertext").unwrap();
    m.start();
    assert!(wait_until(Duration::from_secs(10), || trash_entries(&m) == 0), "leftovers stay in the trash");
    // fsck takes the trash for kmsfs's own.
    m.unmount();
    let out = m.kmsfs(&["fsck", m.cipher().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn files_read_in_listing_order_are_exact() {
    // The read-ahead works on the files ahead of the one opened; what is read must not change.
    let mut m = Mounted::new();
    fs::create_dir(m.path("many")).unwrap();
    for i in 0..120 {
        fs::write(m.path(&format!("many/f{i}")), pattern(i, 1000 + 977 * i as usize)).unwrap();
    }
    m.remount();
    let mut read = 0;
    for entry in fs::read_dir(m.path("many")).unwrap() {
        let path = entry.unwrap().path();
        let i: u64 = path.file_name().unwrap().to_str().unwrap()[1..].parse().unwrap();
        assert_eq!(fs::read(&path).unwrap(), pattern(i, 1000 + 977 * i as usize), "{}", path.display());
        read += 1;
    }
    assert_eq!(read, 120);
}

#[test]
fn a_root_daemon_raises_the_mounts_read_ahead_and_large_reads_stay_exact() {
    // The kernel leaves a FUSE mount at 128 KiB of read-ahead (READs of 128 KiB); a daemon
    // running as root sets 4 MiB on the mount's bdi, so sequential reads come in 1 MiB READs,
    // several at a time.
    let mut m = Mounted::new();
    let data = pattern(7, 9 * 1024 * 1024 + 12345);
    fs::write(m.path("big"), &data).unwrap();
    m.remount();
    if unsafe { libc::geteuid() } == 0 {
        let dev = fs::metadata(m.mnt()).unwrap().dev();
        let knob = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
        assert_eq!(fs::read_to_string(&knob).unwrap().trim(), "4096", "{knob}");
    } else {
        eprintln!("not root: the daemon cannot raise the read-ahead; checking the data only");
    }
    let mut read = Vec::new();
    let mut f = File::open(m.path("big")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        read.extend_from_slice(&buf[..n]);
    }
    assert!(read == data, "a 9 MiB file read in 1 MiB pieces differs from what was written");
}

/// CPU time (user + system, in clock ticks) the process `pid` has used, all threads.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command's closing parenthesis; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn the_dispatcher_stops_polling_once_requests_stop() {
    // After each reply the dispatching thread polls for the next request for a bounded
    // time; an idle mount must cost nothing. A poll that never ends would use a whole core.
    let m = Mounted::new();
    for i in 0..500 {
        fs::write(m.path(&format!("f{i}")), b"x").unwrap();
        fs::metadata(m.path(&format!("f{i}"))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(m.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(m.pid()) - before;
    // SAFETY: no arguments.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(used * 20 < 2 * per_second, "an idle mount used {used} ticks of CPU in 2 s (more than 5 %)");
}

#[test]
fn large_reads_on_worker_threads_each_get_their_own_bytes() {
    // 1 MiB READs are decrypted on worker threads and answered from there, out of order;
    // four readers of one file at different places, each through its own descriptor, and
    // an fsync among them.
    let m = Mounted::new();
    let data = pattern(11, 8 * 1024 * 1024 + 4321);
    fs::write(m.path("big"), &data).unwrap();
    let mut writer = OpenOptions::new().write(true).open(m.path("big")).unwrap();
    std::thread::scope(|s| {
        for part in 0..4usize {
            let (m, data) = (&m, &data);
            s.spawn(move || {
                use std::os::unix::fs::FileExt;
                let f = File::open(m.path("big")).unwrap();
                let mut buf = vec![0u8; 1 << 20];
                for round in 0..3 {
                    let at = (part * 2 + round % 2) << 20;
                    let n = f.read_at(&mut buf, at as u64).unwrap();
                    assert!(n > 0 && buf[..n] == data[at..at + n], "reader {part}: bytes at {at} differ");
                }
            });
        }
        writer.write_all(&data[..4096]).unwrap(); // the same bytes again, then an fsync
        writer.sync_all().unwrap();
    });
    assert!(fs::read(m.path("big")).unwrap() == data);
}

#[test]
fn a_writeback_cache_mount_keeps_every_byte_and_appends_in_order() {
    let mut m = Mounted::with_options(&["writeback_cache"]);
    // Appends from two handles interleave in the order they were made.
    let open_append = || OpenOptions::new().create(true).append(true).open(m.path("log")).unwrap();
    let (mut a, mut b) = (open_append(), open_append());
    let mut expected = Vec::new();
    for i in 0..200u64 {
        let line = format!("line {i} {}\n", "x".repeat((i % 37) as usize));
        if i % 2 == 0 { &mut a } else { &mut b }.write_all(line.as_bytes()).unwrap();
        expected.extend_from_slice(line.as_bytes());
    }
    drop((a, b));
    assert_eq!(fs::read(m.path("log")).unwrap(), expected);
    // Overwrites in the middle, a write-only handle that does not cover whole pages, a
    // truncate and an extension: the kernel reads pages it only partly has.
    let mut model = pattern(1, 300_000);
    fs::write(m.path("data"), &model).unwrap();
    let mut w = OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(m.path("data")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&w, b"patched", 5000).unwrap();
    model[5000..5007].copy_from_slice(b"patched");
    w.set_len(200_001).unwrap();
    model.truncate(200_001);
    std::os::unix::fs::FileExt::write_all_at(&w, b"tail", 250_000).unwrap();
    model.resize(250_000, 0);
    model.extend_from_slice(b"tail");
    w.flush().unwrap();
    drop(w);
    assert_eq!(fs::read(m.path("data")).unwrap(), model);
    assert_eq!(fs::metadata(m.path("data")).unwrap().len(), model.len() as u64);
    // Everything reached the cipher directory: a mount without the cache reads the same.
    m.unmount();
    let m = Mounted::remount_with(m, &[]);
    assert_eq!(fs::read(m.path("log")).unwrap(), expected);
    assert_eq!(fs::read(m.path("data")).unwrap(), model);
}

#[test]
fn link_counts_drop_when_a_name_is_removed() {
    // Removal in the background must not leave a link behind that stat counts: a file's
    // other names and its open handles see the count drop when unlink returns.
    let m = Mounted::new();
    for i in 0..200 {
        let (a, b, c) = (m.path(&format!("a{i}")), m.path(&format!("b{i}")), m.path(&format!("c{i}")));
        fs::write(&a, pattern(i, 5000)).unwrap();
        fs::hard_link(&a, &b).unwrap();
        fs::hard_link(&a, &c).unwrap();
        let held = File::open(&a).unwrap();
        fs::remove_file(&c).unwrap();
        assert_eq!(held.metadata().unwrap().nlink(), 2, "round {i}: fstat after one of three names went");
        assert_eq!(fs::metadata(&b).unwrap().nlink(), 2, "round {i}: stat of another name");
        fs::remove_file(&a).unwrap();
        fs::remove_file(&b).unwrap();
        assert_eq!(held.metadata().unwrap().nlink(), 0, "round {i}: fstat of an open file with no name");
    }
}

/// Whether the daemon holds `path` open (a new directory's metadata waiting for its fsync).
fn daemon_holds(m: &Mounted, path: &Path) -> bool {
    fs::read_dir(format!("/proc/{}/fd", m.pid()))
        .unwrap()
        .flatten()
        .any(|fd| fs::read_link(fd.path()).is_ok_and(|target| target == path))
}

/// The primary metadata copy of directory `dir` of the mount, as the daemon opened it.
fn metadata_of(m: &Mounted, dir: &Path) -> std::path::PathBuf {
    fs::canonicalize(m.backing_of(dir)).unwrap().join("kmsfs.dir")
}

/// mkdir leaves its metadata's fsync to a thread (within half a second), but an fsync or
/// fsyncdir at or below a new directory makes the metadata of every new directory above it
/// durable before it returns.
#[test]
fn new_directory_metadata_is_durable_before_an_fsync_below_it_returns() {
    let m = Mounted::new();
    let mut seen_waiting = [false, false];
    for round in 0..20 {
        for (how, seen) in seen_waiting.iter_mut().enumerate() {
            let top = m.path(&format!("{how}-{round}"));
            fs::create_dir_all(top.join("a/b")).unwrap();
            let file = top.join("a/b/file");
            fs::write(&file, b"durable").unwrap();
            let metas: Vec<_> = [&top, &top.join("a"), &top.join("a/b")].map(|d| metadata_of(&m, d)).into();
            let waiting = metas.iter().all(|p| daemon_holds(&m, p));
            match how {
                0 => OpenOptions::new().write(true).open(&file).unwrap().sync_all().unwrap(),
                _ => File::open(top.join("a/b")).unwrap().sync_all().unwrap(),
            }
            let held: Vec<_> = metas.iter().filter(|p| daemon_holds(&m, p)).collect();
            assert!(held.is_empty(), "not yet durable after {}: {held:?}", ["fsync", "fsyncdir"][how]);
            *seen |= waiting;
        }
        if seen_waiting == [true, true] {
            break;
        }
    }
    assert_eq!(seen_waiting, [true, true], "new metadata was never seen waiting for its fsync");
    // Without an fsync the thread makes it durable soon.
    let later = m.path("later");
    fs::create_dir(&later).unwrap();
    let meta = metadata_of(&m, &later);
    assert!(wait_until(Duration::from_secs(5), || !daemon_holds(&m, &meta)), "{meta:?} still waiting");
    assert_eq!(fs::read(meta).unwrap(), fs::read(m.backing_of(&later).join("kmsfs.dir.bak")).unwrap());
}

/// The FUSE requests the daemon has logged (fuser logs each at debug level) that name inode
/// `ino` and contain `what`.
fn requests_for(m: &Mounted, ino: u64, what: &str) -> usize {
    let ino = format!("ino {ino:#018x} ");
    m.log_text().lines().filter(|l| l.contains(&ino) && l.contains(what)).count()
}

#[test]
fn a_write_only_handle_sends_one_write_per_call_and_readers_see_every_byte() {
    // Write-only handles bypass the page cache (FOPEN_DIRECT_IO): a write(2) that straddles
    // folios is one WRITE, not one per folio, and a new file's first write is not preceded
    // by a GETXATTR of security.capability (tar: 9.8 requests per file instead of 11.1).
    let m = Mounted::with_log_level(&[], "fuser=debug");
    let mut model = pattern(3, 5632);
    let mut f = OpenOptions::new().write(true).create_new(true).open(m.path("tarred")).unwrap();
    let ino = f.metadata().unwrap().ino();
    f.write_all(&model).unwrap();
    for i in 0..4u64 {
        // tar's records: 10 KiB each, starting inside a page.
        let record = pattern(10 + i, 10240);
        f.write_all(&record).unwrap();
        model.extend_from_slice(&record);
    }
    drop(f);
    assert!(wait_until(Duration::from_secs(5), || requests_for(&m, ino, "RELEASE") == 1));
    assert_eq!(requests_for(&m, ino, " WRITE "), 5, "one WRITE per write(2)");
    assert_eq!(requests_for(&m, ino, "security.capability"), 0, "no capability check before a write");
    assert_eq!(fs::read(m.path("tarred")).unwrap(), model);

    // A reader with the file's pages cached sees what a write-only handle writes over them
    // (the kernel drops the cached pages a direct write overlaps), in place and appended.
    let mut reader = File::open(m.path("tarred")).unwrap();
    let mut seen = Vec::new();
    reader.read_to_end(&mut seen).unwrap();
    assert_eq!(seen, model);
    let w = OpenOptions::new().write(true).open(m.path("tarred")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&w, b"overwritten", 7000).unwrap();
    model[7000..7011].copy_from_slice(b"overwritten");
    let mut a = OpenOptions::new().append(true).open(m.path("tarred")).unwrap();
    a.write_all(b"appended").unwrap();
    model.extend_from_slice(b"appended");
    let mut again = vec![0u8; model.len() + 10];
    let n = std::os::unix::fs::FileExt::read_at(&reader, &mut again, 0).unwrap();
    assert_eq!(n, model.len());
    assert!(again[..n] == model[..], "the cached reader sees both writes");
    drop((w, a));
    assert_eq!(fs::read(m.path("tarred")).unwrap(), model);
    // A handle that can read keeps the page cache (and can be mapped).
    let rw = OpenOptions::new().read(true).write(true).open(m.path("tarred")).unwrap();
    let before = requests_for(&m, ino, " READ ");
    let mut buf = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_at(&rw, &mut buf, 0).unwrap();
    std::os::unix::fs::FileExt::read_at(&rw, &mut buf, 0).unwrap();
    assert!(requests_for(&m, ino, " READ ") - before <= 1, "the second read came from the page cache");
}

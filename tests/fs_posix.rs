//! POSIX behaviour of a mounted volume, through real syscalls: every test mounts its own
//! volume with `kmsfs mount -f` and checks what an application would see.

mod common;

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::mount::{errno, last_errno, pattern, walk, Mounted};

const HEADER: u64 = 288;
const BLOCK: u64 = 4096;
const CIPHER_BLOCK: u64 = 4096 + 28;

/// Length of a backing file holding `size` plaintext bytes (docs/FORMAT.md).
fn cipher_size(size: u64) -> u64 {
    let rest = size % BLOCK;
    HEADER + (size / BLOCK) * CIPHER_BLOCK + if rest > 0 { rest + 28 } else { 0 }
}

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// Reads up to `len` bytes at `off`, looping over short reads; stops at end of file.
fn pread(f: &File, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f.read_at(&mut buf[got..], off + got as u64).expect("pread");
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    buf
}

fn model_write(model: &mut Vec<u8>, off: usize, data: &[u8]) {
    if model.len() < off + data.len() {
        model.resize(off + data.len(), 0);
    }
    model[off..off + data.len()].copy_from_slice(data);
}

fn rw(path: &Path) -> File {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).unwrap()
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn err_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    errno(&r.expect_err("expected an error"))
}

#[test]
fn pwrite_pread_at_arbitrary_offsets_match_a_model() {
    let mut m = Mounted::new();
    let p = m.path("f.bin");
    let f = rw(&p);
    let mut model = Vec::new();
    let writes: [(usize, usize); 11] = [
        (0, 100),
        (4090, 20),
        (4096, 4096),
        (8191, 2),
        (3, 5000),
        (20_000, 10),
        (12_288, 4096),
        (16_380, 9000),
        (1, 1),
        (40_000, 200_000),
        (4095, 1),
    ];
    for (i, &(off, len)) in writes.iter().enumerate() {
        let data = pattern(i as u64 + 1, len);
        f.write_all_at(&data, off as u64).unwrap();
        model_write(&mut model, off, &data);
        assert_eq!(f.metadata().unwrap().len(), model.len() as u64, "size after write {i}");
        assert_eq!(pread(&f, off as u64, len), data, "read back write {i}");
    }
    let n = model.len();
    for (off, len) in
        [(0, 1), (4095, 2), (4000, 200), (0, n), (8190, 5000), (n - 1, 10), (n, 10), (n + 5000, 10)]
    {
        let want = &model[off.min(n)..(off + len).min(n)];
        assert_eq!(pread(&f, off as u64, len), want, "pread({off}, {len})");
    }
    drop(f);
    // A fresh open reads from the daemon, not from pages cached by the writes.
    assert_eq!(read(&p), model);
    let backing = m.backing_of(&p);
    assert_eq!(fs::metadata(&backing).unwrap().len(), cipher_size(n as u64), "backing length per the format");

    // Sequential writes through a cursor, and seeks.
    let q = m.path("seq.bin");
    let mut f = File::create(&q).unwrap();
    let chunks: Vec<Vec<u8>> = (0..20).map(|i| pattern(100 + i, 777 + i as usize * 311)).collect();
    for ch in &chunks {
        f.write_all(ch).unwrap();
    }
    drop(f);
    let all: Vec<u8> = chunks.concat();
    let mut f = File::open(&q).unwrap();
    f.seek(SeekFrom::Start(5000)).unwrap();
    let mut buf = vec![0u8; 3000];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, all[5000..8000]);
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, all[8000..]);
    drop(f);

    m.remount();
    assert_eq!(read(&p), model, "content survives a remount");
    assert_eq!(read(&q), all);
}

#[test]
fn o_append_handles_always_write_at_the_end() {
    let m = Mounted::new();
    let p = m.path("log.txt");
    fs::write(&p, b"start\n").unwrap();
    let mut a = OpenOptions::new().append(true).open(&p).unwrap();
    let mut b = OpenOptions::new().append(true).open(&p).unwrap();
    let mut expected = b"start\n".to_vec();
    for i in 0..60u64 {
        let ra = pattern(i, 100 + i as usize * 37);
        let rb = pattern(1000 + i, 50 + i as usize * 53);
        a.write_all(&ra).unwrap();
        b.write_all(&rb).unwrap();
        expected.extend_from_slice(&ra);
        expected.extend_from_slice(&rb);
    }
    // pwrite on an O_APPEND descriptor appends too (Linux).
    a.write_all_at(b"tail", 0).unwrap();
    expected.extend_from_slice(b"tail");
    assert_eq!(a.metadata().unwrap().len(), expected.len() as u64);
    drop((a, b));
    assert_eq!(read(&p), expected);
}

#[test]
fn o_trunc_empties_the_file() {
    let m = Mounted::new();
    let p = m.path("t.txt");
    fs::write(&p, pattern(1, 10_000)).unwrap();
    let mut f = OpenOptions::new().write(true).truncate(true).open(&p).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0);
    f.write_all(b"xy").unwrap();
    drop(f);
    assert_eq!(read(&p), b"xy");
    assert_eq!(fs::metadata(m.backing_of(&p)).unwrap().len(), cipher_size(2));
    // Create over an existing file truncates as well; rewriting more than a block.
    fs::write(&p, pattern(2, 3 * 4096 + 5)).unwrap();
    fs::write(&p, b"short").unwrap();
    assert_eq!(read(&p), b"short");
    let mut f = OpenOptions::new().read(true).write(true).truncate(true).open(&p).unwrap();
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    assert!(buf.is_empty());
}

#[test]
fn truncate_shrinks_and_extends_with_zeros() {
    let m = Mounted::new();
    let p = m.path("t.bin");
    let data = pattern(7, 10_000);
    fs::write(&p, &data).unwrap();
    let f = rw(&p);
    f.set_len(5000).unwrap();
    assert_eq!(pread(&f, 0, 20_000), data[..5000]);
    f.set_len(20_000).unwrap();
    let mut want = data[..5000].to_vec();
    want.resize(20_000, 0);
    assert_eq!(pread(&f, 0, 30_000), want);
    // Cut at exact block boundaries, and to zero.
    f.set_len(8192).unwrap();
    f.set_len(4096).unwrap();
    assert_eq!(pread(&f, 0, 10_000), want[..4096]);
    f.set_len(0).unwrap();
    assert!(pread(&f, 0, 10).is_empty());
    drop(f);
    // An empty file keeps its sealed empty last block (28 bytes), so a cut is detectable.
    assert_eq!(fs::metadata(m.backing_of(&p)).unwrap().len(), HEADER + 28);

    // truncate(2) by path, with no handle open.
    fs::write(&p, &data).unwrap();
    let cp = c(&p);
    assert_eq!(unsafe { libc::truncate(cp.as_ptr(), 4100) }, 0, "truncate: {}", last_errno());
    assert_eq!(read(&p), data[..4100]);
    assert_eq!(unsafe { libc::truncate(cp.as_ptr(), 9000) }, 0, "truncate: {}", last_errno());
    let mut want = data[..4100].to_vec();
    want.resize(9000, 0);
    assert_eq!(read(&p), want);
    assert_eq!(fs::metadata(m.backing_of(&p)).unwrap().len(), cipher_size(9000));
}

#[test]
fn extending_to_100_mib_stays_sparse() {
    let m = Mounted::new();
    let p = m.path("sparse.img");
    let f = rw(&p);
    f.write_all_at(b"head", 0).unwrap();
    f.set_len(100 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 100 << 20);
    drop(f);
    let backing = m.backing_of(&p);
    let meta = fs::metadata(&backing).unwrap();
    assert_eq!(meta.len(), cipher_size(100 << 20));
    assert!(meta.blocks() * 512 < 1 << 20, "backing file allocates {} bytes", meta.blocks() * 512);

    let f = rw(&p);
    assert_eq!(pread(&f, 0, 8), b"head\0\0\0\0");
    assert!(pread(&f, 50 << 20, 8192).iter().all(|&b| b == 0), "a hole reads as zeros");
    let tail = pread(&f, (100 << 20) - 100, 200);
    assert_eq!(tail.len(), 100);
    assert!(tail.iter().all(|&b| b == 0));
    f.write_all_at(b"middle", 60 << 20).unwrap();
    drop(f);
    let f = File::open(&p).unwrap();
    assert_eq!(pread(&f, 60 << 20, 6), b"middle");
    assert!(pread(&f, (60 << 20) - 4096, 4096).iter().all(|&b| b == 0));
    assert_eq!(f.metadata().unwrap().len(), 100 << 20);
    assert!(fs::metadata(&backing).unwrap().blocks() * 512 < 1 << 20);

    // A write far past the end leaves a hole too.
    let q = m.path("far.bin");
    let f = rw(&q);
    f.write_all_at(b"x", 10).unwrap();
    f.write_all_at(b"far", 30 << 20).unwrap();
    drop(f);
    let f = File::open(&q).unwrap();
    assert_eq!(pread(&f, 0, 12), b"\0\0\0\0\0\0\0\0\0\0x\0");
    assert_eq!(pread(&f, 30 << 20, 10), b"far");
    assert!(pread(&f, 15 << 20, 4096).iter().all(|&b| b == 0));
    assert!(fs::metadata(m.backing_of(&q)).unwrap().blocks() * 512 < 1 << 20);

    // Offsets past 4 GiB.
    let r = m.path("huge.bin");
    let f = rw(&r);
    let at = (5u64 << 30) + 4000;
    f.write_all_at(b"beyond 4 GiB", at).unwrap();
    drop(f);
    let f = File::open(&r).unwrap();
    assert_eq!(f.metadata().unwrap().len(), at + 12);
    assert_eq!(pread(&f, at - 4, 20), b"\0\0\0\0beyond 4 GiB");
    assert!(pread(&f, 4 << 30, 4096).iter().all(|&b| b == 0));
}

#[test]
fn unlinked_open_file_stays_readable_and_writable() {
    let m = Mounted::new();
    let p = m.path("gone.txt");
    let mut f = rw(&p);
    let first = pattern(1, 6000);
    f.write_all(&first).unwrap();
    fs::remove_file(&p).unwrap();
    assert_eq!(err_of(fs::symlink_metadata(&p)), libc::ENOENT);
    assert!(fs::read_dir(m.mnt()).unwrap().all(|e| e.unwrap().file_name() != "gone.txt"));
    assert_eq!(pread(&f, 0, 10_000), first);
    let second = pattern(2, 3000);
    f.write_all_at(&second, 5000).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 8000);
    let mut want = first.clone();
    model_write(&mut want, 5000, &second);
    assert_eq!(pread(&f, 0, 10_000), want);
    f.set_len(100).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 100);
    assert_eq!(pread(&f, 0, 1000), want[..100]);
    f.set_permissions(fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(f.metadata().unwrap().mode() & 0o777, 0o600);

    // A new file of the same name is a different file.
    fs::write(&p, b"new").unwrap();
    assert_eq!(read(&p), b"new");
    assert_eq!(pread(&f, 0, 1000), want[..100]);
    drop(f);
    assert_eq!(read(&p), b"new");
}

#[test]
fn rename_over_files_across_directories_and_of_directories() {
    let mut m = Mounted::new();
    let (a, b) = (m.path("a"), m.path("b"));
    fs::write(&a, b"AAA").unwrap();
    fs::write(&b, b"BBBB").unwrap();
    let b_ino = fs::metadata(&b).unwrap().ino();
    let a_ino = fs::metadata(&a).unwrap().ino();
    fs::rename(&a, &b).unwrap();
    assert_eq!(read(&b), b"AAA");
    assert_eq!(fs::metadata(&b).unwrap().ino(), a_ino);
    assert_ne!(a_ino, b_ino);
    assert_eq!(err_of(fs::metadata(&a)), libc::ENOENT);

    fs::create_dir(m.path("d1")).unwrap();
    fs::create_dir(m.path("d2")).unwrap();
    fs::write(m.path("d1/x"), pattern(3, 5000)).unwrap();
    fs::rename(m.path("d1/x"), m.path("d2/y")).unwrap();
    assert_eq!(read(&m.path("d2/y")), pattern(3, 5000));
    assert!(!m.path("d1/x").exists());

    // A directory rename keeps everything below it reachable, including open files.
    fs::create_dir_all(m.path("top/sub/deep")).unwrap();
    fs::write(m.path("top/sub/deep/file"), b"deep").unwrap();
    fs::write(m.path("top/f"), b"shallow").unwrap();
    let mut open = OpenOptions::new().append(true).open(m.path("top/sub/deep/file")).unwrap();
    fs::rename(m.path("top"), m.path("d2/moved")).unwrap();
    assert!(!m.path("top").exists());
    assert_eq!(read(&m.path("d2/moved/sub/deep/file")), b"deep");
    assert_eq!(read(&m.path("d2/moved/f")), b"shallow");
    open.write_all(b"+more").unwrap();
    drop(open);
    assert_eq!(read(&m.path("d2/moved/sub/deep/file")), b"deep+more");
    fs::write(m.path("d2/moved/sub/new"), b"n").unwrap();
    assert_eq!(read(&m.path("d2/moved/sub/new")), b"n");
    m.remount();
    assert_eq!(read(&m.path("d2/moved/sub/deep/file")), b"deep+more");

    // Directories over directories: empty is replaced, non-empty refuses.
    fs::create_dir(m.path("empty")).unwrap();
    fs::rename(m.path("d1"), m.path("empty")).unwrap();
    assert!(!m.path("d1").exists() && m.path("empty").is_dir());
    assert_eq!(err_of(fs::rename(m.path("empty"), m.path("d2"))), libc::ENOTEMPTY);
    assert_eq!(err_of(fs::rename(m.path("b"), m.path("d2"))), libc::EISDIR);
    assert_eq!(err_of(fs::rename(m.path("d2"), m.path("b"))), libc::ENOTDIR);
    assert_eq!(err_of(fs::rename(m.path("nope"), m.path("b"))), libc::ENOENT);
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
    let (f, t) = (c(from), c(to));
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

#[test]
fn rename_noreplace_refuses_an_existing_target() {
    let m = Mounted::new();
    let (a, b, c2) = (m.path("a"), m.path("b"), m.path("c"));
    fs::write(&a, b"aaa").unwrap();
    fs::write(&b, b"bbb").unwrap();
    assert_eq!(renameat2(&a, &b, libc::RENAME_NOREPLACE), Err(libc::EEXIST));
    assert_eq!(read(&a), b"aaa");
    assert_eq!(read(&b), b"bbb");
    renameat2(&a, &c2, libc::RENAME_NOREPLACE).unwrap();
    assert!(!a.exists());
    assert_eq!(read(&c2), b"aaa");
}

#[test]
fn rename_exchange_swaps_two_entries() {
    let mut m = Mounted::new();
    let (a, b) = (m.path("a"), m.path("dir"));
    fs::write(&a, b"file a").unwrap();
    fs::create_dir(&b).unwrap();
    fs::write(b.join("inner"), b"inner").unwrap();
    let (ia, ib) = (fs::metadata(&a).unwrap().ino(), fs::metadata(&b).unwrap().ino());
    renameat2(&a, &b, libc::RENAME_EXCHANGE).unwrap();
    assert!(m.path("a").is_dir());
    assert_eq!(read(&m.path("a/inner")), b"inner");
    assert_eq!(read(&m.path("dir")), b"file a");
    assert_eq!(fs::metadata(&a).unwrap().ino(), ib);
    assert_eq!(fs::metadata(&b).unwrap().ino(), ia);
    m.remount();
    assert_eq!(read(&m.path("a/inner")), b"inner");
    assert_eq!(read(&m.path("dir")), b"file a");
}

#[test]
fn mkdir_rmdir_and_their_errors() {
    let m = Mounted::new();
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    assert!(fs::metadata(&d).unwrap().is_dir());
    assert_eq!(err_of(fs::create_dir(&d)), libc::EEXIST);
    fs::create_dir(d.join("sub")).unwrap();
    fs::write(d.join("sub/f"), b"f").unwrap();
    assert_eq!(err_of(fs::remove_dir(&d)), libc::ENOTEMPTY);
    assert_eq!(err_of(fs::remove_dir(d.join("sub"))), libc::ENOTEMPTY);
    assert_eq!(err_of(fs::remove_dir(d.join("sub/f"))), libc::ENOTDIR);
    assert_eq!(err_of(fs::remove_file(d.join("sub"))), libc::EISDIR);
    assert_eq!(err_of(fs::create_dir(m.path("missing/x"))), libc::ENOENT);
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 3, "d has ., its entry and sub/..");
    fs::remove_file(d.join("sub/f")).unwrap();
    fs::remove_dir(d.join("sub")).unwrap();
    fs::remove_dir(&d).unwrap();
    assert_eq!(err_of(fs::metadata(&d)), libc::ENOENT);
    assert_eq!(err_of(fs::remove_dir(&d)), libc::ENOENT);
    // Mode and umask: mkdir honours the requested mode.
    fs::DirBuilder::new().mode(0o700).create(m.path("private")).unwrap();
    assert_eq!(fs::metadata(m.path("private")).unwrap().mode() & 0o777, 0o700);
}

#[test]
fn readdir_of_5000_entries_and_no_volume_file_at_the_root() {
    let m = Mounted::new();
    let big = m.path("big");
    fs::create_dir(&big).unwrap();
    let mut want = HashSet::new();
    for i in 0..5000 {
        let name = format!("entry-{i:05}-{}", "x".repeat(i % 40));
        if i % 5 == 0 {
            fs::create_dir(big.join(&name)).unwrap();
        } else {
            File::create(big.join(&name)).unwrap();
        }
        want.insert(name);
    }
    let mut seen = HashSet::new();
    for entry in fs::read_dir(&big).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(seen.insert(name.clone()), "{name} listed twice");
        if seen.len() % 500 == 0 {
            assert_eq!(entry.ino(), fs::symlink_metadata(entry.path()).unwrap().ino(), "d_ino of {name}");
            assert_eq!(entry.file_type().unwrap().is_dir(), name[6..11].parse::<u32>().unwrap() % 5 == 0);
        }
    }
    assert_eq!(seen.len(), 5000);
    assert_eq!(seen, want);

    fs::write(m.path("top.txt"), b"t").unwrap();
    let root: HashSet<String> = fs::read_dir(m.mnt())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(root, HashSet::from(["big".to_string(), "top.txt".to_string()]));
    assert_eq!(err_of(fs::metadata(m.path("kmsfs.volume"))), libc::ENOENT);
    let config = fs::read(m.cipher().join("kmsfs.volume")).unwrap();
    // With encrypted names, "kmsfs.volume" on the mount is an ordinary name: writing it
    // creates a user file and leaves the volume's own configuration untouched.
    fs::write(m.path("kmsfs.volume"), b"overwrite").unwrap();
    assert_eq!(fs::read(m.path("kmsfs.volume")).unwrap(), b"overwrite");
    assert_eq!(fs::read(m.cipher().join("kmsfs.volume")).unwrap(), config);
    fs::remove_file(m.path("kmsfs.volume")).unwrap();
    // Only the root's kmsfs.volume is special.
    fs::write(big.join("kmsfs.volume"), b"an ordinary file").unwrap();
    assert_eq!(read(&big.join("kmsfs.volume")), b"an ordinary file");
    assert_eq!(fs::read(m.cipher().join("kmsfs.volume")).unwrap(), config);
}

#[test]
fn symlinks_read_back_and_targets_are_encrypted_on_disk() {
    let mut m = Mounted::new();
    let target = "some/secret-target-name.txt";
    let link = m.path("link");
    std::os::unix::fs::symlink(target, &link).unwrap();
    assert_eq!(fs::read_link(&link).unwrap().as_os_str().as_bytes(), target.as_bytes());
    let meta = fs::symlink_metadata(&link).unwrap();
    assert!(meta.file_type().is_symlink());
    assert_eq!(meta.len(), target.len() as u64, "a symlink's size is its target's length");
    let backing = m.backing_of(&link);
    let stored = fs::read_link(&backing).unwrap();
    let stored = stored.as_os_str().as_bytes();
    assert!(fs::symlink_metadata(&backing).unwrap().file_type().is_symlink());
    for leak in ["secret", "target", "some/"] {
        assert!(!stored.windows(leak.len()).any(|w| w == leak.as_bytes()), "backing target {stored:?}");
    }
    // Following the link works.
    fs::create_dir(m.path("some")).unwrap();
    fs::write(m.path(target), b"behind the link").unwrap();
    assert_eq!(read(&link), b"behind the link");
    std::os::unix::fs::symlink("/an/absolute/path", m.path("abs")).unwrap();
    assert_eq!(fs::read_link(m.path("abs")).unwrap(), Path::new("/an/absolute/path"));
    assert_eq!(err_of(std::os::unix::fs::symlink("x", &link)), libc::EEXIST);
    let long = "d/".repeat(1000);
    std::os::unix::fs::symlink(&long, m.path("long")).unwrap();
    assert_eq!(fs::read_link(m.path("long")).unwrap(), Path::new(&long));
    m.remount();
    assert_eq!(fs::read_link(&link).unwrap(), Path::new(target));
    assert_eq!(read(&link), b"behind the link");
}

#[test]
fn hard_links_share_inode_and_content() {
    let mut m = Mounted::new();
    let (a, b) = (m.path("a"), m.path("sub/b"));
    fs::create_dir(m.path("sub")).unwrap();
    fs::write(&a, pattern(1, 5000)).unwrap();
    fs::hard_link(&a, &b).unwrap();
    let (ma, mb) = (fs::metadata(&a).unwrap(), fs::metadata(&b).unwrap());
    assert_eq!(ma.ino(), mb.ino());
    assert_eq!(ma.nlink(), 2);
    assert_eq!(mb.nlink(), 2);
    let f = OpenOptions::new().write(true).open(&b).unwrap();
    f.write_all_at(b"via b", 4094).unwrap();
    drop(f);
    let mut want = pattern(1, 5000);
    model_write(&mut want, 4094, b"via b");
    assert_eq!(read(&a), want);
    assert_eq!(err_of(fs::hard_link(&a, &b)), libc::EEXIST);
    fs::remove_file(&a).unwrap();
    assert_eq!(read(&b), want);
    assert_eq!(fs::metadata(&b).unwrap().nlink(), 1);
    fs::write(&b, b"rewritten").unwrap();
    assert_eq!(read(&b), b"rewritten");
    // Link again after a remount (the daemon knows the inode by its new name only).
    m.remount();
    fs::hard_link(&b, m.path("c")).unwrap();
    assert_eq!(read(&m.path("c")), b"rewritten");
    assert_eq!(fs::metadata(m.path("c")).unwrap().nlink(), 2);
}

#[test]
fn chmod_chown_and_utimensat() {
    let mut m = Mounted::new();
    let p = m.path("f");
    fs::write(&p, b"x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let meta = fs::metadata(&p).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o4755);

    let set_times = |path: &Path, flags: i32| {
        let times = [
            libc::timespec { tv_sec: 1_000_000_000, tv_nsec: 5 },
            libc::timespec { tv_sec: 1_234_567_890, tv_nsec: 123_456_789 },
        ];
        let cp = c(path);
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, cp.as_ptr(), times.as_ptr(), flags) };
        assert_eq!(rc, 0, "utimensat {}: {}", path.display(), last_errno());
    };
    let check = |meta: &fs::Metadata, what: &str| {
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_234_567_890, 123_456_789), "mtime of {what}");
        assert_eq!((meta.atime(), meta.atime_nsec()), (1_000_000_000, 5), "atime of {what}");
    };
    set_times(&p, 0);
    check(&fs::metadata(&p).unwrap(), "file");
    fs::create_dir(m.path("d")).unwrap();
    set_times(&m.path("d"), 0);
    check(&fs::metadata(m.path("d")).unwrap(), "dir");
    std::os::unix::fs::symlink("f", m.path("l")).unwrap();
    set_times(&m.path("l"), libc::AT_SYMLINK_NOFOLLOW);
    check(&fs::symlink_metadata(m.path("l")).unwrap(), "symlink");

    m.remount();
    check(&fs::metadata(&p).unwrap(), "file after remount");
    let meta = fs::metadata(&p).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (1234, 5678, 0o4755));
    // Only mtime, via futimens on an open file. Opening for writing reads nothing, so it
    // must not touch atime (as on any local filesystem).
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    // (The kernel may answer fstat from its attribute cache, so look at the backing file,
    // whose atime is what the mount reports.)
    let backing_atime = fs::metadata(m.backing_of(&p)).unwrap().atime();
    assert_eq!(backing_atime, 1_000_000_000, "open(O_WRONLY) on the mount changed atime");
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: 1_500_000_000, tv_nsec: 0 },
    ];
    assert_eq!(unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) }, 0, "{}", last_errno());
    let meta = f.metadata().unwrap();
    assert_eq!(meta.mtime(), 1_500_000_000);
    assert_eq!(meta.atime(), 1_000_000_000, "futimens with UTIME_OMIT changed atime");
}

#[test]
fn statfs_describes_the_backing_filesystem() {
    let m = Mounted::new();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let cp = c(m.mnt());
    assert_eq!(unsafe { libc::statvfs(cp.as_ptr(), &mut st) }, 0, "statvfs: {}", last_errno());
    let mut backing: libc::statvfs = unsafe { std::mem::zeroed() };
    let cb = c(m.cipher());
    assert_eq!(unsafe { libc::statvfs(cb.as_ptr(), &mut backing) }, 0);
    assert!(st.f_bsize > 0 && st.f_blocks > 0 && st.f_files > 0);
    assert_eq!(st.f_namemax, 255);
    assert_eq!(st.f_blocks * st.f_frsize, backing.f_blocks * backing.f_frsize);
    assert!(st.f_bavail <= st.f_bfree && st.f_bfree <= st.f_blocks);
}

#[test]
fn fsync_and_fdatasync_succeed() {
    let mut m = Mounted::new();
    let p = m.path("f");
    let mut f = rw(&p);
    f.write_all(&pattern(1, 9000)).unwrap();
    f.sync_all().unwrap();
    f.write_all(b"more").unwrap();
    f.sync_data().unwrap();
    assert_eq!(unsafe { libc::fdatasync(f.as_raw_fd()) }, 0);
    let d = File::open(m.mnt()).unwrap();
    d.sync_all().unwrap();
    drop((f, d));
    assert_eq!(read(&p).len(), 9004);
    // The data reached the backing file: a cold mount reads it.
    m.remount();
    assert_eq!(&read(&p)[9000..], b"more");
}

fn setxattr(path: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let (p, n) = (c(path), CString::new(name).unwrap());
    let rc = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

fn getxattr(path: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let (p, n) = (c(path), CString::new(name).unwrap());
    let size = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(last_errno());
    }
    let mut buf = vec![0u8; size as usize];
    let got = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if got < 0 {
        return Err(last_errno());
    }
    buf.truncate(got as usize);
    Ok(buf)
}

fn listxattr(path: &Path, follow: bool) -> Vec<String> {
    let p = c(path);
    let list = |buf: *mut libc::c_char, len| unsafe {
        if follow {
            libc::listxattr(p.as_ptr(), buf, len)
        } else {
            libc::llistxattr(p.as_ptr(), buf, len)
        }
    };
    let size = list(std::ptr::null_mut(), 0);
    assert!(size >= 0, "listxattr: {}", last_errno());
    let mut buf = vec![0u8; size as usize];
    let got = list(buf.as_mut_ptr().cast(), buf.len());
    assert!(got >= 0, "listxattr: {}", last_errno());
    buf.truncate(got as usize);
    buf.split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

fn lgetxattr(path: &Path, name: &str) -> Vec<u8> {
    let (p, n) = (c(path), CString::new(name).unwrap());
    let mut buf = vec![0u8; 65536];
    let got = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(got >= 0, "lgetxattr {name}: {}", last_errno());
    buf.truncate(got as usize);
    buf
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn user_xattrs_round_trip_and_are_encrypted_on_disk() {
    let mut m = Mounted::new();
    let p = m.path("f");
    fs::write(&p, b"content").unwrap();
    let value = b"top secret value XYZ".to_vec();
    setxattr(&p, "user.comment", &value, 0).unwrap();
    setxattr(&p, "user.other", b"", 0).unwrap();
    let big = pattern(9, 3000);
    setxattr(&p, "user.big", &big, 0).unwrap();
    assert_eq!(getxattr(&p, "user.comment").unwrap(), value);
    assert_eq!(getxattr(&p, "user.other").unwrap(), b"");
    assert_eq!(getxattr(&p, "user.big").unwrap(), big);
    let mut names = listxattr(&p, true);
    names.sort();
    assert_eq!(names, ["user.big", "user.comment", "user.other"]);
    assert_eq!(setxattr(&p, "user.comment", b"x", libc::XATTR_CREATE), Err(libc::EEXIST));
    assert_eq!(setxattr(&p, "user.absent", b"x", libc::XATTR_REPLACE), Err(libc::ENODATA));
    assert_eq!(getxattr(&p, "user.absent"), Err(libc::ENODATA));
    assert!(setxattr(&p, "user.kmsfs.key", b"forged", 0).is_err(), "kmsfs's own names are read-only");

    // On disk, neither names nor values appear in the clear.
    let backing = m.backing_of(&p);
    let backing_names = listxattr(&backing, false);
    assert!(backing_names.len() >= 3, "{backing_names:?}");
    for name in &backing_names {
        for leak in ["comment", "other", "big"] {
            assert!(!name.contains(leak), "backing xattr name {name}");
        }
        let stored = lgetxattr(&backing, name);
        assert!(!contains(&stored, b"secret value"), "backing xattr value leaks");
        assert!(!contains(&stored, &big[..64]), "backing xattr value leaks");
    }

    // Directories take xattrs too; they survive a remount.
    fs::create_dir(m.path("d")).unwrap();
    setxattr(&m.path("d"), "user.dir", b"on a dir", 0).unwrap();
    m.remount();
    assert_eq!(getxattr(&p, "user.comment").unwrap(), value);
    assert_eq!(getxattr(&m.path("d"), "user.dir").unwrap(), b"on a dir");

    let pc = c(&p);
    let n = CString::new("user.comment").unwrap();
    assert_eq!(unsafe { libc::removexattr(pc.as_ptr(), n.as_ptr()) }, 0, "{}", last_errno());
    assert_eq!(getxattr(&p, "user.comment"), Err(libc::ENODATA));
    assert_eq!(unsafe { libc::removexattr(pc.as_ptr(), n.as_ptr()) }, -1);
    assert_eq!(last_errno(), libc::ENODATA);
    let mut names = listxattr(&p, true);
    names.sort();
    assert_eq!(names, ["user.big", "user.other"]);
    // Too small a buffer is ERANGE.
    let mut small = [0u8; 4];
    let bn = CString::new("user.big").unwrap();
    let rc = unsafe { libc::getxattr(pc.as_ptr(), bn.as_ptr(), small.as_mut_ptr().cast(), small.len()) };
    assert_eq!((rc, last_errno()), (-1, libc::ERANGE));
}

#[test]
fn key_xattr_and_file_info_name_the_volume_key() {
    let m = Mounted::new();
    let p = m.path("doc.txt");
    fs::write(&p, b"hello").unwrap();
    assert_eq!(getxattr(&p, "user.kmsfs.key").unwrap(), m.key_id.as_bytes());
    assert_eq!(getxattr(&p, "user.kmsfs.key_version").unwrap(), b"1");
    let info = m.json(&["file", "info", p.to_str().unwrap()]);
    assert_eq!(info["KeyId"], m.key_id.as_str(), "{info}");
    assert_eq!(info["KeyVersion"], 1, "{info}");
    let human = m.ok(&["file", "info", p.to_str().unwrap()]);
    assert!(human.contains(&m.key_id), "{human}");

    // After a rotation, new files are under the new version; old ones still read.
    m.ok(&["key", "rotate", "alias/vol"]);
    let q = m.path("new.txt");
    fs::write(&q, b"after rotation").unwrap();
    assert_eq!(getxattr(&q, "user.kmsfs.key_version").unwrap(), b"2");
    assert_eq!(m.json(&["file", "info", q.to_str().unwrap()])["KeyVersion"], 2);
    assert_eq!(read(&p), b"hello");

    // Not a regular file on a volume: a clear error.
    let out = m.kmsfs(&["file", "info", m.mnt().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"), "{out:?}");
}

#[test]
fn fallocate_extends_and_keeps_content() {
    let m = Mounted::new();
    let p = m.path("f");
    let f = rw(&p);
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 10_000) }, 0, "{}", last_errno());
    assert_eq!(f.metadata().unwrap().len(), 10_000);
    assert_eq!(pread(&f, 0, 20_000), vec![0u8; 10_000]);
    let data = pattern(3, 5000);
    f.write_all_at(&data, 0).unwrap();
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 1000, 3000) }, 0);
    assert_eq!(f.metadata().unwrap().len(), 10_000, "inside the file: no change");
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 9000, 11_000) }, 0);
    assert_eq!(f.metadata().unwrap().len(), 20_000);
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 50_000) };
    assert_eq!(rc, 0, "{}", last_errno());
    assert_eq!(f.metadata().unwrap().len(), 20_000);
    drop(f);
    let mut want = data;
    want.resize(20_000, 0);
    assert_eq!(read(&p), want);
}

#[test]
fn shared_writable_mmap_reaches_the_file() {
    let mut m = Mounted::new();
    let p = m.path("mapped");
    let len = 3 * 4096 + 100;
    let mut want = pattern(5, len);
    fs::write(&p, &want).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED, "mmap: {}", last_errno());
        let map = std::slice::from_raw_parts_mut(addr.cast::<u8>(), len);
        assert_eq!(map[..], want[..], "the mapping shows the file");
        for (off, bytes) in [(10usize, &b"mapped write"[..]), (5000, b"second block"), (len - 5, b"tail!")] {
            map[off..off + bytes.len()].copy_from_slice(bytes);
            model_write(&mut want, off, bytes);
        }
        assert_eq!(libc::msync(addr, len, libc::MS_SYNC), 0, "msync: {}", last_errno());
        assert_eq!(libc::munmap(addr, len), 0);
    }
    drop(f);
    assert_eq!(read(&p), want);
    m.remount();
    assert_eq!(read(&p), want, "mmap writes reached the backing file");
}

#[test]
fn threads_write_distinct_files_concurrently() {
    let mut m = Mounted::new();
    let dir = m.path("par");
    fs::create_dir(&dir).unwrap();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let path = dir.join(format!("file{t}"));
            s.spawn(move || {
                let data = pattern(t + 10, 256 * 1024 + t as usize * 1000);
                let mut f = File::create(&path).unwrap();
                for chunk in data.chunks(7777) {
                    f.write_all(chunk).unwrap();
                }
                f.sync_all().unwrap();
            });
        }
    });
    m.remount();
    for t in 0..8u64 {
        assert_eq!(read(&dir.join(format!("file{t}"))), pattern(t + 10, 256 * 1024 + t as usize * 1000));
    }
}

#[test]
fn threads_write_disjoint_regions_of_one_file() {
    let mut m = Mounted::new();
    let p = m.path("shared.bin");
    File::create(&p).unwrap();
    // Stripes of 1000 bytes: neighbouring stripes share 4096-byte blocks, so each write is
    // a read-modify-write of a block the other thread also writes.
    const STRIPE: usize = 1000;
    const STRIPES: usize = 600;
    let stripe = |i: usize| pattern(i as u64 + 77, STRIPE);
    std::thread::scope(|s| {
        for t in 0..2usize {
            let p = p.clone();
            s.spawn(move || {
                let f = OpenOptions::new().write(true).open(&p).unwrap();
                // Thread 1 goes backwards so the file grows from both ends.
                let order: Vec<usize> = if t == 0 {
                    (0..STRIPES).filter(|i| i % 2 == 0).collect()
                } else {
                    (0..STRIPES).filter(|i| i % 2 == 1).rev().collect()
                };
                for i in order {
                    f.write_all_at(&stripe(i), (i * STRIPE) as u64).unwrap();
                }
            });
        }
    });
    let want: Vec<u8> = (0..STRIPES).flat_map(stripe).collect();
    assert_eq!(read(&p), want);
    m.remount();
    assert_eq!(read(&p), want);
}

#[test]
fn inode_numbers_are_stable() {
    let mut m = Mounted::new();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"x").unwrap();
    let ino = fs::metadata(m.path("d/f")).unwrap().ino();
    let dino = fs::metadata(m.path("d")).unwrap().ino();
    assert_eq!(fs::metadata(m.path("d/f")).unwrap().ino(), ino);
    assert_eq!(fs::metadata(m.mnt()).unwrap().ino(), 1, "the root is FUSE's inode 1");
    let listed: Vec<u64> = fs::read_dir(m.path("d")).unwrap().map(|e| e.unwrap().ino()).collect();
    assert_eq!(listed, [ino]);
    fs::rename(m.path("d/f"), m.path("g")).unwrap();
    assert_eq!(fs::metadata(m.path("g")).unwrap().ino(), ino);
    fs::hard_link(m.path("g"), m.path("d/h")).unwrap();
    assert_eq!(fs::metadata(m.path("d/h")).unwrap().ino(), ino);
    m.remount();
    assert_eq!(fs::metadata(m.path("g")).unwrap().ino(), ino);
    assert_eq!(fs::metadata(m.path("d")).unwrap().ino(), dino);
    let all: Vec<u64> = fs::read_dir(m.mnt()).unwrap().map(|e| e.unwrap().ino()).collect();
    assert!(all.contains(&ino) && all.contains(&dino));
}

#[test]
fn cipher_dir_never_contains_the_plaintext() {
    let m = Mounted::new();
    let marker: &[u8; 64] = b"<<KMSFS-PLAINTEXT-MARKER-0123456789-abcdefghijklmnopqrstuvwxyz>>";
    let mut big = Vec::new();
    for _ in 0..16 * 1024 {
        big.extend_from_slice(marker);
    }
    fs::write(m.path("big.bin"), &big).unwrap();
    let mut small = b"prefix ".to_vec();
    small.extend_from_slice(marker);
    fs::write(m.path("small.txt"), &small).unwrap();
    // Overwrites and appends at unaligned offsets.
    let f = rw(&m.path("patched.bin"));
    f.write_all_at(&pattern(1, 10_000), 0).unwrap();
    f.write_all_at(marker, 4070).unwrap();
    f.write_all_at(marker, 20_000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    setxattr(&m.path("small.txt"), "user.note", marker, 0).unwrap();
    std::os::unix::fs::symlink(std::str::from_utf8(marker).unwrap(), m.path("link")).unwrap();
    assert_eq!(read(&m.path("big.bin")), big);

    let half = &marker[16..48];
    let data_files: Vec<_> =
        ["big.bin", "small.txt", "patched.bin"].iter().map(|n| m.backing_of(&m.path(n))).collect();
    let mut checked = Vec::new();
    walk(m.cipher(), &mut |path, meta| {
        let leaks = |bytes: &[u8]| contains(bytes, marker) || contains(bytes, half);
        if meta.is_file() {
            assert!(!leaks(&fs::read(path).unwrap()), "{} contains the plaintext", path.display());
            checked.push(path.to_path_buf());
        }
        if meta.file_type().is_symlink() {
            assert!(!leaks(fs::read_link(path).unwrap().as_os_str().as_bytes()), "{}", path.display());
        }
        if !meta.file_type().is_symlink() {
            for name in listxattr(path, false) {
                assert!(!leaks(&lgetxattr(path, &name)), "xattr {name} of {}", path.display());
            }
        }
    });
    for f in &data_files {
        assert!(checked.contains(f), "{} was not checked", f.display());
    }
}

#[test]
fn writes_and_truncates_update_mtime_and_ctime() {
    let m = Mounted::new();
    let p = m.path("f");
    fs::write(&p, b"old").unwrap();
    let old = [libc::timespec { tv_sec: 1_000_000_000, tv_nsec: 0 }; 2];
    let cp = c(&p);
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, cp.as_ptr(), old.as_ptr(), 0) }, 0);
    let ctime_before = fs::metadata(&p).unwrap().ctime();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"new", 0).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let meta = fs::metadata(&p).unwrap();
    assert!(meta.mtime() >= now - 5, "a write updates mtime: {}", meta.mtime());
    assert!(meta.ctime() >= ctime_before);
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, cp.as_ptr(), old.as_ptr(), 0) }, 0);
    f.set_len(1).unwrap();
    assert!(fs::metadata(&p).unwrap().mtime() >= now - 5, "a truncate updates mtime");
    drop(f);
    // Creating an entry updates the directory's mtime.
    fs::create_dir(m.path("d")).unwrap();
    let dc = c(&m.path("d"));
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, dc.as_ptr(), old.as_ptr(), 0) }, 0);
    fs::write(m.path("d/x"), b"x").unwrap();
    assert!(fs::metadata(m.path("d")).unwrap().mtime() >= now - 5);
}

#[test]
fn copies_into_within_and_out_of_the_mount() {
    let m = Mounted::new();
    let plain = tempfile::tempdir().unwrap();
    let data = pattern(11, 3 * 1024 * 1024 + 123);
    fs::write(plain.path().join("src"), &data).unwrap();
    // std::fs::copy uses copy_file_range where it can, falling back to read/write.
    fs::copy(plain.path().join("src"), m.path("in")).unwrap();
    fs::copy(m.path("in"), m.path("within")).unwrap();
    fs::copy(m.path("within"), plain.path().join("out")).unwrap();
    assert_eq!(read(&m.path("in")), data);
    assert_eq!(read(&m.path("within")), data);
    assert_eq!(read(&plain.path().join("out")), data);
    // copy_file_range(2) itself, at unaligned offsets.
    let (src, dst) = (File::open(m.path("in")).unwrap(), rw(&m.path("range")));
    let (mut off_in, mut off_out): (i64, i64) = (1000, 7);
    let n = unsafe {
        libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), &mut off_out, 100_000, 0)
    };
    assert!(n > 0, "copy_file_range: {}", last_errno());
    drop(dst);
    let got = read(&m.path("range"));
    assert_eq!(got.len(), 7 + n as usize);
    assert_eq!(got[..7], [0u8; 7]);
    assert_eq!(got[7..], data[1000..1000 + n as usize]);
}

#[test]
fn mknod_makes_regular_files_and_fifos() {
    let m = Mounted::new();
    let p = m.path("node");
    let cp = c(&p);
    assert_eq!(unsafe { libc::mknod(cp.as_ptr(), libc::S_IFREG | 0o644, 0) }, 0, "{}", last_errno());
    assert!(fs::metadata(&p).unwrap().is_file());
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
    fs::write(&p, b"via mknod").unwrap();
    assert_eq!(read(&p), b"via mknod");
    assert_eq!(getxattr(&p, "user.kmsfs.key").unwrap(), m.key_id.as_bytes());
    let fifo = c(&m.path("fifo"));
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "{}", last_errno());
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(m.path("fifo")).unwrap().file_type().is_fifo());
    assert_eq!(unsafe { libc::mknod(cp.as_ptr(), libc::S_IFREG | 0o644, 0) }, -1);
    assert_eq!(last_errno(), libc::EEXIST);
}

#[test]
fn setgid_directories_pass_their_group_on() {
    let m = Mounted::new();
    let d = m.path("shared");
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, None, Some(1234)).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(d.join("file"), b"x").unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    std::os::unix::fs::symlink("file", d.join("link")).unwrap();
    // As on any Linux filesystem: new entries take the directory's group, and new
    // directories inherit the set-group-ID bit.
    assert_eq!(fs::metadata(d.join("file")).unwrap().gid(), 1234, "group of a file in a setgid dir");
    let sub = fs::metadata(d.join("sub")).unwrap();
    assert_eq!(sub.gid(), 1234, "group of a directory in a setgid dir");
    assert_ne!(sub.mode() & 0o2000, 0, "a directory in a setgid dir is setgid");
    assert_eq!(fs::symlink_metadata(d.join("link")).unwrap().gid(), 1234, "group of a symlink");
}

#[test]
fn read_only_mount_serves_reads_and_refuses_writes() {
    let mut m = Mounted::new();
    fs::write(m.path("f"), b"written before").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    m.unmount();
    // The same volume, mounted again with -o ro.
    let mut m = Mounted::remount_with(m, &["ro"]);
    assert_eq!(read(&m.path("f")), b"written before");
    assert_eq!(err_of(OpenOptions::new().write(true).open(m.path("f"))), libc::EROFS);
    assert_eq!(err_of(File::create(m.path("new"))), libc::EROFS);
    assert_eq!(err_of(fs::create_dir(m.path("d2"))), libc::EROFS);
    assert_eq!(err_of(fs::remove_file(m.path("f"))), libc::EROFS);
    assert_eq!(err_of(fs::rename(m.path("f"), m.path("g"))), libc::EROFS);
    assert_eq!(setxattr(&m.path("f"), "user.x", b"y", 0), Err(libc::EROFS));
    assert_eq!(getxattr(&m.path("f"), "user.kmsfs.key").unwrap(), m.key_id.as_bytes());
    m.remount();
    assert_eq!(read(&m.path("f")), b"written before");
}

#[test]
fn metadata_changes_on_an_unlinked_open_file() {
    let m = Mounted::new();
    let p = m.path("gone");
    let f = rw(&p);
    f.write_all_at(b"data", 0).unwrap();
    fs::remove_file(&p).unwrap();
    // Every f*() call works on an open file whatever happened to its name, as on any local
    // filesystem.
    f.set_permissions(fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::fchown(&f, Some(4321), Some(8765)).expect("fchown on an unlinked open file");
    let meta = f.metadata().unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (4321, 8765, 0o640));
    let times = [
        libc::timespec { tv_sec: 1_100_000_000, tv_nsec: 0 },
        libc::timespec { tv_sec: 1_200_000_000, tv_nsec: 0 },
    ];
    let rc = unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) };
    assert_eq!(rc, 0, "futimens on an unlinked open file: errno {}", last_errno());
    assert_eq!(f.metadata().unwrap().mtime(), 1_200_000_000);
    let (name, value) = (CString::new("user.note").unwrap(), b"still here");
    let rc = unsafe { libc::fsetxattr(f.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "fsetxattr on an unlinked open file: errno {}", last_errno());
    let mut buf = [0u8; 64];
    let n = unsafe { libc::fgetxattr(f.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(n, value.len() as isize, "fgetxattr: errno {}", last_errno());
    assert_eq!(&buf[..value.len()], value);
    assert_eq!(pread(&f, 0, 10), b"data");
}

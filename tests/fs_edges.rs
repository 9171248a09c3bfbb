//! Edges of the filesystem that a broad POSIX test suite finds, each checked against what
//! ext4 does (where the machine allows, against a plain directory beside the mount).

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::mount::{is_mounted, wait_until, MountGuard, Mounted};
use common::users::{as_user, share_with_everyone, NOBODY};

/// `kmsfs mount CIPHER MNT` in the background with the fixture's keystore.
fn mount_again(m: &Mounted, mnt: &Path) -> std::process::Output {
    m.env.cmd(&["mount", m.cipher().to_str().unwrap(), mnt.to_str().unwrap()]).output().unwrap()
}

/// A second mount of a mounted volume would not see the first one's changes (a rename
/// through one stays unseen through the other): it is refused with a message naming the
/// mount there. The lock is the kernel's: a daemon killed with SIGKILL leaves none behind.
#[test]
fn a_second_mount_of_a_mounted_volume_is_refused_and_a_crash_leaves_no_lock() {
    let mut m = Mounted::new();
    let second = m.env.path("second");
    fs::create_dir(&second).unwrap();
    let _guard = MountGuard::new(&second);

    let out = mount_again(&m, &second);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "second mount: {stderr}");
    assert!(stderr.contains("already mounted at") && stderr.contains(m.mnt().to_str().unwrap()), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", m.pid())), "names the daemon: {stderr}");
    assert!(!is_mounted(&second));
    fs::write(m.path("still.txt"), b"the first mount serves on").unwrap();

    m.kill_daemon();
    m.restart_after_crash();
    assert_eq!(fs::read(m.path("still.txt")).unwrap(), b"the first mount serves on");

    m.unmount();
    let out = mount_again(&m, &second);
    assert!(out.status.success(), "mount after unmount: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(second.join("still.txt")).unwrap(), b"the first mount serves on");
    assert!(Command::new("fusermount3").arg("-u").arg(&second).status().unwrap().success());
    assert!(wait_until(std::time::Duration::from_secs(3), || !is_mounted(&second)));
}

/// The entries of `dir`: name, whether a character device, its device number.
fn listing(dir: &Path) -> Vec<(String, bool, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), meta.file_type().is_char_device(), meta.rdev())
        })
        .collect();
    out.sort();
    out
}

/// renameat2(RENAME_WHITEOUT) (what overlayfs does on its upper layer) leaves a whiteout, a
/// 0:0 character device, under the old name. With a name long enough to be stored hashed,
/// the whiteout lost its name's sidecar: it vanished from listings and its directory could
/// never be removed ("Directory not empty"). Compared with the same steps on ext4.
#[test]
fn a_whiteout_under_a_long_name_is_listed_and_removable() {
    let m = Mounted::new();
    let plain = m.env.path("plain");
    let long = "w".repeat(200);
    let mut seen = Vec::new();
    for top in [plain.as_path(), m.mnt()] {
        let dir = top.join("upper");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(&long), b"x").unwrap();
        fs::write(dir.join("short"), b"y").unwrap();
        for (from, to) in [(long.as_str(), "moved-long"), ("short", "moved-short")] {
            let (f, t) = (cstr(&dir.join(from)), cstr(&dir.join(to)));
            // SAFETY: NUL-terminated paths.
            let rc = unsafe {
                libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_WHITEOUT)
            };
            assert_eq!(rc, 0, "{}: {}", dir.display(), std::io::Error::last_os_error());
        }
        seen.push(listing(&dir));
        fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("rm -rf {}: {e}", dir.display()));
    }
    assert_eq!(seen[1], seen[0], "kmsfs lists what ext4 lists");
    assert!(seen[1].contains(&(long, true, 0)), "{:?}", seen[1]);
}

fn cstr(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// The errno of a libc call's result (0 for success).
fn errno_of(rc: i64) -> i32 {
    if rc < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    } else {
        0
    }
}

/// Writes, truncates and copies past the largest file size answer EFBIG, as on ext4 (kmsfs
/// answered EINVAL: the cipher offset overflowed a file offset). Checked against ext4.
#[test]
fn copy_file_range_write_and_truncate_past_the_largest_file_size_answer_efbig() {
    use std::os::fd::AsRawFd;
    let m = Mounted::new();
    let plain = m.env.path("plain");
    fs::create_dir(&plain).unwrap();
    for top in [plain.as_path(), m.mnt()] {
        fs::write(top.join("src"), vec![7u8; 65536]).unwrap();
        let src = fs::File::open(top.join("src")).unwrap();
        let dst =
            fs::OpenOptions::new().create(true).truncate(true).write(true).open(top.join("dst")).unwrap();
        // As xfstests' copy_range test does: 8 EiB less 64 KiB and a bit.
        let mut off_out: i64 = i64::MAX - 65536 - 1;
        // SAFETY: valid descriptors, a valid offset out-parameter.
        let rc = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                std::ptr::null_mut(),
                dst.as_raw_fd(),
                &mut off_out,
                65536,
                0,
            )
        };
        assert_eq!(errno_of(rc as i64), libc::EFBIG, "copy_file_range in {}", top.display());
        let buf = [1u8; 4096];
        // SAFETY: a valid descriptor and buffer.
        let rc = unsafe { libc::pwrite(dst.as_raw_fd(), buf.as_ptr().cast(), buf.len(), i64::MAX - 8192) };
        assert_eq!(errno_of(rc as i64), libc::EFBIG, "pwrite in {}", top.display());
        // SAFETY: a valid descriptor.
        let rc = unsafe { libc::ftruncate(dst.as_raw_fd(), i64::MAX - 4096) };
        assert_eq!(errno_of(rc as i64), libc::EFBIG, "ftruncate in {}", top.display());
        assert_eq!(fs::metadata(top.join("dst")).unwrap().len(), 0, "nothing allocated in {}", top.display());
    }
}

/// Every name a directory stream yields from where it stands (libc readdir).
fn read_stream(dir: *mut libc::DIR) -> Vec<String> {
    let mut names = Vec::new();
    loop {
        // SAFETY: `dir` is an open stream.
        let entry = unsafe { libc::readdir(dir) };
        if entry.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid entry with a NUL-terminated name.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
        names.push(name.to_string_lossy().into_owned());
    }
    names.sort();
    names
}

/// After rewinddir the stream shows the directory as it is now: entries created since
/// opendir appear, removed ones are gone (kmsfs served the listing taken at opendir).
/// Checked against ext4.
#[test]
fn rewinddir_shows_entries_created_and_removed_since_opendir() {
    let m = Mounted::new();
    let plain = m.env.path("plain");
    let mut seen = Vec::new();
    for top in [plain.as_path(), m.mnt()] {
        let dir = top.join("d");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("old"), b"").unwrap();
        fs::write(dir.join("doomed"), b"").unwrap();
        let c = cstr(&dir);
        // SAFETY: a NUL-terminated path; the stream is closed below.
        let stream = unsafe { libc::opendir(c.as_ptr()) };
        assert!(!stream.is_null());
        let first = read_stream(stream);
        fs::write(dir.join("new"), b"").unwrap();
        fs::remove_file(dir.join("doomed")).unwrap();
        // SAFETY: an open stream.
        unsafe { libc::rewinddir(stream) };
        let second = read_stream(stream);
        // SAFETY: an open stream, closed once.
        unsafe { libc::closedir(stream) };
        seen.push((first, second));
    }
    assert_eq!(seen[1], seen[0], "kmsfs's stream is ext4's");
    assert_eq!(seen[1].1, [".", "..", "new", "old"]);
}

/// fstat of a directory removed while open — replaced by a rename, or rmdir'ed — answers
/// (with no link left), as on ext4; kmsfs answered ENOENT.
#[test]
fn fstat_of_an_open_directory_that_was_replaced_or_removed_answers_nlink_0() {
    use std::os::unix::fs::MetadataExt;
    let m = Mounted::new();
    let plain = m.env.path("plain");
    for top in [plain.as_path(), m.mnt()] {
        fs::create_dir_all(top.join("victim")).unwrap();
        fs::create_dir(top.join("moved")).unwrap();
        fs::create_dir(top.join("removed")).unwrap();
        let victim = fs::File::open(top.join("victim")).unwrap();
        let removed = fs::File::open(top.join("removed")).unwrap();
        fs::rename(top.join("moved"), top.join("victim")).unwrap();
        fs::remove_dir(top.join("removed")).unwrap();
        for (what, f) in [("replaced by a rename", &victim), ("removed", &removed)] {
            let meta = f
                .metadata()
                .unwrap_or_else(|e| panic!("fstat of a directory {what} in {}: {e}", top.display()));
            assert!(meta.is_dir(), "{what}");
            assert_eq!(meta.nlink(), 0, "directory {what} in {}", top.display());
        }
        assert!(fs::metadata(top.join("victim")).unwrap().is_dir(), "the new one is in its place");
    }
}

/// A file handle (name_to_handle_at): room for any handle, aligned for `struct file_handle`.
struct FileHandle {
    buf: [u32; 34],
}

impl FileHandle {
    fn of(path: &Path) -> std::io::Result<FileHandle> {
        let mut h = FileHandle { buf: [0; 34] };
        h.buf[0] = 128; // handle_bytes: the room after the two header fields
        let mut mount_id = 0;
        let c = cstr(path);
        // SAFETY: a NUL-terminated path, a buffer of 8 + 128 bytes that says so.
        let rc = unsafe {
            libc::name_to_handle_at(libc::AT_FDCWD, c.as_ptr(), h.buf.as_mut_ptr().cast(), &mut mount_id, 0)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(h)
    }

    /// open_by_handle_at through `mount` (any descriptor on the file system).
    fn open(&mut self, mount: &fs::File, flags: i32) -> std::io::Result<fs::File> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: a valid descriptor and the handle name_to_handle_at filled.
        let fd = unsafe { libc::open_by_handle_at(mount.as_raw_fd(), self.buf.as_mut_ptr().cast(), flags) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor we own.
        Ok(unsafe { fs::File::from_raw_fd(fd) })
    }
}

/// Evicts unused dentries and inodes, so that the kernel forgets them (and sends FORGET):
/// a handle must then be resolved by the filesystem itself.
fn drop_dentries() {
    fs::write("/proc/sys/vm/drop_caches", "2").expect("drop caches (tests run as root)");
}

/// What a handle opens: the file's bytes, or the directory's names.
fn read_through(f: &mut fs::File) -> Vec<String> {
    use std::io::Read;
    if f.metadata().unwrap().is_dir() {
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(f));
        let mut names: Vec<_> =
            fs::read_dir(path).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    } else {
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        vec![s]
    }
}

/// name_to_handle_at / open_by_handle_at (what an NFS server does with a kmsfs volume):
/// handles of a file and of directories open the same objects after the kernel has
/// forgotten them and after a remount, and a handle of a removed file answers ESTALE, as on
/// ext4 (kmsfs answered ESTALE or EOPNOTSUPP for every handle).
#[test]
fn file_handles_open_their_objects_after_eviction_and_across_a_remount() {
    let mut m = Mounted::new();
    let plain = m.env.path("plain");
    fs::create_dir(&plain).unwrap();
    let long = "l".repeat(200);
    let mut results = Vec::new();
    for on_kmsfs in [false, true] {
        let top = if on_kmsfs { m.mnt().to_path_buf() } else { plain.clone() };
        fs::create_dir_all(top.join("a/b")).unwrap();
        fs::write(top.join("a/b").join(&long), b"deep file").unwrap();
        fs::write(top.join("top.txt"), b"top file").unwrap();
        fs::write(top.join("gone.txt"), b"removed").unwrap();
        let mut handles: Vec<(String, FileHandle)> = ["a/b", &format!("a/b/{long}"), "top.txt", "a"]
            .iter()
            .map(|rel| {
                (
                    rel.to_string(),
                    FileHandle::of(&top.join(rel)).unwrap_or_else(|e| panic!("handle of {rel}: {e}")),
                )
            })
            .collect();
        let mut gone = FileHandle::of(&top.join("gone.txt")).unwrap();
        fs::remove_file(top.join("gone.txt")).unwrap();
        let rounds = if on_kmsfs { 3 } else { 2 };
        for round in 0..rounds {
            match round {
                0 => {}
                1 => drop_dentries(),
                _ => m.remount(),
            }
            let mount_fd = fs::File::open(&top).unwrap();
            let mut seen = Vec::new();
            for (rel, h) in handles.iter_mut() {
                let flags = libc::O_RDONLY;
                let mut f = h.open(&mount_fd, flags).unwrap_or_else(|e| {
                    panic!("round {round}: open {rel} by handle in {}: {e}", top.display())
                });
                seen.push((rel.clone(), read_through(&mut f)));
            }
            let err = gone.open(&mount_fd, libc::O_RDONLY).expect_err("a removed file's handle");
            assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "round {round} in {}: {err}", top.display());
            results.push(seen);
        }
    }
    for r in &results[1..] {
        assert_eq!(r, &results[0]);
    }
    assert_eq!(results[0][2].1, ["top file"]);
}

/// How a non-owner changes a file in `set_id_clearing`.
const MODIFICATIONS: [&str; 5] = ["write", "O_DIRECT write", "fallocate", "ftruncate", "copy_file_range"];

/// Has nobody change `path` (root's, mode 06777) by `how`; returns the mode afterwards.
fn modify_as_nobody(path: &Path, src: &Path, how: &str) -> u32 {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    fs::write(path, vec![1u8; 8192]).unwrap();
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o6777)).unwrap();
    as_user(NOBODY.0, NOBODY.1, 0o022, || {
        let direct = if how == "O_DIRECT write" { libc::O_DIRECT } else { 0 };
        let f = fs::OpenOptions::new().write(true).custom_flags(direct).open(path).unwrap();
        let fd = f.as_raw_fd();
        // SAFETY: plain calls on a descriptor this closure owns; the buffer is 4 KiB aligned.
        let rc = unsafe {
            match how {
                "write" => libc::pwrite(fd, [2u8; 16].as_ptr().cast(), 16, 0) as i32,
                "O_DIRECT write" => {
                    let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
                    let buf = std::alloc::alloc_zeroed(layout);
                    let rc = libc::pwrite(fd, buf.cast(), 4096, 0) as i32;
                    std::alloc::dealloc(buf, layout);
                    rc
                }
                "fallocate" => libc::fallocate(fd, 0, 0, 65536),
                "ftruncate" => libc::ftruncate(fd, 100),
                _ => {
                    let s = fs::File::open(src).unwrap();
                    let rc = libc::copy_file_range(
                        s.as_raw_fd(),
                        std::ptr::null_mut(),
                        fd,
                        std::ptr::null_mut(),
                        100,
                        0,
                    );
                    rc as i32
                }
            }
        };
        assert!(rc >= 0, "{how} by nobody on {}: {}", path.display(), std::io::Error::last_os_error());
    });
    fs::metadata(path).unwrap().mode() & 0o7777
}

/// Every way a non-owner without CAP_FSETID modifies a file clears its set-user-ID and
/// set-group-ID bits, as ext4 does: write, O_DIRECT write, fallocate, truncate, and being the
/// target of copy_file_range (O_DIRECT writes and fallocate left them in place).
#[test]
fn set_id_bits_go_on_every_modification_by_a_non_owner() {
    let m = Mounted::with_options(&["allow_other", "suid"]);
    share_with_everyone(&m);
    let plain = m.env.path("plain");
    fs::create_dir(&plain).unwrap();
    for top in [plain.as_path(), m.mnt()] {
        fs::set_permissions(top, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        fs::write(top.join("src"), vec![3u8; 4096]).unwrap();
    }
    for how in MODIFICATIONS {
        let on_ext4 = modify_as_nobody(&plain.join(how.replace(' ', "_")), &plain.join("src"), how);
        let on_kmsfs = modify_as_nobody(&m.path(&how.replace(' ', "_")), &m.path("src"), how);
        assert_eq!(on_ext4 & 0o6000, 0, "{how}: ext4 clears both bits (mode {on_ext4:o})");
        assert_eq!(on_kmsfs, on_ext4, "{how}: kmsfs mode {on_kmsfs:o}, ext4 {on_ext4:o}");
    }
}

/// A tmpfs of `size`, unmounted (lazily if busy) on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount -t tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if !Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn free_bytes(path: &Path) -> u64 {
    let c = cstr(path);
    // SAFETY: statvfs fills a zeroed struct for a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

/// fallocate past the free space answers ENOSPC and allocates nothing (kmsfs only grew the
/// file, sparse, and succeeded); one that fits reserves the space, so writing the range
/// later succeeds after the file system has filled up. Checked against tmpfs beside it (the
/// same answers as ext4; a small file system is needed to run out).
#[test]
fn fallocate_past_the_free_space_answers_enospc_and_a_reservation_holds() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let scratch = tempfile::tempdir().unwrap();
    let _kmsfs_space = Tmpfs::mount(&scratch.path().join("cipher-fs"), "16M");
    let _plain_space = Tmpfs::mount(&scratch.path().join("plain"), "16M");
    let m = Mounted::with_cipher_parent(&scratch.path().join("cipher-fs"));
    for top in [scratch.path().join("plain"), m.mnt().to_path_buf()] {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(top.join("reserved"))
            .unwrap();
        let before = free_bytes(&top);
        // SAFETY: fallocate on an open descriptor.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 64 << 20) };
        assert_eq!(errno_of(rc as i64), libc::ENOSPC, "64 MiB in {}", top.display());
        assert_eq!(f.metadata().unwrap().len(), 0, "size unchanged in {}", top.display());
        assert!(before - free_bytes(&top) < 256 << 10, "nothing allocated in {}", top.display());

        // SAFETY: as above.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 4 << 20) };
        assert_eq!(rc, 0, "4 MiB in {}: {}", top.display(), std::io::Error::last_os_error());
        assert_eq!(f.metadata().unwrap().len(), 4 << 20);
        assert!(before - free_bytes(&top) >= 4 << 20, "the space is taken in {}", top.display());

        // Fill the rest, then write the reserved range: it does not run out.
        let mut filler = fs::File::create(top.join("filler")).unwrap();
        let chunk = vec![9u8; 64 << 10];
        while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
        drop(filler);
        let data = common::mount::pattern(5, 4 << 20);
        f.write_all_at(&data, 0)
            .unwrap_or_else(|e| panic!("writing the reserved range in {}: {e}", top.display()));
        drop(f);
        assert_eq!(fs::read(top.join("reserved")).unwrap(), data);
        fs::remove_file(top.join("filler")).unwrap();
        fs::remove_file(top.join("reserved")).unwrap();
    }
}

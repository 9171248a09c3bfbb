//! Out of space: a volume whose cipher directory lies on an 8 MiB tmpfs is filled until the
//! backing file system is full. The failing call answers ENOSPC (not EIO), nothing already
//! written is harmed (also not the file whose write failed), the mount keeps working once
//! files are deleted, and fsck finds the volume clean.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::mount::{pattern, Mounted};

/// A tmpfs of a given size, unmounted (lazily if busy) on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount -t tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs { path: path.to_path_buf() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.path).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

const FILE_LEN: usize = 300 * 1024;
const CHUNK: usize = 64 * 1024;

/// Writes `data` to a new file in chunks; on failure returns the errno and how many bytes
/// the completed chunks hold.
fn write_file(path: &Path, data: &[u8]) -> Result<(), (i32, usize)> {
    let mut f = File::create(path).map_err(|e| (errno(&e), 0))?;
    for (k, chunk) in data.chunks(CHUNK).enumerate() {
        f.write_all(chunk).map_err(|e| (errno(&e), k * CHUNK))?;
    }
    Ok(())
}

#[test]
fn a_full_backing_file_system_answers_enospc_and_loses_nothing() {
    let holder = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(&holder.path().join("small"), "8m");
    let mut m = Mounted::with_cipher_parent(&holder.path().join("small"));

    // Fill it up.
    let mut kept = Vec::new();
    let (failed_name, failed_errno, acknowledged) = loop {
        let k = kept.len();
        assert!(k < 100, "8 MiB never filled up");
        let name = format!("keep{k}");
        let data = pattern(k as u64, FILE_LEN);
        match write_file(&m.path(&name), &data) {
            Ok(()) => kept.push((name, data)),
            Err((e, done)) => break (name, e, done),
        }
    };
    assert_eq!(failed_errno, libc::ENOSPC, "the failing write answers ENOSPC, not {failed_errno}");
    assert!(kept.len() >= 10, "only {} files fitted in 8 MiB", kept.len());

    // The file whose write failed holds at least what was acknowledged, and no damage: it
    // reads as a prefix of what was being written, not as EIO.
    let partial = m.path(&failed_name);
    if partial.exists() {
        let intended = pattern(kept.len() as u64, FILE_LEN);
        let got = fs::read(&partial).unwrap_or_else(|e| panic!("{failed_name} after ENOSPC: {e}"));
        assert!(got.len() >= acknowledged, "{failed_name}: {} bytes, {acknowledged} acknowledged", got.len());
        assert!(
            got.len() <= intended.len() && got[..] == intended[..got.len()],
            "{failed_name}: wrong bytes"
        );
    }

    // Take the last free pages with small files (each needs one), until even those fail.
    let mut slack = 0;
    let small_errno = loop {
        match write_file(&m.path(&format!("slack{slack}")), b"x") {
            Ok(()) => slack += 1,
            Err((e, _)) => break e,
        }
        assert!(slack < 10_000, "small files never filled the last pages");
    };
    assert_eq!(small_errno, libc::ENOSPC, "a small file on a full file system");

    // Everything else that needs space is refused with ENOSPC too, and changes nothing.
    let mut refusals = Vec::new();
    match File::create(m.path("one-more")) {
        Err(e) => refusals.push(("create", errno(&e))),
        Ok(mut f) => {
            let e = f.write_all(&pattern(99, FILE_LEN)).and_then(|_| f.sync_all()).unwrap_err();
            refusals.push(("write to a new file", errno(&e)));
        }
    }
    let grow = OpenOptions::new().write(true).open(m.path(&kept[0].0)).unwrap();
    refusals.push(("truncate to grow", errno(&grow.set_len(4 * FILE_LEN as u64).unwrap_err())));
    let e = grow.write_all_at(&pattern(98, FILE_LEN), FILE_LEN as u64).unwrap_err();
    refusals.push(("append", errno(&e)));
    drop(grow);
    for (what, e) in &refusals {
        assert_eq!(*e, libc::ENOSPC, "{what} on a full file system answers ENOSPC, not {e}");
    }
    for (name, data) in &kept {
        assert!(fs::read(m.path(name)).unwrap() == *data, "{name} after the file system filled up");
    }

    // Deleting files makes room: new files can be written and read again.
    let _ = fs::remove_file(m.path("one-more"));
    let _ = fs::remove_file(&partial);
    for k in 0..=slack {
        let _ = fs::remove_file(m.path(&format!("slack{k}")));
    }
    for (name, _) in kept.drain(..kept.len() / 2) {
        fs::remove_file(m.path(&name)).unwrap();
    }
    for k in 0..3 {
        let name = format!("after{k}");
        let data = pattern(1000 + k, FILE_LEN);
        write_file(&m.path(&name), &data).unwrap_or_else(|e| panic!("{name} after freeing space: {e:?}"));
        kept.push((name, data));
    }
    fs::create_dir(m.path("dir-after")).unwrap();
    fs::write(m.path("dir-after/small"), b"small").unwrap();
    m.remount();
    for (name, data) in &kept {
        assert!(fs::read(m.path(name)).unwrap() == *data, "{name} after a remount");
    }
    assert_eq!(fs::read(m.path("dir-after/small")).unwrap(), b"small");

    m.unmount();
    let out = m.kmsfs(&["--json", "fsck", m.cipher().to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "fsck after ENOSPC: {report:#}");
    assert_eq!(report["ProblemsRemaining"], 0, "{report:#}");
}

#[test]
fn mkdir_and_create_on_a_full_file_system_answer_enospc() {
    let holder = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(&holder.path().join("small"), "2m");
    let mut m = Mounted::with_cipher_parent(&holder.path().join("small"));
    fs::create_dir(m.path("d")).unwrap();
    // Fill every page, down to the last few bytes: small files until even those fail.
    let mut n = 0;
    while write_file(&m.path(&format!("fill{n}")), &pattern(n, 64 * 1024)).is_ok() {
        n += 1;
    }
    while write_file(&m.path(&format!("tiny{n}")), b"x").is_ok() {
        n += 1;
    }
    let e = fs::create_dir(m.path("d/new-dir")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOSPC, "mkdir: {e}");
    assert!(!m.path("d/new-dir").exists(), "a refused mkdir leaves no directory");
    let e = File::create(m.path("d/new-file")).and_then(|mut f| f.write_all(b"data")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOSPC, "create: {e}");
    // A long name needs its sidecar written first.
    let long = format!("d/{}", "l".repeat(200));
    let e = File::create(m.path(&long)).and_then(|mut f| f.write_all(b"data")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOSPC, "create with a long name: {e}");
    assert!(!m.path(&long).exists() && !m.path("d/new-file").exists(), "refused creates leave nothing");
    // Every directory still lists, and after freeing space both work.
    fs::read_dir(m.path("d")).unwrap().for_each(|e| drop(e.unwrap()));
    for entry in fs::read_dir(m.mnt()).unwrap() {
        let name = entry.unwrap().file_name();
        if name.to_str().is_some_and(|n| n.starts_with("fill")) {
            fs::remove_file(m.mnt().join(name)).unwrap();
        }
    }
    fs::create_dir(m.path("d/new-dir")).unwrap();
    fs::write(m.path("d/new-dir/file"), b"data").unwrap();
    m.unmount();
    let out = m.kmsfs(&["--json", "fsck", m.cipher().to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "fsck: {report:#}");
}

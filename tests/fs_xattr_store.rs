//! Many and large extended attributes on one file: more than the backing inode holds (plain
//! ext4 here takes about 128 small `user.*` attributes and no 64 KiB value without
//! ea_inode), kept in the volume's xattr store, through real syscalls on a real mount.

mod common;

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::mount::{last_errno, Mounted};
use serde_json::Value;

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
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
    let mut buf = vec![0u8; 65536];
    let got = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if got < 0 {
        return Err(last_errno());
    }
    buf.truncate(got as usize);
    Ok(buf)
}

fn removexattr(path: &Path, name: &str) -> Result<(), i32> {
    let (p, n) = (c(path), CString::new(name).unwrap());
    if unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

/// The names listed, and the size listxattr(2) answers for a size-0 query.
fn listxattr(path: &Path) -> (Vec<String>, usize) {
    let p = c(path);
    let size = unsafe { libc::listxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
    assert!(size >= 0, "listxattr: {}", last_errno());
    let mut buf = vec![0u8; size as usize];
    let got = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(got >= 0, "listxattr: {}", last_errno());
    buf.truncate(got as usize);
    let names =
        buf.split(|&b| b == 0).filter(|n| !n.is_empty()).map(|n| String::from_utf8_lossy(n).into()).collect();
    (names, size as usize)
}

fn name(i: usize) -> String {
    format!("user.attr{i:04}")
}

fn value(i: usize) -> Vec<u8> {
    format!("value of attribute {i}").into_bytes()
}

fn fsck(m: &Mounted, repair: bool) -> Value {
    let cipher = m.cipher().to_str().unwrap().to_string();
    let mut args = vec!["--json", "fsck", cipher.as_str()];
    if repair {
        args.push("--repair");
    }
    let out = m.kmsfs(&args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("fsck: {out:?}"))
}

fn stores(m: &Mounted) -> Vec<String> {
    match fs::read_dir(m.cipher().join("kmsfs.xattrs")) {
        Ok(d) => d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_thousand_small_attributes_are_set_listed_read_and_removed_with_ext4_errors() {
    let mut m = Mounted::new();
    let p = m.path("f");
    fs::write(&p, b"data").unwrap();
    for i in 0..1000 {
        setxattr(&p, &name(i), &value(i), 0).unwrap_or_else(|e| panic!("setxattr #{i}: errno {e}"));
    }
    let (mut names, size) = listxattr(&p);
    names.sort();
    assert_eq!(names, (0..1000).map(name).collect::<Vec<_>>());
    assert_eq!(size, (0..1000).map(|i| name(i).len() + 1).sum::<usize>());
    for i in 0..1000 {
        assert_eq!(getxattr(&p, &name(i)).unwrap(), value(i), "attribute {i}");
    }
    // ext4's answers: a too-small buffer, XATTR_CREATE on an existing attribute,
    // XATTR_REPLACE or remove of a missing one.
    let (cp, cn) = (c(&p), CString::new(name(7)).unwrap());
    let mut small = [0u8; 3];
    assert_eq!(unsafe { libc::getxattr(cp.as_ptr(), cn.as_ptr(), small.as_mut_ptr().cast(), 3) }, -1);
    assert_eq!(last_errno(), libc::ERANGE);
    assert_eq!(unsafe { libc::listxattr(cp.as_ptr(), small.as_mut_ptr().cast(), 3) }, -1);
    assert_eq!(last_errno(), libc::ERANGE);
    assert_eq!(setxattr(&p, &name(7), b"x", libc::XATTR_CREATE), Err(libc::EEXIST));
    assert_eq!(setxattr(&p, "user.missing", b"x", libc::XATTR_REPLACE), Err(libc::ENODATA));
    setxattr(&p, &name(7), b"replaced", libc::XATTR_REPLACE).unwrap();
    setxattr(&p, "user.created", b"new", libc::XATTR_CREATE).unwrap();
    assert_eq!(getxattr(&p, &name(7)).unwrap(), b"replaced");
    assert_eq!(getxattr(&p, "user.missing"), Err(libc::ENODATA));
    assert_eq!(removexattr(&p, "user.missing"), Err(libc::ENODATA));
    // A name too long for a backing xattr once encrypted (255 bytes is the limit).
    let long = format!("user.{}", "n".repeat(250));
    setxattr(&p, &long, b"long name", 0).unwrap();
    assert_eq!(getxattr(&p, &long).unwrap(), b"long name");
    assert_eq!(setxattr(&p, &format!("user.{}", "n".repeat(251)), b"x", 0), Err(libc::ERANGE));
    // Everything survives a remount, and fsck finds the volume clean.
    m.remount();
    assert_eq!(getxattr(&p, &name(999)).unwrap(), value(999));
    assert_eq!(listxattr(&p).0.len(), 1002);
    m.unmount();
    let report = fsck(&m, false);
    assert_eq!(report["ProblemsRemaining"], 0, "{report:#}");
    m.start();
    for i in 0..1000 {
        removexattr(&p, &name(i)).unwrap_or_else(|e| panic!("removexattr #{i}: errno {e}"));
    }
    removexattr(&p, "user.created").unwrap();
    removexattr(&p, &long).unwrap();
    assert_eq!(listxattr(&p), (vec![], 0));
    assert_eq!(getxattr(&p, &name(0)), Err(libc::ENODATA));
}

#[test]
fn a_64_kib_value_round_trips_and_one_byte_more_is_e2big() {
    let mut m = Mounted::new();
    let p = m.path("f");
    fs::write(&p, b"").unwrap();
    let big: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    setxattr(&p, "user.small", b"s", 0).unwrap();
    setxattr(&p, "user.big", &big, 0).unwrap();
    setxattr(&p, "user.big2", &big[..60000], 0).unwrap();
    assert_eq!(setxattr(&p, "user.huge", &vec![0; 65537], 0), Err(libc::E2BIG));
    m.remount();
    assert_eq!(getxattr(&p, "user.big").unwrap(), big);
    assert_eq!(getxattr(&p, "user.big2").unwrap(), &big[..60000]);
    assert_eq!(getxattr(&p, "user.small").unwrap(), b"s");
    // No value appears in the clear in the store.
    let store = stores(&m);
    assert_eq!(store.len(), 1, "{store:?}");
    let bytes = fs::read(m.cipher().join("kmsfs.xattrs").join(&store[0])).unwrap();
    assert!(!bytes.windows(64).any(|w| w == &big[1000..1064]));
}

#[test]
fn hard_links_share_the_store_the_last_unlink_removes_it_and_fsck_repairs_orphans() {
    let mut m = Mounted::new();
    let (a, b, d) = (m.path("a"), m.path("b"), m.path("d"));
    fs::write(&a, b"a").unwrap();
    fs::create_dir(&d).unwrap();
    for i in 0..300 {
        setxattr(&a, &name(i), &value(i), 0).unwrap();
        setxattr(&d, &name(i), &value(i), 0).unwrap();
    }
    fs::hard_link(&a, &b).unwrap();
    fs::rename(&b, m.path("b2")).unwrap();
    let b = m.path("b2");
    assert_eq!(getxattr(&b, &name(299)).unwrap(), value(299));
    setxattr(&b, "user.via-b", b"b", 0).unwrap();
    assert_eq!(getxattr(&a, "user.via-b").unwrap(), b"b");
    assert_eq!(stores(&m).len(), 2);
    fs::remove_file(&a).unwrap();
    assert_eq!(stores(&m).len(), 2, "the other link keeps it");
    assert_eq!(getxattr(&b, &name(5)).unwrap(), value(5));
    fs::remove_file(&b).unwrap();
    fs::remove_dir(&d).unwrap();
    assert!(stores(&m).is_empty(), "{:?}", stores(&m));
    // Unlinked while open: the attributes stay readable through the descriptor, and the
    // store goes at the last close.
    let o = m.path("o");
    fs::write(&o, b"o").unwrap();
    for i in 0..300 {
        setxattr(&o, &name(i), &value(i), 0).unwrap();
    }
    let open = fs::File::open(&o).unwrap();
    fs::remove_file(&o).unwrap();
    let (fd, n) = (std::os::fd::AsRawFd::as_raw_fd(&open), CString::new(name(123)).unwrap());
    let mut buf = [0u8; 64];
    let got = unsafe { libc::fgetxattr(fd, n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..got.max(0) as usize], value(123).as_slice(), "errno {}", last_errno());
    assert_eq!(stores(&m).len(), 1);
    drop(open);
    assert!(common::mount::wait_until(Duration::from_secs(5), || stores(&m).is_empty()), "{:?}", stores(&m));
    // A store nobody names (as a crash between writing it and its inode's removal leaves).
    let e = m.path("e");
    fs::write(&e, b"e").unwrap();
    for i in 0..300 {
        setxattr(&e, &name(i), &value(i), 0).unwrap();
    }
    m.unmount();
    let dir = m.cipher().join("kmsfs.xattrs");
    let kept = stores(&m).pop().unwrap();
    fs::copy(dir.join(&kept), dir.join("0123456789abcdef0123456789abcdef")).unwrap();
    let report = fsck(&m, false);
    assert_eq!(report["ProblemsRemaining"], 1, "{report:#}");
    let report = fsck(&m, true);
    assert_eq!(report["Repaired"], 1, "{report:#}");
    assert_eq!(stores(&m), vec![kept.clone()]);
    // A damaged store is reported (not removed).
    let mut bytes = fs::read(dir.join(&kept)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(dir.join(&kept), bytes).unwrap();
    let report = fsck(&m, true);
    assert_eq!(report["ProblemsRemaining"], 1, "{report:#}");
    assert!(report.to_string().contains("xattrs-damaged"), "{report:#}");
}

#[test]
fn a_volume_copy_carries_the_stores() {
    let mut m = Mounted::new();
    let p = m.path("f");
    fs::write(&p, b"f").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    for i in 0..400 {
        setxattr(&p, &name(i), &value(i), 0).unwrap();
        setxattr(&m.path("d"), &name(i), &value(i), 0).unwrap();
    }
    m.unmount();
    let src = m.cipher().to_str().unwrap().to_string();
    let dst = m.env.path("dst");
    let out = m.kmsfs(&["volume", "copy", &src, dst.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // The copy mounted in the source's place (the source moved aside).
    fs::rename(m.cipher(), m.env.path("source")).unwrap();
    fs::rename(&dst, m.cipher()).unwrap();
    m.start();
    for i in 0..400 {
        assert_eq!(getxattr(&m.path("f"), &name(i)).unwrap(), value(i));
        assert_eq!(getxattr(&m.path("d"), &name(i)).unwrap(), value(i));
    }
    m.unmount();
    let report = fsck(&m, false);
    assert_eq!(report["ProblemsRemaining"], 0, "{report:#}");
}

/// The attributes acknowledged so far, and the one being set when the daemon died.
#[derive(Default)]
struct Acked {
    values: HashMap<String, Vec<u8>>,
    in_flight: Option<(String, Vec<u8>)>,
    sets: usize,
}

#[test]
fn a_crash_during_a_burst_of_setxattr_leaves_every_attribute_old_or_new() {
    for round in 0..3 {
        let mut m = Mounted::new();
        let p = m.path("f");
        fs::write(&p, b"f").unwrap();
        let acked = Arc::new(Mutex::new(Acked::default()));
        let worker = {
            let (acked, p) = (acked.clone(), p.clone());
            std::thread::spawn(move || {
                // New attributes (the move into the store happens during the burst), then
                // changes to them, until the daemon dies.
                for k in 0..100_000 {
                    let (n, v) = (name(k % 400), format!("{k}").into_bytes());
                    acked.lock().unwrap().in_flight = Some((n.clone(), v.clone()));
                    if setxattr(&p, &n, &v, 0).is_err() {
                        return;
                    }
                    let mut a = acked.lock().unwrap();
                    a.values.insert(n, v);
                    a.in_flight = None;
                    a.sets += 1;
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300 + round * 400));
        m.kill_daemon();
        worker.join().unwrap();
        m.restart_after_crash();
        let a = acked.lock().unwrap();
        assert!(a.sets > 100, "round {round}: only {} setxattr before the kill", a.sets);
        for (n, v) in &a.values {
            let got = getxattr(&p, n).unwrap_or_else(|e| panic!("round {round}: {n} lost (errno {e})"));
            let new = a.in_flight.as_ref().filter(|(f, _)| f == n).map(|(_, v)| v);
            assert!(got == *v || Some(&got) == new, "round {round}: {n}: {got:?}, acked {v:?}");
        }
        let listed = listxattr(&p).0.len();
        assert!(listed == a.values.len() || listed == a.values.len() + 1, "round {round}: {listed}");
        m.unmount();
        // At most the temporary file of the store write the kill cut short is left over.
        let report = fsck(&m, true);
        for item in report["Items"].as_array().unwrap() {
            assert!(
                ["ok", "temp-file"].contains(&item["Status"].as_str().unwrap()),
                "round {round}: {report:#}"
            );
        }
        let report = fsck(&m, false);
        assert_eq!(report["ProblemsRemaining"], 0, "round {round}: {report:#}");
    }
}

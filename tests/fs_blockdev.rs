//! EBS-like at-rest encryption: a 1 GiB sparse file on a kmsfs volume, attached as a loop
//! device, formatted ext4 and filled with a tree of files. The ext4 file system must stay
//! clean (`e2fsck -f -n`) and byte-for-byte intact across a remount of kmsfs, the backing
//! file must stay sparse, and neither file contents nor ext4 metadata may show in it. The
//! loop device offers discard (kmsfs punches holes), so `fstrim` after removing files
//! shrinks the backing file's allocation.
//!
//! Needs root (CAP_SYS_ADMIN) and loop devices; where those are missing the test says so
//! loudly on stderr and passes without running (containers often have no loop devices).

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::mount::{is_mounted, pattern, wait_until, walk, Mounted};

const IMAGE_SIZE: u64 = 1 << 30;
/// The size of the large file in the tree (several MiB, not a multiple of 4 KiB).
const BIG_FILE: usize = (6 << 20) + 12_345;

/// Runs `prog args` and returns its output (panics only if it cannot be started).
fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {prog} ({e}); scripts/install-deps.sh installs mount, util-linux and e2fsprogs")
    })
}

fn describe(prog: &str, args: &[&str], out: &Output) -> String {
    format!(
        "{prog} {} exited with {}\n--- stdout ---\n{}--- stderr ---\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `prog args`, panics with its full output unless it exits 0; returns stdout.
fn check(prog: &str, args: &[&str]) -> String {
    let out = run(prog, args);
    assert!(out.status.success(), "{}", describe(prog, args, &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn skip(why: &str) {
    eprintln!();
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIPPED fs_blockdev: {why}");
    eprintln!("!!! The EBS-like block-device test did NOT run (needs root and loop devices).");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!();
}

/// Why loop devices cannot be used here, if they cannot.
fn loop_devices_unavailable() -> Option<String> {
    if !Path::new("/dev/loop-control").exists() {
        return Some(
            "/dev/loop-control is missing (no loop driver, or not visible in this container)".into(),
        );
    }
    // CAP_SYS_ADMIN (bit 21) is needed to set up loop devices and to mount ext4.
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if cap_eff & (1 << 21) == 0 {
        return Some("no CAP_SYS_ADMIN: loop devices and ext4 mounts need root".into());
    }
    None
}

/// An attached loop device; detached on drop (also when the test panics).
struct LoopDev {
    dev: String,
    attached: bool,
}

impl LoopDev {
    /// `losetup --find --show FILE`. `Err` with the reason when no loop device can be had;
    /// any other failure panics.
    fn attach(file: &Path) -> Result<Self, String> {
        let args = ["--find", "--show", file.to_str().unwrap()];
        let out = run("losetup", &args);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("cannot find an unused loop device") {
                return Err(describe("losetup", &args, &out));
            }
            panic!("{}", describe("losetup", &args, &out));
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        Ok(LoopDev { dev, attached: true })
    }

    /// `/sys/block/loopN/loop/backing_file` exists while the device is bound to a file.
    fn bound(&self) -> bool {
        let name = self.dev.trim_start_matches("/dev/");
        Path::new(&format!("/sys/block/{name}/loop/backing_file")).exists()
    }

    /// `losetup -d`, asserting success, and waits until the device lets go of the file.
    fn detach(mut self) {
        self.attached = false;
        check("losetup", &["-d", &self.dev]);
        assert!(
            wait_until(Duration::from_secs(10), || !self.bound()),
            "{} still bound to its file 10 s after losetup -d",
            self.dev
        );
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if self.attached {
            let out = run("losetup", &["-d", &self.dev]);
            if !out.status.success() {
                eprintln!("cleanup: {}", describe("losetup", &["-d", &self.dev], &out));
            }
            wait_until(Duration::from_secs(5), || !self.bound());
        }
    }
}

/// An ext4 mount of a loop device; unmounted on drop (also when the test panics).
struct Ext4Mount {
    dir: PathBuf,
}

impl Ext4Mount {
    fn mount(dev: &LoopDev, dir: &Path) -> Self {
        check("mount", &["-t", "ext4", &dev.dev, dir.to_str().unwrap()]);
        Ext4Mount { dir: dir.to_path_buf() }
    }

    /// `umount`, asserting success.
    fn unmount(self) {
        check("umount", &[self.dir.to_str().unwrap()]);
        assert!(!is_mounted(&self.dir));
    }
}

impl Drop for Ext4Mount {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let dir = self.dir.to_str().unwrap();
            let out = run("umount", &[dir]);
            if !out.status.success() {
                eprintln!("cleanup: {}", describe("umount", &[dir], &out));
                let _ = run("umount", &["-l", dir]);
            }
        }
    }
}

/// `e2fsck -f -n DEV` must find nothing (exit 0).
fn fsck_clean(dev: &LoopDev) {
    let args = ["-f", "-n", dev.dev.as_str()];
    let out = run("e2fsck", &args);
    assert_eq!(out.status.code(), Some(0), "e2fsck reports problems:\n{}", describe("e2fsck", &args, &out));
}

/// The tree written to the ext4 file system: relative path → content. Several directories
/// (some nested), 300 files of sizes from 0 to ~200 KiB (block-boundary sizes included) and
/// one of several MiB. Deterministic.
fn tree() -> BTreeMap<String, Vec<u8>> {
    const DIRS: [&str; 7] = ["etc", "var/log", "var/lib/db", "home/alice", "home/bob/src", "srv", "tmp"];
    const EDGE: [usize; 8] = [0, 1, 511, 4095, 4096, 4097, 65_536, 131_073];
    let mut rng = 0x5eed_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut files = BTreeMap::new();
    for i in 0..300 {
        let dir = DIRS[i % DIRS.len()];
        let len = if i < EDGE.len() { EDGE[i] } else { (next() % 200_000) as usize };
        files.insert(format!("{dir}/file-{i:03}.bin"), pattern(1000 + i as u64, len));
    }
    files.insert("srv/big.bin".into(), pattern(7, BIG_FILE));
    files
}

fn write_tree(root: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (rel, data) in files {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }
    let root_dir = File::open(root).unwrap();
    assert_eq!(
        unsafe { libc::syncfs(root_dir.as_raw_fd()) },
        0,
        "syncfs: {}",
        std::io::Error::last_os_error()
    );
}

/// Every file of `files` reads back byte for byte, and the file system holds no other files.
fn verify_tree(root: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (rel, want) in files {
        let p = root.join(rel);
        let got = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        if got != *want {
            let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
            panic!("{rel}: {} bytes, want {}; first difference at byte {first}", got.len(), want.len());
        }
    }
    let mut found = Vec::new();
    walk(root, &mut |p, m| {
        if m.is_file() {
            found.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    });
    found.sort();
    let want: Vec<&String> = files.keys().collect();
    assert_eq!(found.iter().collect::<Vec<_>>(), want, "files on the ext4 file system");
}

/// Bytes allocated to `path` on disk.
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// The data regions of a sparse file (SEEK_DATA / SEEK_HOLE), read whole.
fn data_regions(path: &Path) -> Vec<u8> {
    let mut f = File::open(path).unwrap();
    let fd = f.as_raw_fd();
    let len = f.metadata().unwrap().len() as i64;
    let mut out = Vec::new();
    let mut pos = 0i64;
    while pos < len {
        let start = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if start < 0 {
            break; // ENXIO: no data past pos
        }
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        assert!(end > start, "SEEK_HOLE after {start}: {end}");
        f.seek(SeekFrom::Start(start as u64)).unwrap();
        (&mut f).take((end - start) as u64).read_to_end(&mut out).unwrap();
        pos = end;
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let (first, rest) = needle.split_first().unwrap();
    let mut from = 0;
    while let Some(i) = haystack[from..].iter().position(|b| b == first) {
        let at = from + i;
        if haystack[at + 1..].starts_with(rest) {
            return true;
        }
        from = at + 1;
    }
    false
}

#[test]
fn ext4_on_a_loop_device_over_a_sparse_file_survives_remount_and_fstrim_frees_its_blocks() {
    let started = Instant::now();
    if let Some(why) = loop_devices_unavailable() {
        skip(&why);
        return;
    }
    let mut m = Mounted::new();
    let image = m.path("disk.img");
    File::create(&image).unwrap().set_len(IMAGE_SIZE).unwrap();
    assert_eq!(fs::metadata(&image).unwrap().len(), IMAGE_SIZE);
    let backing = m.backing_of(&image);
    let ext4_dir = m.env.path("ext4");
    fs::create_dir(&ext4_dir).unwrap();
    let files = tree();

    // Format, fill, unmount, check.
    let dev = match LoopDev::attach(&image) {
        Ok(dev) => dev,
        Err(why) => {
            skip(&format!("no loop device available:\n{why}"));
            return;
        }
    };
    check("mkfs.ext4", &["-q", "-F", &dev.dev]);
    let ext4 = Ext4Mount::mount(&dev, &ext4_dir);
    write_tree(&ext4_dir, &files);
    ext4.unmount();
    fsck_clean(&dev);
    dev.detach();

    let used = allocated(&backing);
    eprintln!("backing file: {} MiB allocated for a 1 GiB image", used >> 20);
    assert!(used < IMAGE_SIZE / 4, "backing file allocates {used} bytes: holes must stay holes");

    // At rest: neither file contents nor ext4 metadata are visible in the backing file.
    let on_disk = data_regions(&backing);
    assert!(!on_disk.is_empty());
    assert!(!contains(&on_disk, b"lost+found"), "a plaintext directory entry in the backing file");
    assert!(!contains(&on_disk, &files["srv/big.bin"][1 << 20..(1 << 20) + 64]), "plaintext file data");
    drop(on_disk);

    // Cold caches: remount kmsfs, attach again, check, verify every byte.
    m.remount();
    assert_eq!(m.backing_of(&image), backing);
    let dev = LoopDev::attach(&image).unwrap_or_else(|why| panic!("attach after remount: {why}"));
    fsck_clean(&dev);
    let ext4 = Ext4Mount::mount(&dev, &ext4_dir);
    verify_tree(&ext4_dir, &files);

    // Discard: the loop device passes it on as hole punching, so blocks ext4 frees and
    // trims leave the backing file.
    let queue = format!("/sys/block/{}/queue/discard_max_bytes", dev.dev.trim_start_matches("/dev/"));
    let discard_max: u64 = fs::read_to_string(&queue).unwrap().trim().parse().unwrap();
    assert!(discard_max > 0, "{queue}: the loop device offers no discard");
    let before = allocated(&backing);
    let mut removed = 0;
    let mut kept = BTreeMap::new();
    for (i, (rel, data)) in files.iter().enumerate() {
        if rel == "srv/big.bin" || i % 4 != 0 {
            fs::remove_file(ext4_dir.join(rel)).unwrap();
            removed += data.len() as u64;
        } else {
            kept.insert(rel.clone(), data.clone());
        }
    }
    check("sync", &[]);
    let trimmed = check("fstrim", &["-v", ext4_dir.to_str().unwrap()]);
    let after = allocated(&backing);
    eprintln!(
        "fstrim: {} ({} KiB of files removed); backing file {} KiB allocated before, {} KiB after",
        trimmed.trim(),
        removed >> 10,
        before >> 10,
        after >> 10
    );
    assert!(
        after + removed * 8 / 10 < before,
        "fstrim freed {} KiB of the backing file for {} KiB of removed files",
        (before.saturating_sub(after)) >> 10,
        removed >> 10
    );
    verify_tree(&ext4_dir, &kept);
    ext4.unmount();
    fsck_clean(&dev);
    dev.detach();
    assert!(allocated(&backing) < IMAGE_SIZE / 4);
    eprintln!("fs_blockdev: {:.1} s", started.elapsed().as_secs_f64());
}

//! An fsx-style exerciser (after the file system exerciser of BSD and xfstests): one file on
//! a mounted volume gets a seeded random stream of reads, writes, mmap reads and writes,
//! truncates, fallocate (plain, KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE), fsyncs and reopens,
//! and every read, every size and, at intervals, the whole file are checked against an
//! in-memory model of what the file must hold.
//!
//! `KMSFS_FSX_OPS` sets the number of operations (default 20,000; 1,000,000 for a long
//! run), `KMSFS_FSX_SEED` the seed (printed; a failure prints the operations before it).

mod common;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::mount::Mounted;

/// Largest file the exerciser makes (fsx's default).
const MAX_LEN: u64 = 256 << 10;
/// Largest single operation (fsx's default).
const MAX_OP: u64 = 64 << 10;
const PAGE: u64 = 4096;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// An offset below `limit`, often at or next to a 4 KiB boundary, where blocks start.
    fn offset(&mut self, limit: u64) -> u64 {
        let off = self.below(limit);
        match self.below(4) {
            0 => off & !(PAGE - 1),
            1 => (off & !(PAGE - 1)).saturating_sub(1),
            _ => off,
        }
    }
    /// A length of 1..=MAX_OP, often a multiple of 4 KiB.
    fn length(&mut self) -> u64 {
        let len = 1 + self.below(MAX_OP);
        if self.below(4) == 0 {
            (len & !(PAGE - 1)).max(PAGE)
        } else {
            len
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Read {
        off: u64,
        len: u64,
    },
    Write {
        off: u64,
        len: u64,
    },
    MapRead {
        off: u64,
        len: u64,
    },
    /// With `sync`, msync(MS_SYNC) before the unmap; else the kernel writes the pages back
    /// when it likes, while later operations run.
    MapWrite {
        off: u64,
        len: u64,
        sync: bool,
    },
    Truncate {
        len: u64,
    },
    Fallocate {
        off: u64,
        len: u64,
        keep_size: bool,
    },
    PunchHole {
        off: u64,
        len: u64,
    },
    ZeroRange {
        off: u64,
        len: u64,
        keep_size: bool,
    },
    Fsync,
    Reopen,
}

struct Fsx {
    path: std::path::PathBuf,
    file: File,
    model: Vec<u8>,
    rng: Rng,
    seed: u64,
    log: VecDeque<String>,
    /// Per kind of operation: how many, and the milliseconds they took.
    counts: std::collections::BTreeMap<&'static str, (u64, u64)>,
}

fn open(path: &Path) -> File {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).unwrap()
}

impl Fsx {
    fn fail(&self, n: u64, what: String) -> ! {
        panic!(
            "fsx: operation {n}: {what}\nseed {seed} (rerun: KMSFS_FSX_SEED={seed} cargo test --test fsx)\n\
             last operations:\n  {}",
            self.log.iter().cloned().collect::<Vec<_>>().join("\n  "),
            seed = self.seed
        );
    }

    fn pick(&mut self) -> Op {
        let size = self.model.len() as u64;
        let off = self.rng.offset(MAX_LEN);
        let len = self.rng.length().min(MAX_LEN - off).max(1);
        // Weights per mille. Syncs are rare: on a disk without a write cache each costs a
        // flush of the disk (~20 ms here), which would be most of the run's time.
        match self.rng.below(1000) {
            0..=199 => Op::Read { off: self.rng.offset(size.max(1)), len },
            200..=399 => Op::Write { off, len },
            400..=499 => Op::MapRead { off: self.rng.offset(size.max(1)), len },
            500..=599 => Op::MapWrite { off, len, sync: self.rng.below(16) == 0 },
            600..=679 => Op::Truncate { len: self.rng.offset(MAX_LEN) },
            680..=739 => Op::Fallocate { off, len, keep_size: self.rng.below(2) == 0 },
            740..=859 => Op::PunchHole { off: self.rng.offset(size.max(1)), len },
            860..=979 => Op::ZeroRange { off, len, keep_size: self.rng.below(2) == 0 },
            980..=984 => Op::Fsync,
            _ => Op::Reopen,
        }
    }

    fn bytes(&mut self, len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len as usize + 8);
        while (out.len() as u64) < len {
            out.extend_from_slice(&self.rng.next().to_le_bytes());
        }
        out.truncate(len as usize);
        out
    }

    fn fallocate(&self, mode: i32, off: u64, len: u64) -> Result<(), std::io::Error> {
        // SAFETY: an open descriptor.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off as i64, len as i64) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn zero_model(&mut self, off: u64, len: u64) {
        let end = (off + len).min(self.model.len() as u64);
        if off < end {
            self.model[off as usize..end as usize].fill(0);
        }
    }

    fn grow_model(&mut self, to: u64) {
        if to > self.model.len() as u64 {
            self.model.resize(to as usize, 0);
        }
    }

    fn compare(&self, n: u64, off: u64, got: &[u8], what: &str) {
        let want = &self.model[off as usize..off as usize + got.len()];
        if got != want {
            let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
            self.fail(
                n,
                format!(
                    "{what}: byte {} is {:#04x}, the model has {:#04x} ({} bytes compared from {off})",
                    off + i as u64,
                    got[i],
                    want[i],
                    got.len()
                ),
            );
        }
    }

    fn apply(&mut self, n: u64, op: Op) {
        let size = self.model.len() as u64;
        let err = |e: std::io::Error| format!("{op:?} failed: {e}");
        match op {
            Op::Read { off, len } => {
                let want = len.min(size.saturating_sub(off)) as usize;
                let mut buf = vec![0u8; len as usize];
                let mut got = 0;
                while got < buf.len() {
                    match self.file.read_at(&mut buf[got..], off + got as u64) {
                        Ok(0) => break,
                        Ok(k) => got += k,
                        Err(e) => self.fail(n, err(e)),
                    }
                }
                if got != want {
                    self.fail(n, format!("{op:?} read {got} bytes, the model has {want}"));
                }
                self.compare(n, off, &buf[..got], "read");
            }
            Op::Write { off, len } => {
                let data = self.bytes(len);
                if let Err(e) = self.file.write_all_at(&data, off) {
                    self.fail(n, err(e));
                }
                self.grow_model(off + len);
                self.model[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            Op::MapRead { off, len } => {
                if off >= size {
                    return;
                }
                let len = len.min(size - off);
                let (base, map_len, skip) = self.map(off, len, libc::PROT_READ, n);
                // SAFETY: the mapping covers [off, off + len) of a file at least that long.
                let got = unsafe { std::slice::from_raw_parts(base.add(skip), len as usize) }.to_vec();
                unsafe { libc::munmap(base.cast(), map_len) };
                self.compare(n, off, &got, "mmap read");
            }
            Op::MapWrite { off, len, sync } => {
                // As fsx does: a mapping cannot extend a file, so extend it first.
                if off + len > size {
                    if let Err(e) = self.file.set_len(off + len) {
                        self.fail(n, err(e));
                    }
                    self.grow_model(off + len);
                }
                let data = self.bytes(len);
                let (base, map_len, skip) = self.map(off, len, libc::PROT_READ | libc::PROT_WRITE, n);
                // SAFETY: as above, writable and shared.
                unsafe {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(skip), len as usize);
                    if sync && libc::msync(base.cast(), map_len, libc::MS_SYNC) != 0 {
                        let e = std::io::Error::last_os_error();
                        libc::munmap(base.cast(), map_len);
                        self.fail(n, err(e));
                    }
                    libc::munmap(base.cast(), map_len);
                }
                self.model[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            Op::Truncate { len } => {
                if let Err(e) = self.file.set_len(len) {
                    self.fail(n, err(e));
                }
                self.model.resize(len as usize, 0);
            }
            Op::Fallocate { off, len, keep_size } => {
                let mode = if keep_size { libc::FALLOC_FL_KEEP_SIZE } else { 0 };
                if let Err(e) = self.fallocate(mode, off, len) {
                    self.fail(n, err(e));
                }
                if !keep_size {
                    self.grow_model(off + len);
                }
            }
            Op::PunchHole { off, len } => {
                if let Err(e) =
                    self.fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, len)
                {
                    self.fail(n, err(e));
                }
                self.zero_model(off, len);
            }
            Op::ZeroRange { off, len, keep_size } => {
                let mode = libc::FALLOC_FL_ZERO_RANGE | if keep_size { libc::FALLOC_FL_KEEP_SIZE } else { 0 };
                if let Err(e) = self.fallocate(mode, off, len) {
                    self.fail(n, err(e));
                }
                self.zero_model(off, len);
                if !keep_size {
                    self.grow_model(off + len);
                }
            }
            Op::Fsync => {
                if let Err(e) = self.file.sync_all() {
                    self.fail(n, err(e));
                }
            }
            Op::Reopen => self.file = open(&self.path),
        }
        let got = self.file.metadata().unwrap().len();
        if got != self.model.len() as u64 {
            self.fail(n, format!("after {op:?} the size is {got}, the model has {}", self.model.len()));
        }
    }

    /// Maps [off, off + len) of the file; returns the mapping, its length and where `off`
    /// lies in it.
    fn map(&self, off: u64, len: u64, prot: i32, n: u64) -> (*mut u8, usize, usize) {
        let start = off & !(PAGE - 1);
        let skip = (off - start) as usize;
        let map_len = skip + len as usize;
        // SAFETY: a fresh shared mapping of an open descriptor, unmapped by the caller.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                prot,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                start as i64,
            )
        };
        if base == libc::MAP_FAILED {
            self.fail(n, format!("mmap at {start}, {map_len} bytes: {}", std::io::Error::last_os_error()));
        }
        (base.cast(), map_len, skip)
    }

    /// The whole file, read through a new descriptor, against the model.
    fn check_all(&self, n: u64, what: &str) {
        let got = std::fs::read(&self.path).unwrap_or_else(|e| self.fail(n, format!("{what}: read: {e}")));
        if got.len() != self.model.len() {
            self.fail(n, format!("{what}: {} bytes, the model has {}", got.len(), self.model.len()));
        }
        self.compare(n, 0, &got, what);
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("{name} must be an unsigned integer")),
        Err(_) => default,
    }
}

#[test]
fn random_io_with_mmap_truncate_and_hole_punching_matches_a_model() {
    let ops = env_u64("KMSFS_FSX_OPS", 20_000);
    let default_seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let seed = env_u64("KMSFS_FSX_SEED", default_seed);
    eprintln!("fsx: {ops} operations, seed {seed} (rerun with KMSFS_FSX_SEED={seed})");
    let mut m = Mounted::new();
    let path = m.path("fsx.dat");
    let started = std::time::Instant::now();
    let mut fsx = Fsx {
        file: open(&path),
        path,
        model: Vec::new(),
        rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        seed,
        log: VecDeque::new(),
        counts: Default::default(),
    };
    for n in 0..ops {
        let op = fsx.pick();
        fsx.log.push_back(format!("#{n} {op:?} (size before: {})", fsx.model.len()));
        if fsx.log.len() > 30 {
            fsx.log.pop_front();
        }
        let name = format!("{op:?}");
        let took = std::time::Instant::now();
        fsx.apply(n, op);
        let count = fsx.counts.entry(op_name(name.split([' ', '{']).next().unwrap())).or_default();
        count.0 += 1;
        count.1 += took.elapsed().as_micros() as u64;
        if (n + 1) % 1000 == 0 {
            fsx.check_all(n, "whole-file check");
        }
    }
    fsx.check_all(ops, "final check");
    drop(fsx.file);
    m.remount();
    fsx.file = open(&fsx.path);
    fsx.check_all(ops, "after a remount");
    let counts: Vec<String> =
        fsx.counts.iter().map(|(op, (n, us))| format!("{op} {n} ({} ms)", us / 1000)).collect();
    eprintln!(
        "fsx: {ops} operations in {:.1} s, no mismatch; final size {}; {}",
        started.elapsed().as_secs_f64(),
        fsx.model.len(),
        counts.join(", ")
    );
    drop(fsx.file);
    m.unmount();
    let report = m.json(&["fsck", m.cipher().to_str().unwrap()]);
    assert_eq!(report["ProblemsRemaining"], 0, "fsck: {report:#}");
}

/// Operation names for the tally (a handful, as static names).
fn op_name(name: &str) -> &'static str {
    const NAMES: [&str; 10] = [
        "Read",
        "Write",
        "MapRead",
        "MapWrite",
        "Truncate",
        "Fallocate",
        "PunchHole",
        "ZeroRange",
        "Fsync",
        "Reopen",
    ];
    NAMES.iter().find(|n| **n == name).copied().unwrap_or("other")
}

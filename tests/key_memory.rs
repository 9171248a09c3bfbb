//! Key schedules do not outlive their ciphers in freed memory. A global allocator looks at
//! every block as it is freed, while armed, for any round key of a known AES-256 key: a
//! cipher made by `SecretKey::cipher` (the one constructor of every kmsfs cipher: root key,
//! master-key versions, names and data keys) must wipe its schedule before its memory goes
//! back to the allocator. Without `aes`'s zeroize feature it does not.

use std::alloc::{GlobalAlloc, Layout, System};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use aes::cipher::KeyInit;

const KEY: [u8; 32] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10,
    0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];

static ROUND_KEYS: OnceLock<[[u8; 16]; 15]> = OnceLock::new();
static ARMED: AtomicBool = AtomicBool::new(false);
static FREED_WITH_SCHEDULE: AtomicUsize = AtomicUsize::new(0);

struct Watching;

// SAFETY: forwards to the system allocator; the look at a freed block reads only bytes of
// that block, which is still allocated at that point, and allocates nothing.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARMED.load(Ordering::SeqCst) {
            if let Some(keys) = ROUND_KEYS.get() {
                let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
                if keys.iter().any(|k| block.windows(16).any(|w| w == k)) {
                    FREED_WITH_SCHEDULE.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// The AES S-box, computed (multiplicative inverse in GF(2^8), then the affine map).
fn sbox() -> [u8; 256] {
    let mut s = [0u8; 256];
    let (mut p, mut q) = (1u8, 1u8);
    loop {
        p = p ^ (p << 1) ^ if p & 0x80 != 0 { 0x1b } else { 0 };
        q ^= q << 1;
        q ^= q << 2;
        q ^= q << 4;
        if q & 0x80 != 0 {
            q ^= 0x09;
        }
        s[p as usize] = q ^ q.rotate_left(1) ^ q.rotate_left(2) ^ q.rotate_left(3) ^ q.rotate_left(4) ^ 0x63;
        if p == 1 {
            break;
        }
    }
    s[0] = 0x63;
    s
}

/// The 15 round keys of AES-256 (FIPS-197 key expansion), as AES-NI keeps them.
fn round_keys(key: &[u8; 32]) -> [[u8; 16]; 15] {
    let s = sbox();
    let mut w = [[0u8; 4]; 60];
    for (i, word) in w.iter_mut().take(8).enumerate() {
        word.copy_from_slice(&key[4 * i..4 * i + 4]);
    }
    let mut rcon = 1u8;
    for i in 8..60 {
        let mut t = w[i - 1];
        if i % 8 == 0 {
            t = [s[t[1] as usize] ^ rcon, s[t[2] as usize], s[t[3] as usize], s[t[0] as usize]];
            rcon = (rcon << 1) ^ if rcon & 0x80 != 0 { 0x1b } else { 0 };
        } else if i % 8 == 4 {
            t = t.map(|b| s[b as usize]);
        }
        for j in 0..4 {
            w[i][j] = w[i - 8][j] ^ t[j];
        }
    }
    let mut out = [[0u8; 16]; 15];
    for (r, round) in out.iter_mut().enumerate() {
        for c in 0..4 {
            round[4 * c..4 * c + 4].copy_from_slice(&w[4 * r + c]);
        }
    }
    out
}

/// Freed blocks that held the schedule while `body` ran.
fn freed_with_schedule(body: impl FnOnce()) -> usize {
    FREED_WITH_SCHEDULE.store(0, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    body();
    ARMED.store(false, Ordering::SeqCst);
    FREED_WITH_SCHEDULE.load(Ordering::SeqCst)
}

#[test]
fn a_dropped_cipher_leaves_no_key_schedule_in_freed_memory() {
    if !std::arch::is_x86_feature_detected!("aes") {
        eprintln!("skipped: no AES-NI, so the aes crate keeps a bitsliced schedule this test cannot spot");
        return;
    }
    let keys = round_keys(&KEY);
    // FIPS-197 appendix C.3: the last round key of this key.
    assert_eq!(
        keys[14],
        [0x24, 0xfc, 0x79, 0xcc, 0xbf, 0x09, 0x79, 0xe9, 0x37, 0x1a, 0xc2, 0x3c, 0x6d, 0x68, 0xde, 0x36]
    );
    ROUND_KEYS.set(keys).unwrap();

    // The watch itself works: a schedule freed without its destructor is seen.
    let seen = freed_with_schedule(|| {
        let raw = Box::new(MaybeUninit::new(aes::Aes256::new(&KEY.into())));
        drop(raw); // MaybeUninit: no destructor runs, so nothing wipes the schedule
    });
    assert_eq!(seen, 1, "the watch must see an unwiped schedule");

    // kmsfs's ciphers, used for every kind of operation, then dropped.
    let seen = freed_with_schedule(|| {
        let key = kmsfs::crypto::SecretKey::from_slice(&KEY).unwrap();
        let cipher = key.cipher();
        let sealed = cipher.seal(b"aad", &[7u8; 5000]);
        assert_eq!(cipher.open(b"aad", &sealed).unwrap().len(), 5000);
        let name = cipher.seal_deterministic(b"dir", b"report.txt");
        assert!(cipher.open_deterministic(b"dir", &name).is_ok());
        let shared = std::sync::Arc::new(key.cipher());
        drop(std::sync::Arc::clone(&shared));
        drop(shared);
        drop(cipher);
    });
    assert_eq!(seen, 0, "a cipher's key schedule was left in freed memory");
}

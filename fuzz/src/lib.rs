//! The parsers kmsfs runs on bytes an attacker may control, driven the same way by the fuzz
//! targets (`fuzz/fuzz_targets/*.rs`, through cargo-fuzz) and by `tests/hostile_input.rs`
//! (every committed corpus file, on every `cargo test`). Each function must return normally
//! for any input; the assertions in them are properties the parsers promise (what parses
//! encodes back to the same thing, a sealed blob opens only under its own key and context).

use std::path::Path;

use kmsfs::content::{self, FileHeader, HEADER_LEN};
use kmsfs::crypto::SecretKey;
use kmsfs::kms::blob::{self, BlobHeader};
use kmsfs::kms::policy::{self, Decision, Policy, Request};
use kmsfs::kms::{EncryptionContext, Principal};
use kmsfs::volume::dirmeta::DirMeta;
use kmsfs::volume::VolumeConfig;

/// The names of the targets, as directories under `fuzz/corpus/`.
pub const TARGETS: [&str; 5] = ["file_header", "kms_blob", "volume_config", "key_policy", "dir_meta"];

/// Runs target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "file_header" => file_header(data),
        "kms_blob" => kms_blob(data),
        "volume_config" => volume_config(data),
        "key_policy" => key_policy(data),
        "dir_meta" => dir_meta(data),
        other => panic!("no fuzz target {other}"),
    }
}

/// The fixed key the blob target opens blobs with (seed blobs are sealed under it).
pub fn fixed_key() -> SecretKey {
    SecretKey::from_slice(&[0x42; 32]).expect("32 bytes")
}

/// The encryption context of the blob target's seeds.
pub fn fixed_context() -> EncryptionContext {
    EncryptionContext::new().with("kmsfs:volume", "fuzz").with("kmsfs:file", "00")
}

/// A file header (the first 288 bytes of every backing file), and the size arithmetic that
/// the backing file's length feeds.
pub fn file_header(data: &[u8]) {
    if let Ok(header) = FileHeader::parse(data) {
        assert!(!header.candidates().is_empty(), "a parsed header has a key slot");
        let encoded = header.encode();
        assert_eq!(FileHeader::parse(&encoded).as_ref(), Ok(&header), "encode/parse round trip");
        // Only the preamble and the used part of each slot matter: the rest may differ.
        assert_eq!(encoded[..28], data[..28]);
        for slot in header.candidates() {
            let _ = BlobHeader::parse(&slot.blob);
        }
    }
    // Any backing length (what a damaged or hostile file has) maps to a plaintext size, and
    // any size the kernel can ask for (up to i64::MAX) to a cipher length, without overflow.
    if let Some(raw) = data.get(..8) {
        let n = u64::from_be_bytes(raw.try_into().expect("8 bytes"));
        let size = content::plaintext_size(n);
        assert!(size <= n, "plaintext {size} longer than its cipher file {n}");
        let size = n & (i64::MAX as u64);
        assert_eq!(content::plaintext_size(content::cipher_size(size)), size, "size round trip");
        let _ = content::block_count(size);
    }
    let _ = content::is_hole(data);
    let _ = HEADER_LEN;
}

/// A KMS ciphertext blob (file header slots, names keys, `kmsfs decrypt` input).
pub fn kms_blob(data: &[u8]) {
    let Ok((header, sealed)) = BlobHeader::parse(data) else { return };
    assert_eq!(header.encode()[..], data[..blob::HEADER_LEN], "the header encodes back to its bytes");
    let cipher = fixed_key().cipher();
    let context = fixed_context().encode();
    if let Ok(plain) = blob::open(&cipher, &header, &context, sealed) {
        // Only a blob sealed under this key, header and context gets here: it must not open
        // under another context or another key version.
        assert!(blob::open(&cipher, &header, &EncryptionContext::new().encode(), sealed).is_err());
        let other = BlobHeader { key_version: header.key_version.wrapping_add(1), ..header.clone() };
        assert!(blob::open(&cipher, &other, &context, sealed).is_err());
        let again = blob::seal(&cipher, &header, &context, &plain);
        let (h, s) = BlobHeader::parse(&again).expect("a sealed blob parses");
        assert_eq!(*blob::open(&cipher, &h, &context, s).expect("a sealed blob opens"), *plain);
    }
}

/// `kmsfs.volume` (JSON at the top of a cipher directory).
pub fn volume_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = VolumeConfig::parse(text, Path::new("kmsfs.volume")) else { return };
    let json = serde_json::to_string(&config).expect("a config serializes");
    assert_eq!(VolumeConfig::parse(&json, Path::new("again")).expect("round trip"), config);
    let _ = config.file_context(&[1; 16]).encode();
    let _ = config.names_context().encode();
    use base64::Engine;
    if let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(&config.names_key) {
        let _ = BlobHeader::parse(&blob);
    }
}

/// A key policy document (`kmsfs policy put`), evaluated for a few requests; the bytes after
/// the first NUL, if any, are also tried as a glob pattern and text.
pub fn key_policy(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (doc, rest) = text.split_once('\0').unwrap_or((&text, ""));
    if let Some((pattern, subject)) = rest.split_once('\0') {
        let _ = policy::glob(pattern, subject);
    }
    let _ = policy::parse_grantee(doc);
    let Ok(parsed) = Policy::parse(doc) else { return };
    let _ = parsed.uses_groups();
    let context = EncryptionContext::new().with("kmsfs:volume", "v").with("dept", "finance");
    let caller = |uid: u32| Principal {
        uid,
        gid: uid,
        groups: vec![uid, 27],
        user: format!("u{uid}"),
        pid: None,
        remote: None,
    };
    for uid in [0, 1000] {
        for action in ["kms:Decrypt", "kms:GenerateDataKey", "kms:ReEncryptTo", "kms:PutKeyPolicy"] {
            for path in [None, Some("/finance/q1/report.pdf")] {
                let caller = caller(uid);
                let request =
                    Request { caller: &caller, action, context: &context, path, now: 1_800_000_000 };
                match parsed.decide(&[], &request) {
                    Decision::Allow(why) | Decision::Deny(why) => assert!(!why.is_empty()),
                }
            }
        }
    }
}

/// `kmsfs.dir` / `kmsfs.dir.bak` (JSON in every backing directory).
pub fn dir_meta(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(meta) = DirMeta::parse(text) else { return };
    let iv = meta.iv_bytes().expect("a parsed copy has an IV");
    let blob = meta.names_key_blob().expect("a parsed copy has a names key");
    let _ = BlobHeader::parse(&blob);
    let _ = DirMeta::context("volume", &meta.iv).encode();
    let json = serde_json::to_string(&meta).expect("metadata serializes");
    let again = DirMeta::parse(&json).expect("round trip");
    assert_eq!(again, meta);
    assert_eq!(again.iv_bytes(), Some(iv));
}

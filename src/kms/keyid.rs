//! Key ids: random UUIDs (version 4) as AWS uses, e.g. `1234abcd-12ab-34cd-56ef-1234567890ab`,
//! and multi-Region key ids, `mrk-` and 32 hex digits as in AWS
//! (`mrk-1234abcd12ab34cd56ef1234567890ab`). Inside ciphertext blobs and file headers both
//! travel as their 16 raw bytes; the blob says which form (`kms::blob`).

use crate::crypto;
use crate::encoding::hex;

pub const KEY_ID_BYTES: usize = 16;

pub fn new_key_id() -> String {
    let mut b = crypto::random_bytes::<KEY_ID_BYTES>();
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    from_bytes(&b)
}

/// Prefix of every multi-Region key id.
pub const MRK_PREFIX: &str = "mrk-";

/// A new multi-Region key id.
pub fn new_mrk_id() -> String {
    mrk_from_bytes(&crypto::random_bytes::<KEY_ID_BYTES>())
}

/// Whether `key_id` names a multi-Region key (by its form alone).
pub fn is_mrk_id(key_id: &str) -> bool {
    mrk_to_bytes(key_id).is_some()
}

/// The 16 bytes of a multi-Region key id, or `None` if the text is not one (lower-case hex,
/// as kmsfs writes them).
pub fn mrk_to_bytes(key_id: &str) -> Option<[u8; KEY_ID_BYTES]> {
    let digits = key_id.strip_prefix(MRK_PREFIX)?;
    if digits.len() != 32 || !digits.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return None;
    }
    let mut out = [0u8; KEY_ID_BYTES];
    for (i, pair) in digits.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

pub fn mrk_from_bytes(b: &[u8; KEY_ID_BYTES]) -> String {
    format!("{MRK_PREFIX}{}", hex(b))
}

/// The 16 bytes of a key id, or `None` if the text is not a UUID.
pub fn to_bytes(key_id: &str) -> Option<[u8; KEY_ID_BYTES]> {
    let digits: Vec<u8> = key_id.bytes().filter(|&c| c != b'-').collect();
    if digits.len() != 32 || key_id.len() != 36 {
        return None;
    }
    let mut out = [0u8; KEY_ID_BYTES];
    for (i, pair) in digits.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

pub fn from_bytes(b: &[u8; KEY_ID_BYTES]) -> String {
    let h = hex(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Whether `text` looks like a key id (rather than an alias or a typo).
pub fn is_key_id(text: &str) -> bool {
    to_bytes(text).is_some() || is_mrk_id(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = new_key_id();
        assert!(is_key_id(&id));
        assert_eq!(from_bytes(&to_bytes(&id).unwrap()), id);
        assert_eq!(&id[14..15], "4");
        assert!(!is_key_id("alias/foo"));
        assert!(!is_key_id("1234abcd-12ab-34cd-56ef-1234567890zz"));
    }

    #[test]
    fn multi_region_ids_round_trip_and_are_not_uuids() {
        let id = new_mrk_id();
        assert!(id.starts_with("mrk-") && id.len() == 36, "{id}");
        assert!(is_key_id(&id) && is_mrk_id(&id));
        assert_eq!(to_bytes(&id), None);
        assert_eq!(mrk_from_bytes(&mrk_to_bytes(&id).unwrap()), id);
        assert!(!is_mrk_id("mrk-1234"));
        assert!(!is_mrk_id("mrk-1234ABCD12ab34cd56ef1234567890ab"));
        assert!(!is_mrk_id(&new_key_id()));
    }
}

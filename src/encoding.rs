//! Text encodings of bytes that several layers need (ids, IVs, random name parts).

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    // Not `format!` per byte: this runs for every file opened or created (its encryption
    // context names the file id).
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

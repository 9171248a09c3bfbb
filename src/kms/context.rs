//! Encryption context: the non-secret key/value pairs bound to a ciphertext, as in AWS KMS.
//! Decryption needs exactly the same pairs.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct EncryptionContext(pub BTreeMap<String, String>);

impl EncryptionContext {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.0.insert(key.to_string(), value.to_string());
        self
    }

    /// Parses `k=v` pairs from the command line; a key given twice is refused.
    pub fn from_pairs<S: AsRef<str>>(pairs: &[S]) -> Result<Self> {
        let mut map = BTreeMap::new();
        for pair in pairs {
            let pair = pair.as_ref();
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                Error::InvalidArgument(format!("encryption context '{pair}' is not of the form key=value"))
            })?;
            if k.is_empty() {
                return Err(Error::InvalidArgument(format!("encryption context '{pair}' has an empty key")));
            }
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(Error::InvalidArgument(format!("encryption context key '{k}' is given twice")));
            }
        }
        Ok(EncryptionContext(map))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The canonical byte encoding bound into ciphertexts: a count, then each pair sorted
    /// by key, every string length-prefixed (u32 big-endian). Unambiguous: no choice of
    /// keys and values can collide with another, unlike plain concatenation.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for (k, v) in &self.0 {
            for s in [k, v] {
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        out
    }

    /// JSON text for the audit trail (empty string for no context).
    pub fn to_audit_string(&self) -> String {
        if self.0.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&self.0).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_order_independent_and_unambiguous() {
        let a = EncryptionContext::from_pairs(&["b=2", "a=1"]).unwrap();
        let b = EncryptionContext::from_pairs(&["a=1", "b=2"]).unwrap();
        assert_eq!(a.encode(), b.encode());
        // "ab"+"c" vs "a"+"bc" must differ.
        let c = EncryptionContext::new().with("ab", "c");
        let d = EncryptionContext::new().with("a", "bc");
        assert_ne!(c.encode(), d.encode());
        assert_ne!(EncryptionContext::new().encode(), EncryptionContext::new().with("", "").encode());
    }

    #[test]
    fn bad_pairs_are_refused() {
        assert!(EncryptionContext::from_pairs(&["novalue"]).is_err());
        assert!(EncryptionContext::from_pairs(&["=v"]).is_err());
        assert!(EncryptionContext::from_pairs(&["a=1", "a=2"]).is_err());
        assert_eq!(EncryptionContext::from_pairs(&["a=b=c"]).unwrap().get("a"), Some("b=c"));
    }
}

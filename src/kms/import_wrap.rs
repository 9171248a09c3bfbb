//! The wrapping algorithms of key import (AWS's WrappingAlgorithm), by the system OpenSSL:
//!
//! - `RSAES_OAEP_SHA_1` / `RSAES_OAEP_SHA_256`: the material is RSA-OAEP encrypted under the
//!   wrapping key (MGF1 with the same digest, no label), so it must fit one OAEP block;
//! - `RSA_AES_KEY_WRAP_SHA_1` / `RSA_AES_KEY_WRAP_SHA_256`: an ephemeral 256-bit AES key is
//!   RSA-OAEP encrypted (as above), followed by the material wrapped under that AES key with
//!   AES key wrap with padding (RFC 5649, OpenSSL's `id-aes256-wrap-pad`), for material of any
//!   length (RSA and ECC private keys).
//!
//! `unwrap` is the service's side, `wrap` the CLI's (`kmsfs key import`, which does what an
//! operator does with `openssl pkeyutl` / `openssl enc`).

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use openssl::md::Md;
use openssl::pkey::{HasPrivate, HasPublic, PKey, PKeyRef, Private, Public};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use zeroize::Zeroizing;

use super::aws_errors::UNSUPPORTED;
use crate::error::{Error, Result};

/// AWS's WrappingAlgorithm values that kmsfs accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrappingAlgorithm {
    OaepSha1,
    OaepSha256,
    RsaAesKeyWrapSha1,
    RsaAesKeyWrapSha256,
}

/// AWS's WrappingKeySpec values that kmsfs offers (RSA modulus bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrappingKeySpec(pub u32);

/// Length of the ephemeral AES key of the RSA_AES_KEY_WRAP algorithms.
const AES_KEY_LEN: usize = 32;

impl WrappingAlgorithm {
    pub fn parse(name: &str) -> Result<WrappingAlgorithm> {
        Ok(match name {
            "RSAES_OAEP_SHA_1" => WrappingAlgorithm::OaepSha1,
            "RSAES_OAEP_SHA_256" => WrappingAlgorithm::OaepSha256,
            "RSA_AES_KEY_WRAP_SHA_1" => WrappingAlgorithm::RsaAesKeyWrapSha1,
            "RSA_AES_KEY_WRAP_SHA_256" => WrappingAlgorithm::RsaAesKeyWrapSha256,
            // PKCS#1 v1.5 encryption is open to padding-oracle attacks (AWS retired it for
            // imports too); SM2 exists only in AWS's China regions.
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{UNSUPPORTED}WrappingAlgorithm {name} is not supported; use RSAES_OAEP_SHA_256, \
                     RSAES_OAEP_SHA_1, RSA_AES_KEY_WRAP_SHA_256 or RSA_AES_KEY_WRAP_SHA_1"
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WrappingAlgorithm::OaepSha1 => "RSAES_OAEP_SHA_1",
            WrappingAlgorithm::OaepSha256 => "RSAES_OAEP_SHA_256",
            WrappingAlgorithm::RsaAesKeyWrapSha1 => "RSA_AES_KEY_WRAP_SHA_1",
            WrappingAlgorithm::RsaAesKeyWrapSha256 => "RSA_AES_KEY_WRAP_SHA_256",
        }
    }

    fn md(self) -> &'static openssl::md::MdRef {
        match self {
            WrappingAlgorithm::OaepSha1 | WrappingAlgorithm::RsaAesKeyWrapSha1 => Md::sha1(),
            WrappingAlgorithm::OaepSha256 | WrappingAlgorithm::RsaAesKeyWrapSha256 => Md::sha256(),
        }
    }

    fn with_aes(self) -> bool {
        matches!(self, WrappingAlgorithm::RsaAesKeyWrapSha1 | WrappingAlgorithm::RsaAesKeyWrapSha256)
    }
}

impl WrappingKeySpec {
    pub fn parse(name: &str) -> Result<WrappingKeySpec> {
        match name {
            "RSA_2048" => Ok(WrappingKeySpec(2048)),
            "RSA_3072" => Ok(WrappingKeySpec(3072)),
            "RSA_4096" => Ok(WrappingKeySpec(4096)),
            _ => Err(Error::InvalidArgument(format!(
                "{UNSUPPORTED}WrappingKeySpec {name} is not supported; use RSA_2048, RSA_3072 or RSA_4096"
            ))),
        }
    }

    pub fn as_str(self) -> String {
        format!("RSA_{}", self.0)
    }

    /// A fresh RSA wrapping key of this size.
    pub fn generate(self) -> Result<PKey<Private>> {
        let rsa = openssl::rsa::Rsa::generate(self.0).map_err(|e| ssl("generate a wrapping key", e))?;
        PKey::from_rsa(rsa).map_err(|e| ssl("generate a wrapping key", e))
    }
}

fn ssl(what: &str, e: openssl::error::ErrorStack) -> Error {
    Error::Io(format!("OpenSSL failed to {what}: {e}"))
}

fn bad_wrapping() -> Error {
    Error::InvalidCiphertext(
        "the encrypted key material does not decrypt with the wrapping key and algorithm of this import \
         token"
            .into(),
    )
}

fn oaep_ctx<T>(ctx: &mut PkeyCtx<T>, md: &'static openssl::md::MdRef) -> Result<()> {
    let set = |e| ssl("set up RSA-OAEP", e);
    ctx.set_rsa_padding(Padding::PKCS1_OAEP).map_err(set)?;
    ctx.set_rsa_oaep_md(md).map_err(set)?;
    ctx.set_rsa_mgf1_md(md).map_err(set)
}

fn oaep_decrypt<T: HasPrivate>(
    key: &PKeyRef<T>,
    md: &'static openssl::md::MdRef,
    data: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let mut ctx = PkeyCtx::new(key).map_err(|e| ssl("decrypt", e))?;
    ctx.decrypt_init().map_err(|e| ssl("decrypt", e))?;
    oaep_ctx(&mut ctx, md)?;
    let mut out = Zeroizing::new(Vec::new());
    ctx.decrypt_to_vec(data, &mut out).map_err(|_| bad_wrapping())?;
    Ok(out)
}

fn oaep_encrypt<T: HasPublic>(
    key: &PKeyRef<T>,
    md: &'static openssl::md::MdRef,
    data: &[u8],
) -> Result<Vec<u8>> {
    let mut ctx = PkeyCtx::new(key).map_err(|e| ssl("encrypt", e))?;
    ctx.encrypt_init().map_err(|e| ssl("encrypt", e))?;
    oaep_ctx(&mut ctx, md)?;
    let mut out = Vec::new();
    ctx.encrypt_to_vec(data, &mut out).map_err(|_| {
        Error::InvalidArgument(format!(
            "{} bytes of key material do not fit one RSA-OAEP block of a {}-bit wrapping key; use \
             RSA_AES_KEY_WRAP_SHA_256",
            data.len(),
            key.bits()
        ))
    })?;
    Ok(out)
}

/// AES key wrap with padding (RFC 5649) under a 256-bit key, its default IV (A65959A6).
pub fn aes_kwp(key: &[u8], plain: &[u8], encrypt: bool) -> Result<Zeroizing<Vec<u8>>> {
    let mut ctx = CipherCtx::new().map_err(|e| ssl("set up AES key wrap", e))?;
    let cipher = Cipher::aes_256_wrap_pad();
    let init = if encrypt {
        ctx.encrypt_init(Some(cipher), Some(key), None)
    } else {
        ctx.decrypt_init(Some(cipher), Some(key), None)
    };
    init.map_err(|e| ssl("set up AES key wrap", e))?;
    let mut out = Zeroizing::new(vec![0u8; plain.len() + 16 + cipher.block_size()]);
    let n = ctx.cipher_update(plain, Some(&mut out)).map_err(|_| bad_wrapping())?;
    let m = ctx.cipher_final(&mut out[n..]).map_err(|_| bad_wrapping())?;
    out.truncate(n + m);
    Ok(out)
}

/// The key material inside `encrypted`, unwrapped with the private wrapping key. Anything
/// that does not unwrap is InvalidCiphertext.
pub fn unwrap(alg: WrappingAlgorithm, key: &PKey<Private>, encrypted: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if !alg.with_aes() {
        return oaep_decrypt(key, alg.md(), encrypted);
    }
    let k = key.size();
    if encrypted.len() <= k {
        return Err(bad_wrapping());
    }
    let (rsa_part, wrapped) = encrypted.split_at(k);
    let aes_key = oaep_decrypt(key, alg.md(), rsa_part)?;
    if aes_key.len() != AES_KEY_LEN {
        return Err(bad_wrapping());
    }
    aes_kwp(&aes_key, wrapped, false)
}

/// `material` wrapped for the public wrapping key (DER SubjectPublicKeyInfo) as `alg` says.
pub fn wrap(alg: WrappingAlgorithm, public_der: &[u8], material: &[u8]) -> Result<Vec<u8>> {
    let key: PKey<Public> = PKey::public_key_from_der(public_der)
        .map_err(|_| Error::InvalidArgument("the wrapping key is not a DER RSA public key".into()))?;
    if !alg.with_aes() {
        return oaep_encrypt(&key, alg.md(), material);
    }
    let aes_key = Zeroizing::new(crate::crypto::random_bytes::<AES_KEY_LEN>());
    let mut out = oaep_encrypt(&key, alg.md(), aes_key.as_slice())?;
    out.extend_from_slice(&aes_kwp(aes_key.as_slice(), material, true)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_round_trips_and_a_flipped_bit_is_invalid_ciphertext() {
        let key = WrappingKeySpec(2048).generate().unwrap();
        let public = key.public_key_to_der().unwrap();
        let material = [7u8; 32];
        for alg in [
            WrappingAlgorithm::OaepSha1,
            WrappingAlgorithm::OaepSha256,
            WrappingAlgorithm::RsaAesKeyWrapSha1,
            WrappingAlgorithm::RsaAesKeyWrapSha256,
        ] {
            let mut wrapped = wrap(alg, &public, &material).unwrap();
            assert_eq!(unwrap(alg, &key, &wrapped).unwrap().as_slice(), &material, "{alg:?}");
            let last = wrapped.len() - 1;
            wrapped[last] ^= 1;
            assert!(matches!(unwrap(alg, &key, &wrapped), Err(Error::InvalidCiphertext(_))), "{alg:?}");
        }
    }

    #[test]
    fn aes_key_wrap_with_padding_pads_to_semiblocks() {
        // Interoperability with `openssl enc -id-aes256-wrap-pad` is checked by tests/api.
        let key = [0x11u8; 32];
        let wrapped = aes_kwp(&key, b"material", true).unwrap();
        assert_eq!(wrapped.len(), 16, "8 octets pad to one semiblock plus the AIV");
        assert_eq!(aes_kwp(&key, &wrapped, false).unwrap().as_slice(), b"material");
    }

    #[test]
    fn retired_algorithms_are_unsupported() {
        for name in ["RSAES_PKCS1_V1_5", "SM2PKE"] {
            assert!(WrappingAlgorithm::parse(name).unwrap_err().to_string().contains("not supported"));
        }
        assert!(WrappingKeySpec::parse("SM2").is_err());
    }
}

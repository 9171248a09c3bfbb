//! Key specs, key usages and the algorithms each allows, with AWS KMS's names and rules:
//! which spec may have which usage, which signing / encryption / MAC / key-agreement
//! algorithms a key offers, digest lengths and RSA-OAEP plaintext limits.

use crate::error::{Error, Result};
use crate::kms::aws_errors::INVALID_KEY_USAGE;

/// An elliptic curve kmsfs can hold a key on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    P256,
    P384,
    P521,
    Secp256k1,
    Ed25519,
}

/// What kind of key material a KMS key has (AWS KeySpec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeySpec {
    #[default]
    Symmetric,
    /// RSA with this modulus size in bits.
    Rsa(u32),
    Ecc(Curve),
    /// HMAC with this digest size in bits.
    Hmac(u32),
}

/// What a key may be used for (AWS KeyUsage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyUsage {
    #[default]
    EncryptDecrypt,
    SignVerify,
    GenerateVerifyMac,
    KeyAgreement,
}

pub const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";

impl KeySpec {
    pub fn parse(s: &str) -> Option<KeySpec> {
        Some(match s {
            SYMMETRIC_DEFAULT => KeySpec::Symmetric,
            "RSA_2048" => KeySpec::Rsa(2048),
            "RSA_3072" => KeySpec::Rsa(3072),
            "RSA_4096" => KeySpec::Rsa(4096),
            "ECC_NIST_P256" => KeySpec::Ecc(Curve::P256),
            "ECC_NIST_P384" => KeySpec::Ecc(Curve::P384),
            "ECC_NIST_P521" => KeySpec::Ecc(Curve::P521),
            "ECC_SECG_P256K1" => KeySpec::Ecc(Curve::Secp256k1),
            "ECC_NIST_EDWARDS25519" => KeySpec::Ecc(Curve::Ed25519),
            "HMAC_224" => KeySpec::Hmac(224),
            "HMAC_256" => KeySpec::Hmac(256),
            "HMAC_384" => KeySpec::Hmac(384),
            "HMAC_512" => KeySpec::Hmac(512),
            _ => return None,
        })
    }

    /// A KeySpec name, refusing the ones AWS has that kmsfs does not (SM2, ML-DSA).
    pub fn parse_supported(s: &str) -> Result<KeySpec> {
        KeySpec::parse(s).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}KeySpec {s} is not supported by kmsfs",
                crate::kms::aws_errors::UNSUPPORTED
            ))
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeySpec::Symmetric => SYMMETRIC_DEFAULT,
            KeySpec::Rsa(2048) => "RSA_2048",
            KeySpec::Rsa(3072) => "RSA_3072",
            KeySpec::Rsa(_) => "RSA_4096",
            KeySpec::Ecc(Curve::P256) => "ECC_NIST_P256",
            KeySpec::Ecc(Curve::P384) => "ECC_NIST_P384",
            KeySpec::Ecc(Curve::P521) => "ECC_NIST_P521",
            KeySpec::Ecc(Curve::Secp256k1) => "ECC_SECG_P256K1",
            KeySpec::Ecc(Curve::Ed25519) => "ECC_NIST_EDWARDS25519",
            KeySpec::Hmac(224) => "HMAC_224",
            KeySpec::Hmac(256) => "HMAC_256",
            KeySpec::Hmac(384) => "HMAC_384",
            KeySpec::Hmac(_) => "HMAC_512",
        }
    }

    pub fn is_symmetric(self) -> bool {
        self == KeySpec::Symmetric
    }

    /// Whether the key has a private key and a public key to download.
    pub fn is_asymmetric(self) -> bool {
        matches!(self, KeySpec::Rsa(_) | KeySpec::Ecc(_))
    }

    /// The usages AWS allows with this spec.
    pub fn usages(self) -> &'static [KeyUsage] {
        use KeyUsage::*;
        match self {
            KeySpec::Symmetric => &[EncryptDecrypt],
            KeySpec::Rsa(_) => &[EncryptDecrypt, SignVerify],
            // AWS offers key agreement on the NIST curves only.
            KeySpec::Ecc(Curve::P256 | Curve::P384 | Curve::P521) => &[SignVerify, KeyAgreement],
            KeySpec::Ecc(Curve::Secp256k1 | Curve::Ed25519) => &[SignVerify],
            KeySpec::Hmac(_) => &[GenerateVerifyMac],
        }
    }

    /// Refuses a spec/usage pair AWS refuses (ValidationException).
    pub fn check_usage(self, usage: KeyUsage) -> Result<()> {
        if self.usages().contains(&usage) {
            return Ok(());
        }
        let allowed: Vec<&str> = self.usages().iter().map(|u| u.as_str()).collect();
        Err(Error::InvalidArgument(format!(
            "KeyUsage {} is not compatible with KeySpec {}; it allows {}",
            usage.as_str(),
            self.as_str(),
            allowed.join(", ")
        )))
    }

    /// Signing algorithms of a SIGN_VERIFY key of this spec.
    pub fn signing_algorithms(self) -> &'static [&'static str] {
        match self {
            KeySpec::Rsa(_) => &[
                "RSASSA_PKCS1_V1_5_SHA_256",
                "RSASSA_PKCS1_V1_5_SHA_384",
                "RSASSA_PKCS1_V1_5_SHA_512",
                "RSASSA_PSS_SHA_256",
                "RSASSA_PSS_SHA_384",
                "RSASSA_PSS_SHA_512",
            ],
            KeySpec::Ecc(Curve::P256 | Curve::Secp256k1) => &["ECDSA_SHA_256"],
            KeySpec::Ecc(Curve::P384) => &["ECDSA_SHA_384"],
            KeySpec::Ecc(Curve::P521) => &["ECDSA_SHA_512"],
            // Pure Ed25519 only: the system OpenSSL (3.0) has no Ed25519ph.
            KeySpec::Ecc(Curve::Ed25519) => &["ED25519_SHA_512"],
            _ => &[],
        }
    }

    /// The algorithms DescribeKey and GetPublicKey list for a key of this spec and usage:
    /// (member name, algorithms).
    pub fn algorithms(self, usage: KeyUsage) -> (&'static str, &'static [&'static str]) {
        match (self, usage) {
            (KeySpec::Symmetric, _) => ("EncryptionAlgorithms", &[SYMMETRIC_DEFAULT]),
            (KeySpec::Rsa(_), KeyUsage::EncryptDecrypt) => {
                ("EncryptionAlgorithms", &["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"])
            }
            (KeySpec::Hmac(224), _) => ("MacAlgorithms", &["HMAC_SHA_224"]),
            (KeySpec::Hmac(256), _) => ("MacAlgorithms", &["HMAC_SHA_256"]),
            (KeySpec::Hmac(384), _) => ("MacAlgorithms", &["HMAC_SHA_384"]),
            (KeySpec::Hmac(_), _) => ("MacAlgorithms", &["HMAC_SHA_512"]),
            (_, KeyUsage::KeyAgreement) => ("KeyAgreementAlgorithms", &["ECDH"]),
            (spec, _) => ("SigningAlgorithms", spec.signing_algorithms()),
        }
    }

    /// The length in bytes of an HMAC key of this spec.
    pub fn hmac_key_len(self) -> Option<usize> {
        match self {
            KeySpec::Hmac(bits) => Some(bits as usize / 8),
            _ => None,
        }
    }
}

impl KeyUsage {
    pub fn parse(s: &str) -> Option<KeyUsage> {
        Some(match s {
            "ENCRYPT_DECRYPT" => KeyUsage::EncryptDecrypt,
            "SIGN_VERIFY" => KeyUsage::SignVerify,
            "GENERATE_VERIFY_MAC" => KeyUsage::GenerateVerifyMac,
            "KEY_AGREEMENT" => KeyUsage::KeyAgreement,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyUsage::EncryptDecrypt => "ENCRYPT_DECRYPT",
            KeyUsage::SignVerify => "SIGN_VERIFY",
            KeyUsage::GenerateVerifyMac => "GENERATE_VERIFY_MAC",
            KeyUsage::KeyAgreement => "KEY_AGREEMENT",
        }
    }
}

/// The digest a signing or MAC algorithm hashes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Digest {
    /// The digest's length in bytes.
    pub fn size(self) -> usize {
        match self {
            Digest::Sha1 => 20,
            Digest::Sha224 => 28,
            Digest::Sha256 => 32,
            Digest::Sha384 => 48,
            Digest::Sha512 => 64,
        }
    }

    pub fn md(self) -> openssl::hash::MessageDigest {
        use openssl::hash::MessageDigest;
        match self {
            Digest::Sha1 => MessageDigest::sha1(),
            Digest::Sha224 => MessageDigest::sha224(),
            Digest::Sha256 => MessageDigest::sha256(),
            Digest::Sha384 => MessageDigest::sha384(),
            Digest::Sha512 => MessageDigest::sha512(),
        }
    }
}

/// How a signature is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Pkcs1v15,
    /// RSASSA-PSS with MGF1 of the same digest and a salt as long as the digest (as AWS).
    Pss,
    Ecdsa,
    /// Pure Ed25519: the message itself is signed (SHA-512 is inside the scheme).
    Ed25519,
}

/// A signing algorithm: scheme and digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigningAlgorithm {
    pub name: &'static str,
    pub scheme: Scheme,
    pub digest: Digest,
}

impl SigningAlgorithm {
    pub fn parse(name: &str) -> Option<SigningAlgorithm> {
        SIGNING_ALGORITHMS.iter().find(|a| a.name == name).copied()
    }

    /// The algorithm `name` if a key of `spec` offers it, else InvalidKeyUsageException.
    pub fn for_key(name: &str, spec: KeySpec) -> Result<SigningAlgorithm> {
        if !spec.signing_algorithms().contains(&name) {
            return Err(Error::InvalidArgument(format!(
                "{INVALID_KEY_USAGE}the signing algorithm {name} is not compatible with a {} key; it offers {}",
                spec.as_str(),
                spec.signing_algorithms().join(", ")
            )));
        }
        SigningAlgorithm::parse(name)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown signing algorithm {name}")))
    }
}

/// Every signing algorithm kmsfs knows, by AWS name.
const SIGNING_ALGORITHMS: &[SigningAlgorithm] = &[
    SigningAlgorithm { name: "RSASSA_PKCS1_V1_5_SHA_256", scheme: Scheme::Pkcs1v15, digest: Digest::Sha256 },
    SigningAlgorithm { name: "RSASSA_PKCS1_V1_5_SHA_384", scheme: Scheme::Pkcs1v15, digest: Digest::Sha384 },
    SigningAlgorithm { name: "RSASSA_PKCS1_V1_5_SHA_512", scheme: Scheme::Pkcs1v15, digest: Digest::Sha512 },
    SigningAlgorithm { name: "RSASSA_PSS_SHA_256", scheme: Scheme::Pss, digest: Digest::Sha256 },
    SigningAlgorithm { name: "RSASSA_PSS_SHA_384", scheme: Scheme::Pss, digest: Digest::Sha384 },
    SigningAlgorithm { name: "RSASSA_PSS_SHA_512", scheme: Scheme::Pss, digest: Digest::Sha512 },
    SigningAlgorithm { name: "ECDSA_SHA_256", scheme: Scheme::Ecdsa, digest: Digest::Sha256 },
    SigningAlgorithm { name: "ECDSA_SHA_384", scheme: Scheme::Ecdsa, digest: Digest::Sha384 },
    SigningAlgorithm { name: "ECDSA_SHA_512", scheme: Scheme::Ecdsa, digest: Digest::Sha512 },
    SigningAlgorithm { name: "ED25519_SHA_512", scheme: Scheme::Ed25519, digest: Digest::Sha512 },
];

/// An RSA encryption algorithm (OAEP with MGF1 of the same digest, no label).
pub fn oaep_digest(name: &str) -> Option<Digest> {
    match name {
        "RSAES_OAEP_SHA_1" => Some(Digest::Sha1),
        "RSAES_OAEP_SHA_256" => Some(Digest::Sha256),
        _ => None,
    }
}

/// The longest plaintext RSA-OAEP takes with a `bits` modulus: k - 2·hLen - 2 (AWS's
/// limits: RSA_2048 214 / 190 bytes with SHA-1 / SHA-256).
pub fn oaep_max_plaintext(bits: u32, digest: Digest) -> usize {
    (bits as usize / 8) - 2 * digest.size() - 2
}

/// The digest of an HMAC algorithm name, if it is one.
pub fn mac_digest(name: &str) -> Option<Digest> {
    match name {
        "HMAC_SHA_224" => Some(Digest::Sha224),
        "HMAC_SHA_256" => Some(Digest::Sha256),
        "HMAC_SHA_384" => Some(Digest::Sha384),
        "HMAC_SHA_512" => Some(Digest::Sha512),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_name_round_trips() {
        for name in [
            "SYMMETRIC_DEFAULT",
            "RSA_2048",
            "RSA_3072",
            "RSA_4096",
            "ECC_NIST_P256",
            "ECC_NIST_P384",
            "ECC_NIST_P521",
            "ECC_SECG_P256K1",
            "ECC_NIST_EDWARDS25519",
            "HMAC_224",
            "HMAC_256",
            "HMAC_384",
            "HMAC_512",
        ] {
            assert_eq!(KeySpec::parse(name).unwrap().as_str(), name);
        }
        assert!(KeySpec::parse("SM2").is_none());
    }

    #[test]
    fn usages_follow_aws() {
        assert!(KeySpec::Rsa(2048).check_usage(KeyUsage::EncryptDecrypt).is_ok());
        assert!(KeySpec::Ecc(Curve::P256).check_usage(KeyUsage::EncryptDecrypt).is_err());
        assert!(KeySpec::Ecc(Curve::P384).check_usage(KeyUsage::KeyAgreement).is_ok());
        assert!(KeySpec::Ecc(Curve::Secp256k1).check_usage(KeyUsage::KeyAgreement).is_err());
        assert!(KeySpec::Hmac(256).check_usage(KeyUsage::SignVerify).is_err());
        assert!(KeySpec::Symmetric.check_usage(KeyUsage::SignVerify).is_err());
    }

    #[test]
    fn oaep_limits_are_awss() {
        assert_eq!(oaep_max_plaintext(2048, Digest::Sha1), 214);
        assert_eq!(oaep_max_plaintext(2048, Digest::Sha256), 190);
        assert_eq!(oaep_max_plaintext(3072, Digest::Sha1), 342);
        assert_eq!(oaep_max_plaintext(3072, Digest::Sha256), 318);
        assert_eq!(oaep_max_plaintext(4096, Digest::Sha1), 470);
        assert_eq!(oaep_max_plaintext(4096, Digest::Sha256), 446);
    }

    #[test]
    fn a_signing_algorithm_must_fit_the_key() {
        assert!(SigningAlgorithm::for_key("ECDSA_SHA_256", KeySpec::Ecc(Curve::P256)).is_ok());
        let err = SigningAlgorithm::for_key("ECDSA_SHA_384", KeySpec::Ecc(Curve::P256)).unwrap_err();
        assert_eq!(crate::kms::aws_errors::error_name(&err), "InvalidKeyUsageException");
        assert!(SigningAlgorithm::for_key("RSASSA_PSS_SHA_256", KeySpec::Ecc(Curve::P256)).is_err());
    }
}

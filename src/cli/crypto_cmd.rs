//! `kmsfs encrypt|decrypt|re-encrypt|generate-data-key`: the KMS's cryptographic API on the
//! command line. Blobs are binary unless `--base64`; plaintext goes where the user says.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use zeroize::Zeroizing;

use super::output;
use super::Session;
use crate::error::{Error, Result};
use crate::kms::EncryptionContext;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  echo -n 's3cret' | kmsfs encrypt --key alias/app --context app=web > secret.bin"
)]
pub struct EncryptArgs {
    /// The key (id or alias/NAME)
    #[arg(long)]
    pub key: String,
    #[command(flatten)]
    pub io: IoArgs,
    /// Encryption context pair; decryption must give the same pairs
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  kmsfs decrypt --context app=web < secret.bin")]
pub struct DecryptArgs {
    /// Refuse a ciphertext of any other key (id or alias/NAME)
    #[arg(long)]
    pub key: Option<String>,
    #[command(flatten)]
    pub io: IoArgs,
    /// Encryption context pair, as given to encrypt
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  kmsfs re-encrypt --destination-key alias/new < old.bin > new.bin")]
pub struct ReEncryptArgs {
    /// Key to encrypt under [default: the ciphertext's own key, current version]
    #[arg(long)]
    pub destination_key: Option<String>,
    #[command(flatten)]
    pub io: IoArgs,
    /// Encryption context the ciphertext was made with
    #[arg(long = "source-context", value_name = "KEY=VALUE")]
    pub source_context: Vec<String>,
    /// Encryption context for the new ciphertext [default: the source context]
    #[arg(long = "destination-context", value_name = "KEY=VALUE")]
    pub destination_context: Vec<String>,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  kmsfs generate-data-key --key alias/app --plaintext-out dk.key --out dk.blob"
)]
pub struct GenerateDataKeyArgs {
    /// The key (id or alias/NAME) that wraps the data key
    #[arg(long)]
    pub key: String,
    /// Write the plaintext data key (32 raw bytes) to this new file, mode 0600
    #[arg(long, value_name = "PATH", required_unless_present = "without_plaintext")]
    pub plaintext_out: Option<PathBuf>,
    /// Only return the wrapped data key (GenerateDataKeyWithoutPlaintext)
    #[arg(long, conflicts_with = "plaintext_out")]
    pub without_plaintext: bool,
    /// Write the wrapped data key here instead of printing it (base64) on stdout
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Encryption context pair
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
}

/// Where bytes come from and go to.
#[derive(Debug, clap::Args)]
pub struct IoArgs {
    /// Read from this file instead of stdin
    #[arg(long = "in", value_name = "PATH")]
    pub input: Option<PathBuf>,
    /// Write to this file instead of stdout
    #[arg(long = "out", value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Ciphertext is base64 text instead of binary
    #[arg(long)]
    pub base64: bool,
}

impl IoArgs {
    fn read(&self) -> Result<Zeroizing<Vec<u8>>> {
        let mut buf = Zeroizing::new(Vec::new());
        match &self.input {
            Some(path) => {
                std::fs::File::open(path)
                    .and_then(|mut f| f.read_to_end(&mut buf))
                    .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
            }
            None => {
                std::io::stdin().read_to_end(&mut buf).map_err(|e| Error::io("cannot read stdin", e))?;
            }
        }
        Ok(buf)
    }

    fn read_ciphertext(&self) -> Result<Vec<u8>> {
        let raw = self.read()?;
        if !self.base64 {
            return Ok(raw.to_vec());
        }
        let text: String = String::from_utf8_lossy(&raw).split_whitespace().collect();
        B64.decode(text).map_err(|e| Error::InvalidArgument(format!("the input is not valid base64: {e}")))
    }

    fn write(&self, bytes: &[u8], secret: bool) -> Result<()> {
        match &self.output {
            Some(path) => write_file(path, bytes, secret),
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)
                    .and_then(|_| out.flush())
                    .map_err(|e| Error::io("cannot write stdout", e))
            }
        }
    }

    fn write_ciphertext(&self, blob: &[u8]) -> Result<()> {
        if self.base64 {
            self.write(format!("{}\n", B64.encode(blob)).as_bytes(), false)
        } else {
            self.write(blob, false)
        }
    }
}

/// Writes a file; secrets get a new file with mode 0600 (never an existing one, whose mode
/// may be wider).
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if secret {
        opts.create_new(true).mode(0o600);
    } else {
        opts.create(true).truncate(true);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

pub fn encrypt(s: &mut Session, args: EncryptArgs) -> Result<()> {
    let ctx = EncryptionContext::from_pairs(&args.context)?;
    let plaintext = args.io.read()?;
    let blob = s.kms.encrypt(&s.me.clone(), &args.key, &plaintext, &ctx)?;
    args.io.write_ciphertext(&blob)
}

pub fn decrypt(s: &mut Session, args: DecryptArgs) -> Result<()> {
    let ctx = EncryptionContext::from_pairs(&args.context)?;
    let blob = args.io.read_ciphertext()?;
    let out = s.kms.decrypt(&s.me.clone(), &blob, &ctx, args.key.as_deref())?;
    args.io.write(&out.plaintext, true)
}

pub fn re_encrypt(s: &mut Session, args: ReEncryptArgs) -> Result<()> {
    let source = EncryptionContext::from_pairs(&args.source_context)?;
    let dest = if args.destination_context.is_empty() {
        source.clone()
    } else {
        EncryptionContext::from_pairs(&args.destination_context)?
    };
    let blob = args.io.read_ciphertext()?;
    let new_blob = s.kms.re_encrypt(&s.me.clone(), &blob, &source, args.destination_key.as_deref(), &dest)?;
    args.io.write_ciphertext(&new_blob)
}

pub fn generate_data_key(s: &mut Session, args: GenerateDataKeyArgs) -> Result<()> {
    let ctx = EncryptionContext::from_pairs(&args.context)?;
    let me = s.me.clone();
    let (key_id, key_version, blob) = match &args.plaintext_out {
        Some(path) => {
            if path.exists() {
                return Err(Error::AlreadyExists(crate::error::AlreadyExists::Path {
                    path: path.clone(),
                    refusing: "the plaintext data key goes to a new file".into(),
                }));
            }
            let dk = s.kms.generate_data_key(&me, &args.key, &ctx)?;
            write_file(path, dk.plaintext.as_bytes(), true)?;
            (dk.key_id, dk.key_version, dk.ciphertext_blob)
        }
        None => s.kms.generate_data_key_without_plaintext(&me, &args.key, &ctx)?,
    };
    if let Some(path) = &args.out {
        write_file(path, &blob, false)?;
    }
    let encoded = B64.encode(&blob);
    if s.json {
        output::json(&serde_json::json!({
            "KeyId": key_id,
            "KeyVersion": key_version,
            "CiphertextBlob": encoded,
            "PlaintextFile": args.plaintext_out,
        }));
    } else if args.out.is_none() {
        println!("{encoded}");
    }
    Ok(())
}

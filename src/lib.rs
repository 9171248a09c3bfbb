//! kmsfs: an encrypted FUSE filesystem with a local, AWS-KMS-style key management service.
//!
//! Layers, each depending only on those below it (see docs/ARCHITECTURE.md):
//! `cli` → `server`, `mount` → `fs` → `volume` → `format` → `kms` → `keystore` → `crypto`.

pub mod cli;
pub mod crypto;
pub mod error;
pub mod format;
pub mod fs;
pub mod harden;
pub mod keystore;
pub mod kms;
pub mod mount;
pub mod server;
pub mod volume;

pub use error::{Error, Result};

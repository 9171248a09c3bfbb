//! kmsfs: an encrypted FUSE filesystem with a local, AWS-KMS-style key management service.
//!
//! Layers, each depending only on those below it (see docs/ARCHITECTURE.md):
//! `cli` → `server`, `mount` → `fs` → `volume` → `content` (what is stored: headers, blocks, names)
//! and `kms` (keys and decisions; `KeyRing` is the door for fs and volume) → `keystore` →
//! `crypto`, with the leaves `sys` (system calls on backing files), `encoding`, `harden`,
//! `mounts` (the mount table) and `error` beside them. `tests/layers.rs` checks the rule.

pub mod cli;
pub mod content;
pub mod crypto;
pub mod encoding;
pub mod error;
pub mod fs;
pub mod harden;
pub mod keystore;
pub mod kms;
pub mod mount;
pub mod mounts;
pub mod server;
pub mod sys;
pub mod volume;

pub use error::{Error, Result};

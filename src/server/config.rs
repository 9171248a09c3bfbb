//! `kmsfs serve` options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

pub const AFTER_HELP: &str = "\
Examples:
  kmsfs access-key create --user alice --json > alice.json
  kmsfs serve --listen 127.0.0.1:7740
  aws kms list-keys --endpoint-url http://127.0.0.1:7740
  kmsfs serve --listen 0.0.0.0:7743 --tls-cert cert.pem --tls-key key.pem
  kmsfs serve --peer us-west-2=/srv/kmsfs/west.db --peer-passphrase-file us-west-2=/root/west.pass

When every listener is bound, one line of JSON on stdout tells where:
{\"Url\": ..., \"Listen\": ..., \"Socket\": ..., \"Pid\": ...}. SIGTERM stops it gracefully.
See docs/SERVER.md.";

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TCP address to listen on (port 0: any free port). Not loopback: TLS required
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:7740")]
    pub listen: SocketAddr,
    /// Unix socket where callers are known by their uid [default: the keystore path with extension .sock]
    #[arg(long, value_name = "PATH", conflicts_with = "no_socket")]
    pub socket: Option<PathBuf>,
    /// Do not listen on a Unix socket
    #[arg(long)]
    pub no_socket: bool,
    /// Permissions of the socket, in octal
    #[arg(long, value_name = "OCTAL", default_value = "600")]
    pub socket_mode: String,
    /// Group owning the socket (with --socket-mode 660, the users who may connect)
    #[arg(long, value_name = "NAME")]
    pub socket_group: Option<String>,
    /// TLS certificate chain (PEM); with --tls-key the TCP listener speaks HTTPS
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest request body accepted
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_request_bytes: usize,
    /// Seconds a client has to send a request's headers, and its body
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub header_timeout: u64,
    /// Seconds an idle keep-alive connection is kept open
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub idle_timeout: u64,
    /// Requests a second each principal may make (bursts of as many); more are answered
    /// ThrottlingException [default: no limit]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: Option<u32>,
    /// Another region's keystore, for multi-Region keys (ReplicateKey ReplicaRegion,
    /// UpdatePrimaryRegion, sync); repeatable. Its passphrase: --peer-passphrase-file or
    /// KMSFS_REPLICA_PASSPHRASE
    #[arg(long, value_name = "REGION=PATH")]
    pub peer: Vec<String>,
    /// The passphrase file of one --peer's keystore; repeatable
    #[arg(long, value_name = "REGION=FILE")]
    pub peer_passphrase_file: Vec<String>,
    /// Seconds between syncs of multi-Region keys with the peers (rotations reach replicas,
    /// deleted replicas leave their primary)
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub peer_sync_interval: u64,
}

/// Limits applied to every connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl ServeArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_request_bytes: self.max_request_bytes,
            header_timeout: Duration::from_secs(self.header_timeout.max(1)),
            idle_timeout: Duration::from_secs(self.idle_timeout.max(1)),
        }
    }

    pub fn socket_mode(&self) -> Result<u32> {
        u32::from_str_radix(&self.socket_mode, 8).ok().filter(|m| *m <= 0o777).ok_or_else(|| {
            Error::InvalidArgument(format!("--socket-mode '{}' is not an octal mode", self.socket_mode))
        })
    }

    /// Refuses settings that would expose the service unprotected.
    pub fn check(&self) -> Result<()> {
        if !self.listen.ip().is_loopback() && self.tls_cert.is_none() {
            return Err(Error::InvalidArgument(format!(
                "--listen {} is not a loopback address: serve it with TLS (--tls-cert and \
                 --tls-key): requests carry secrets and plaintext",
                self.listen
            )));
        }
        if self.max_request_bytes < 1024 {
            return Err(Error::InvalidArgument("--max-request-bytes must be at least 1024".into()));
        }
        self.socket_mode()?;
        Ok(())
    }
}

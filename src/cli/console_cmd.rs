//! `kmsfs console`: a one-time link that signs the local user in to the web console of the
//! `kmsfs serve` running on this keystore (like a notebook server's token). The token is
//! asked for over the server's Unix socket, so the server knows the user by SO_PEERCRED;
//! no passphrase is needed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::Global;
use crate::error::{Error, Result};

pub const AFTER_HELP: &str = "\
Examples:
  kmsfs console                                  # link for the server on this keystore
  kmsfs console --server https://kms.example:7743

Prints a sign-in link, the URL alone on the last line; it works once, within 5 minutes.
Without a link, sign in on the page with an access key (kmsfs access-key create).";

#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// The address the browser reaches the server at [default: the running server's URL]
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

/// One HTTP/1.1 request over the socket; returns (status, body).
fn post(socket: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "the server's answer has no header end")
    })?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, raw[split + 4..].to_vec()))
}

pub fn run(g: &Global, args: ConsoleArgs) -> Result<()> {
    let keystore = g.keystore_path();
    let running = crate::server::running(&keystore).ok_or_else(|| {
        Error::not_found(format!(
            "no `kmsfs serve` is running on {}; start one, then run `kmsfs console` again",
            keystore.display()
        ))
    })?;
    let socket = running["Socket"].as_str().ok_or_else(|| {
        Error::InvalidArgument(
            "the running server has no Unix socket (--no-socket): sign in with an access key instead".into(),
        )
    })?;
    let base = match &args.server {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => running["Url"].as_str().unwrap_or("http://127.0.0.1:7740").to_string(),
    };
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(Error::InvalidArgument(format!("--server '{base}' is not an http:// or https:// URL")));
    }
    let (status, body) =
        post(socket, "/console/token").map_err(|e| Error::io(format!("cannot ask {socket}"), e))?;
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let path = answer["Path"].as_str().filter(|_| status == 200).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "the server refused a login link (HTTP {status}): {}",
            String::from_utf8_lossy(&body)
        ))
    })?;
    println!(
        "Sign in to the kmsfs console as {} (uid {}): open this link; it works once, within {} minutes.",
        answer["User"].as_str().unwrap_or("?"),
        answer["Uid"],
        answer["ExpiresInSeconds"].as_i64().unwrap_or(300) / 60
    );
    println!("{base}{path}");
    Ok(())
}

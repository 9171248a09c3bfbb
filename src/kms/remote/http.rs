//! A small blocking HTTP/1.1 client for the few calls a mount makes to a key service: one
//! POST per connection (`Connection: close`), over TCP or rustls, with a deadline on the
//! whole exchange so that no FUSE request waits on the network for longer than that.
//!
//! Why not hyper's client: a mount makes a handful of calls per key and hour, from
//! synchronous code; a runtime and a connection pool would be most of the cost and all of
//! the dependency tree for nothing.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::error::{Error, Result};

/// Where the key service listens: `https://HOST[:PORT]`, or `http://` on loopback only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses an endpoint URL. Plain http is refused unless the host is a loopback address
    /// (tests and a `kmsfs serve` on the same host): anything else would send credentials'
    /// signatures and wrapped keys over the network in clear.
    pub fn parse(url: &str) -> Result<Endpoint> {
        let bad = |why: &str| Error::InvalidArgument(format!("key service endpoint '{url}': {why}"));
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("must start with https:// (or http:// on loopback)"));
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || authority.contains('@') {
            return Err(bad("must be a scheme and host[:port] only, no path"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("malformed host or port"))?;
        let port = port.unwrap_or(if tls { 443 } else { 80 });
        if !tls && !is_loopback(&host) {
            return Err(bad("plain http:// is accepted on loopback only; use https://"));
        }
        Ok(Endpoint { url: url.trim_end_matches('/').to_string(), tls, host, port })
    }

    /// The Host header: the port only when it is not the scheme's default.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }
}

fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Some((h.to_string(), Some(p.parse().ok()?))),
        Some(_) => None,
        None => Some((authority.to_string(), None)),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The trust roots for https endpoints: the file named by `AWS_CA_BUNDLE` (what the AWS
/// CLI reads; for a private `kmsfs serve`), else the system's bundle (`SSL_CERT_FILE`, or
/// Debian's /etc/ssl/certs/ca-certificates.crt). Read from the file rather than compiled
/// in, so that the host's administrator decides whom the mount trusts.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>> {
    let path = match ca_file {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into()),
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path).map_err(|e| {
        Error::InvalidArgument(format!("cannot read CA certificates from {}: {e}", path.display()))
    })?;
    for cert in certs {
        let cert = cert
            .map_err(|e| Error::InvalidArgument(format!("bad CA certificate in {}: {e}", path.display())))?;
        // A bundle may hold certificates rustls cannot use; the others still count.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(Error::InvalidArgument(format!("no usable CA certificate in {}", path.display())));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Io(format!("TLS set-up: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An answer: status and body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why an exchange failed before an answer came: worth retrying.
#[derive(Debug)]
pub struct Unreachable(pub String);

/// POSTs `body` to `/` of `endpoint` with `headers`, all within `deadline` from now.
pub fn post(
    endpoint: &Endpoint,
    tls: Option<&Arc<rustls::ClientConfig>>,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> std::result::Result<Response, Unreachable> {
    let deadline = Instant::now() + timeout;
    let fail = |what: &str, e: &dyn std::fmt::Display| Unreachable(format!("{what}: {e}"));
    let addrs: Vec<_> = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| fail("cannot resolve the host", &e))?
        .collect();
    let mut last = Unreachable("the host has no address".into());
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, remaining(deadline)) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = fail(&format!("cannot connect to {addr}"), &e),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let _ = tcp.set_nodelay(true);
    let mut request = format!("POST / HTTP/1.1\r\nhost: {}\r\n", endpoint.host_header());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    if endpoint.tls {
        let config = tls.ok_or_else(|| Unreachable("no TLS configuration".into()))?;
        let name =
            ServerName::try_from(endpoint.host.clone()).map_err(|e| fail("bad TLS server name", &e))?;
        let conn = rustls::ClientConnection::new(Arc::clone(config), name).map_err(|e| fail("TLS", &e))?;
        exchange(rustls::StreamOwned::new(conn, tcp_with_deadline(tcp, deadline)?), &bytes, deadline)
    } else {
        exchange(tcp_with_deadline(tcp, deadline)?, &bytes, deadline)
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))
}

fn tcp_with_deadline(tcp: TcpStream, deadline: Instant) -> std::result::Result<TcpStream, Unreachable> {
    let left = remaining(deadline);
    tcp.set_read_timeout(Some(left))
        .and_then(|()| tcp.set_write_timeout(Some(left)))
        .map_err(|e| Unreachable(e.to_string()))?;
    Ok(tcp)
}

fn exchange(
    mut stream: impl Read + Write,
    request: &[u8],
    deadline: Instant,
) -> std::result::Result<Response, Unreachable> {
    stream
        .write_all(request)
        .and_then(|()| stream.flush())
        .map_err(|e| Unreachable(format!("sending the request: {e}")))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(resp) = parse_response(&buf)? {
            return Ok(resp);
        }
        if Instant::now() >= deadline {
            return Err(Unreachable("no complete answer before the timeout".into()));
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return parse_response(&buf)?
                    .ok_or_else(|| Unreachable("the connection closed mid-answer".into()))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(Unreachable("no answer before the timeout".into()))
            }
            Err(e) => return Err(Unreachable(format!("reading the answer: {e}"))),
        }
        if buf.len() > 1 << 20 {
            return Err(Unreachable("the answer is larger than 1 MiB".into()));
        }
    }
}

/// A complete response in `buf`, `None` while more bytes are needed.
fn parse_response(buf: &[u8]) -> std::result::Result<Option<Response>, Unreachable> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| Unreachable("the answer's header is not text".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Unreachable(format!("not an HTTP answer: '{status_line}'")))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body = &buf[end + 4..];
    if chunked {
        return Ok(dechunk(body).map(|body| Response { status, body }));
    }
    match length {
        Some(n) if body.len() >= n => Ok(Some(Response { status, body: body[..n].to_vec() })),
        Some(_) => Ok(None),
        None => Err(Unreachable("the answer has neither a length nor chunks".into())),
    }
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if body.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(Endpoint::parse("http://127.0.0.1:4566").is_ok());
        assert!(Endpoint::parse("http://localhost:80/").is_ok());
        assert!(Endpoint::parse("http://[::1]:9").is_ok());
        assert!(Endpoint::parse("http://10.0.0.1:4566").is_err());
        assert!(Endpoint::parse("http://kms.example.com").is_err());
        let e = Endpoint::parse("https://kms.eu-west-1.amazonaws.com").unwrap();
        assert_eq!((e.port, e.host_header().as_str()), (443, "kms.eu-west-1.amazonaws.com"));
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("https://x/path").is_err());
    }

    #[test]
    fn answers_are_parsed_by_length_or_chunks() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok").unwrap().is_none());
        let r = parse_response(
            b"HTTP/1.1 400 Bad\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (400, b"abc".as_slice()));
    }
}

//! Listeners: bind the TCP port (with TLS when configured) and the Unix socket, announce
//! readiness, accept until SIGTERM/SIGINT, then let open connections finish.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::config::ServeArgs;
use super::{http, Peer, Service};
use crate::error::{Error, Result};

/// How long in-flight requests get to finish after SIGTERM.
const DRAIN: Duration = Duration::from_secs(20);

/// Where a running server announces itself (read by `kmsfs status`).
pub fn state_file(keystore: &Path) -> PathBuf {
    let mut name = keystore.as_os_str().to_owned();
    name.push(".serve.json");
    PathBuf::from(name)
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<_, _>>())
        .map_err(|e| Error::InvalidArgument(format!("--tls-cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::InvalidArgument(format!("--tls-cert {}: no certificate in it", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::InvalidArgument(format!("--tls-key {}: {e}", key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidArgument(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::InvalidArgument(format!("TLS certificate and key: {e}")))?;
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Binds the socket at `path`, replacing a stale one (no server answers on it).
fn bind_socket(path: &Path, mode: u32, group: Option<&str>) -> Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::AlreadyExists(crate::error::AlreadyExists::Path {
                path: path.to_path_buf(),
                refusing: "a server listens on it; stop it or give another --socket".into(),
            }));
        }
        std::fs::remove_file(path)
            .map_err(|e| Error::io(format!("cannot remove stale {}", path.display()), e))?;
    }
    let listener =
        UnixListener::bind(path).map_err(|e| Error::io(format!("cannot listen on {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("cannot chmod {}", path.display()), e))?;
    if let Some(group) = group {
        let gid = crate::kms::principal::group_id(group)
            .ok_or_else(|| Error::InvalidArgument(format!("--socket-group: no group '{group}'")))?;
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| Error::io(format!("cannot chown {}", path.display()), e))?;
    }
    Ok(listener)
}

pub async fn serve(svc: Arc<Service>, args: &ServeArgs, keystore: &Path) -> Result<()> {
    let limits = args.limits();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls_acceptor(c, k)?),
        _ => None,
    };
    let tcp = TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {}", args.listen), e))?;
    let local = tcp.local_addr().map_err(|e| Error::io("listener address", e))?;
    let socket_path =
        (!args.no_socket).then(|| args.socket.clone().unwrap_or_else(|| keystore.with_extension("sock")));
    let unix = match &socket_path {
        Some(p) => Some(bind_socket(p, args.socket_mode()?, args.socket_group.as_deref())?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let announcement = serde_json::json!({
        "Url": format!("{scheme}://{local}"),
        "Listen": local.to_string(),
        "Socket": socket_path.as_ref().map(|p| p.display().to_string()),
        "Pid": std::process::id(),
        "Started": svc.clock.now_secs(),
    });
    let state = state_file(keystore);
    if let Err(e) = std::fs::write(&state, format!("{announcement}\n")) {
        log::warn!("cannot write {}: {e}", state.display());
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{announcement}");
        let _ = out.flush();
    }
    log::info!("serving the KMS API on {scheme}://{local}");

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("cannot watch SIGTERM", e))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Error::io("cannot watch SIGINT", e))?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            accepted = tcp.accept() => match accepted {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let (svc, rx, tls) = (Arc::clone(&svc), stop_rx.clone(), tls.clone());
                    connections.spawn(async move {
                        match tls {
                            None => http::serve_connection(stream, svc, Peer::Tcp(addr), limits, rx).await,
                            Some(acceptor) => {
                                match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                                    Ok(Ok(tls_stream)) => {
                                        http::serve_connection(tls_stream, svc, Peer::Tcp(addr), limits, rx).await
                                    }
                                    Ok(Err(e)) => log::debug!("TLS handshake with {addr} failed: {e}"),
                                    Err(_) => log::debug!("TLS handshake with {addr} timed out"),
                                }
                            }
                        }
                    });
                }
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            accepted = async { unix.as_ref().expect("guarded").accept().await }, if unix.is_some() => match accepted {
                Ok((stream, _)) => match stream.peer_cred() {
                    Ok(cred) => {
                        let peer = Peer::Unix {
                            uid: cred.uid(),
                            gid: cred.gid(),
                            pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
                        };
                        let (svc, rx) = (Arc::clone(&svc), stop_rx.clone());
                        connections.spawn(http::serve_connection(stream, svc, peer, limits, rx));
                    }
                    Err(e) => log::warn!("socket peer without credentials refused: {e}"),
                },
                Err(e) => {
                    log::warn!("accept on the socket failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    log::info!("stopping: {} connection(s) finishing", connections.len());
    drop(tcp);
    drop(unix);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(DRAIN, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        log::warn!("connections still open after {DRAIN:?}; closing them");
        connections.abort_all();
    }
    if let Some(p) = &socket_path {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_file(&state);
    Ok(())
}

//! `kmsfs serve`: the AWS KMS API (JSON 1.1 over HTTP/1.1, SigV4) on a loopback TCP port
//! (TLS for any other address) and a Unix socket whose callers are known by SO_PEERCRED.
//!
//! This layer is transport, authentication, JSON mapping and error naming only: every
//! operation is the KMS's. The data plane (Encrypt, Decrypt, GenerateDataKey*, ReEncrypt)
//! runs on the async workers against a `KeyRing` (keys unwrapped once, key states kept live
//! by the keystore's WAL index, audit events batched by the writer thread); the control
//! plane runs on blocking threads through `Kms`, one keystore transaction per call.

mod api;
mod asymmetric_api;
pub mod config;
pub mod console;
mod errors;
mod http;
mod import_api;
mod listen;
pub mod model;
pub mod peers;
mod rate_limit;
pub mod sigv4;

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::kms::audit_writer::AuditWriter;
use crate::kms::keyring::KeyRing;
use crate::kms::principal::{Remote, NO_UID};
use crate::kms::{AuditEvent, Clock, Kms, Principal};
use errors::ApiError;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub enum Peer {
    Tcp(std::net::SocketAddr),
    /// A Unix-socket peer: uid, gid, pid from SO_PEERCRED.
    Unix {
        uid: u32,
        gid: u32,
        pid: Option<u32>,
    },
}

/// What every request handler shares.
pub struct Service {
    ring: KeyRing,
    kms: Mutex<Kms>,
    clock: Arc<dyn Clock>,
    account: String,
    region: String,
    console: console::Console,
    rate_limit: Option<rate_limit::RateLimiter>,
    /// The other regions' keystores (`--peer`), for multi-Region keys.
    peers: peers::Peers,
}

impl Service {
    fn key_arn(&self, key_id: &str) -> String {
        format!("arn:aws:kms:{}:{}:key/{key_id}", self.region, self.account)
    }

    fn alias_arn(&self, alias: &str) -> String {
        format!("arn:aws:kms:{}:{}:{alias}", self.region, self.account)
    }

    /// The principal a request is decided and audited for.
    fn caller(&self, peer: &Peer, credential: Option<&crate::kms::access_keys::Credential>) -> Principal {
        match (peer, credential) {
            (Peer::Unix { uid, gid, pid }, _) => {
                let mut p = Principal::from_ids(*uid, *gid, vec![*gid], *pid);
                p.remote = Some(Arc::new(Remote {
                    arn: None,
                    account: self.account.clone(),
                    access_key_id: None,
                    source: "unix".into(),
                    unix: true,
                }));
                p
            }
            (Peer::Tcp(addr), Some(c)) => {
                let arn = format!("arn:aws:iam::{}:user/{}", self.account, c.user_name);
                let (uid, user) = match c.uid {
                    Some(uid) => (uid, crate::kms::principal::user_name(uid)),
                    None => (NO_UID, format!("iam:{}", c.user_name)),
                };
                Principal {
                    uid,
                    gid: NO_UID,
                    groups: Vec::new(),
                    user,
                    pid: None,
                    remote: Some(Arc::new(Remote {
                        arn: Some(arn),
                        account: self.account.clone(),
                        access_key_id: Some(c.access_key_id.clone()),
                        source: addr.to_string(),
                        unix: c.uid.is_some(),
                    })),
                }
            }
            (Peer::Tcp(addr), None) => Principal {
                uid: NO_UID,
                gid: NO_UID,
                groups: Vec::new(),
                user: "anonymous".into(),
                pid: None,
                remote: Some(Arc::new(Remote {
                    arn: None,
                    account: self.account.clone(),
                    access_key_id: None,
                    source: addr.to_string(),
                    unix: false,
                })),
            },
        }
    }

    /// Whether the caller's rate limit (if one is set) lets this request through.
    fn admit(&self, caller: &Principal) -> bool {
        let Some(limiter) = &self.rate_limit else { return true };
        let who = match caller.remote.as_ref().and_then(|r| r.arn.as_deref()) {
            Some(arn) => arn.to_string(),
            None => format!("uid:{}", caller.uid),
        };
        limiter.admit(&who, std::time::Instant::now())
    }

    /// Waits until the audit events of this call are committed: a call is answered only
    /// once its event is in the keystore (an answer without an audit event is an error).
    async fn audit_committed(&self) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.ring.audit_barrier(Box::new(move |ok| {
            let _ = tx.send(ok);
        }));
        rx.await.unwrap_or(false)
    }

    /// Audits a call that failed before any KMS operation could record it.
    fn record_unaudited(
        &self,
        peer: &Peer,
        caller: Option<&Principal>,
        parts: &::http::request::Parts,
        err: &ApiError,
    ) {
        let anonymous;
        let caller = match caller {
            Some(c) => c,
            None => {
                anonymous = self.caller(peer, None);
                &anonymous
            }
        };
        let mut event = AuditEvent::new(caller, operation_of(parts).unwrap_or("(none)"), self.clock.now_ms());
        if event.access_key_id.is_none() {
            event.access_key_id = claimed_access_key(parts);
        }
        event.outcome = match err.code {
            "AccessDeniedException"
            | "InvalidSignatureException"
            | "UnrecognizedClientException"
            | "MissingAuthenticationTokenException"
            | "IncompleteSignatureException" => crate::kms::Outcome::Denied,
            _ => crate::kms::Outcome::Error,
        };
        event.error_code = Some(err.code.to_string());
        event.reason = err.message.clone();
        self.ring.record(event);
    }
}

/// The operation named by `X-Amz-Target: TrentService.<Op>`.
fn operation_of(parts: &::http::request::Parts) -> Option<&str> {
    parts.headers.get("x-amz-target")?.to_str().ok()?.strip_prefix("TrentService.")
}

/// The access key id an Authorization header claims (for the audit of a refused request).
fn claimed_access_key(parts: &::http::request::Parts) -> Option<String> {
    let auth = parts.headers.get(::http::header::AUTHORIZATION)?.to_str().ok()?;
    let cred = auth.split("Credential=").nth(1)?;
    let id = cred.split('/').next()?;
    (id.len() <= 128).then(|| id.to_string())
}

/// Authenticates, validates and runs one request; returns the status and JSON body.
async fn answer(
    svc: &Arc<Service>,
    peer: &Peer,
    parts: &::http::request::Parts,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let credential = match peer {
        Peer::Unix { .. } => None,
        Peer::Tcp(_) => {
            let now = svc.clock.now_secs();
            match sigv4::verify(parts, body, &svc.ring, &svc.region, now) {
                Ok(c) => Some(c),
                Err(e) => {
                    svc.record_unaudited(peer, None, parts, &e);
                    svc.audit_committed().await;
                    return (e.status, e.body());
                }
            }
        }
    };
    let caller = svc.caller(peer, credential.as_deref());
    let op = operation_of(parts);
    let result = match op {
        _ if !svc.admit(&caller) => {
            Err(ApiError::client("ThrottlingException", "Rate exceeded for this principal; retry later"))
        }
        None => Err(ApiError::client("UnknownOperationException", "")),
        Some(op) => run_operation(svc, &caller, op, body).await,
    };
    if let Err(e) = &result {
        if !e.audited {
            svc.record_unaudited(peer, Some(&caller), parts, e);
        }
    }
    // Control-plane operations commit their event with their change; everything else went
    // to the audit writer.
    let through_writer = op.is_none_or(api::is_data_plane) || result.as_ref().is_err_and(|e| !e.audited);
    if through_writer && !svc.audit_committed().await {
        let e = ApiError::internal("the call's audit event could not be written");
        return (e.status, e.body());
    }
    match result {
        Ok(value) => (200, serde_json::to_vec(&value).expect("JSON values serialize")),
        Err(e) => (e.status, e.body()),
    }
}

async fn run_operation(
    svc: &Arc<Service>,
    caller: &Principal,
    op: &str,
    body: &[u8],
) -> std::result::Result<serde_json::Value, ApiError> {
    if !model::is_operation(op) {
        return Err(ApiError::client("UnknownOperationException", ""));
    }
    let input: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Object(Default::default())
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::client("SerializationException", format!("the body is not JSON: {e}")))?
    };
    if !input.is_object() {
        return Err(ApiError::client("SerializationException", "the body must be a JSON object"));
    }
    model::validate(op, &input)?;
    if api::is_data_plane(op) {
        // Microseconds of work against the key ring: done on the async worker.
        let _scope = crate::kms::keyring::begin_request();
        return api::data_plane(svc, caller, op, &input);
    }
    let (svc, caller, op) = (Arc::clone(svc), caller.clone(), op.to_string());
    tokio::task::spawn_blocking(move || api::control_plane(&svc, &caller, &op, &input))
        .await
        .map_err(|e| ApiError::internal(format!("the operation's thread failed: {e}")))?
}

/// The announcement of the server running on the keystore at `keystore`, if its process
/// is alive (for `kmsfs status`).
pub fn running(keystore: &std::path::Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(listen::state_file(keystore)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let pid = i32::try_from(v["Pid"].as_u64()?).ok()?;
    // SAFETY: signal 0 only asks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    alive.then_some(v)
}

/// `kmsfs serve` with the keystore at `path`, which `open` opens and unlocks (after the
/// arguments are checked, so a bad argument costs no passphrase prompt).
/// `unlock_peer` opens and unlocks a `--peer` keystore, given its `--peer-passphrase-file`.
pub fn run(
    path: &Path,
    open: impl FnOnce() -> Result<Kms>,
    unlock_peer: impl FnMut(&Path, Option<&Path>) -> Result<Kms>,
    args: config::ServeArgs,
) -> Result<()> {
    args.check()?;
    // Two malloc arenas for the whole process instead of one per thread (and per core):
    // the server's memory stays small under many connections.
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    // Unlocked while the process has one thread (`open` derives the passphrase key in a child
    // process), so the KDF's memory is never the server's.
    let kms = open()?;
    let me = Principal::current_process();
    let (account, region) = (kms.keystore().account_id()?, kms.keystore().region()?);
    let (root, clock) = (kms.root_key().clone(), Arc::clone(kms.clock()));
    // The writer gets a keystore connection of its own; the control plane keeps `kms`.
    let writer_ks = crate::keystore::Keystore::open(path)?;
    // Every data-plane call waits for its audit event's commit: an fsync each (milliseconds
    // on a disk) would be the whole latency, so commits reach the WAL without one.
    writer_ks.commit_without_fsync()?;
    let writer_kms = Kms::new(writer_ks, root.clone(), Arc::clone(&clock), &me)?;
    let checkpointer = Checkpointer::start(path)?;
    let (sink, writer) = AuditWriter::spawn_gathering(writer_kms, me.clone(), std::time::Duration::ZERO)
        .map_err(|e| Error::io("audit writer", e))?;
    let mut ring = KeyRing::open(path, root, Arc::clone(&clock), sink)?;
    ring.set_check_interval(std::time::Duration::from_millis(1));
    let console = console::Console::new(args.tls_cert.is_some());
    let rate_limit = args.rate_limit.map(rate_limit::RateLimiter::new);
    let peers = peers::Peers::open(&args, &region, unlock_peer)?;
    let svc =
        Arc::new(Service { ring, kms: Mutex::new(kms), clock, account, region, console, rate_limit, peers });
    let syncer = peers::Syncer::start(
        Arc::clone(&svc),
        me.clone(),
        std::time::Duration::from_secs(args.peer_sync_interval.max(1)),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .thread_name("kmsfs-serve")
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the server runtime", e))?;
    let result = runtime.block_on(listen::serve(Arc::clone(&svc), &args, path));
    drop(runtime);
    if let Some(syncer) = syncer {
        syncer.stop();
    }
    // The ring holds the writer's last sink: dropping the service lets the writer drain.
    match Arc::try_unwrap(svc) {
        Ok(svc) => drop(svc),
        Err(_) => log::error!("requests still hold the service at exit; audit events may be flushed late"),
    }
    writer.finish();
    checkpointer.stop();
    result
}

/// Checkpoints the keystore's WAL every half second on a connection of its own (the audit
/// writer does not, see `Keystore::commit_without_fsync`).
struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    fn start(path: &std::path::Path) -> Result<Checkpointer> {
        let ks = crate::keystore::Keystore::open(path)?;
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kmsfs-checkpoint".into())
            .spawn(move || loop {
                match rx.recv_timeout(std::time::Duration::from_millis(500)) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(e) = ks.checkpoint_passive() {
                            log::warn!("WAL checkpoint failed: {e}");
                        }
                    }
                    _ => {
                        let _ = ks.checkpoint_passive();
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("checkpoint thread", e))?;
        Ok(Checkpointer { stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

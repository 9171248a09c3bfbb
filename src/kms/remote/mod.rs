//! Master keys held by a central service that speaks the AWS KMS API (AWS KMS itself, or a
//! central `kmsfs serve`), behind the mount's key ring.
//!
//! A remote key never wraps a file's data key directly: that would cost a network round
//! trip per file open. It wraps an *intermediate key* per volume and per directory-key
//! assignment (what S3 Bucket Keys and EBS do): made with GenerateDataKey under an
//! encryption context naming the volume and the intermediate key, kept in the volume's key
//! table (`kmsfs.keys`) as the service's ciphertext, and unwrapped with one Decrypt when the
//! mount first needs it. Data keys stay random per file and are wrapped locally under the
//! intermediate key, with the same blob format as a local master-key version (the blob
//! header names the intermediate key's id, version 1). So the rest of kmsfs sees an
//! intermediate key as one more key id; only the ring knows it is remote.
//!
//! Key state follows the service: every intermediate key in use is probed (DescribeKey,
//! then a Decrypt of its ciphertext) every `check_interval` by a background thread, so no
//! FUSE request waits on the network except the first use of a key. A key disabled,
//! pending deletion or refused centrally is dropped from memory and refused for new opens;
//! open files keep their data keys. A service that cannot be reached leaves the keys already
//! unwrapped usable for `grace` after the first check that could not confirm them
//! (`check_interval + grace` after the last good one).

pub mod client;
pub mod credentials;
pub mod http;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use self::client::{CallError, CallPolicy, KmsClient};
use super::EncryptionContext;
use crate::crypto::{Cipher, SecretKey};
use crate::error::{AccessDenied, Denial, Error, KeyStateError, NotFound, Result, StateProblem};
use crate::keystore::records::KeyState;

pub use client::is_remote_key;

/// One intermediate key as the volume's key table stores it (nothing secret: the key is
/// the service's ciphertext).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IntermediateRecord {
    /// The id the local blobs name (a UUID, like a local master key's).
    pub id: String,
    /// The remote key, as the service named it when it made the ciphertext (a key ARN).
    pub key_arn: String,
    /// The service's endpoint; none: AWS KMS in the ARN's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub encryption_context: BTreeMap<String, String>,
    /// The intermediate key as the service encrypted it (base64).
    pub ciphertext_blob: String,
    pub created: String,
}

impl IntermediateRecord {
    fn context(&self) -> EncryptionContext {
        EncryptionContext(self.encryption_context.clone())
    }

    fn blob(&self) -> Result<Vec<u8>> {
        B64.decode(&self.ciphertext_blob)
            .map_err(|_| Error::InvalidCiphertext(format!("intermediate key {} is malformed", self.id)))
    }
}

/// One intermediate key as a mount sees it now (`user.kmsfs.remote_keys` on the mount's
/// root, `kmsfs status`): nothing secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyReport {
    pub intermediate_key: String,
    pub key_arn: String,
    pub endpoint: String,
    /// Whether the mount has used it (unwrapped it, or tried to).
    pub in_use: bool,
    /// The state last seen at the service (`Enabled` until seen otherwise).
    pub key_state: KeyState,
    /// Whether new opens under it are served now.
    pub usable: bool,
    /// Why not, or what the last check could not confirm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// How a mount treats its remote keys.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// How often each key in use is probed at the service.
    pub check_interval: Duration,
    /// How long keys already unwrapped keep serving while the service cannot be reached.
    pub grace: Duration,
    pub call: CallPolicy,
    /// After a first unwrap failed because the service is unreachable, opens under that key
    /// fail at once for this long instead of each waiting for the timeouts.
    pub retry_after: Duration,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        RemoteSettings {
            check_interval: Duration::from_secs(60),
            grace: Duration::from_secs(300),
            call: CallPolicy::default(),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// Saves the whole key table (the volume layer writes it atomically).
pub type TableStore = Box<dyn Fn(&[IntermediateRecord]) -> Result<()> + Send + Sync>;

/// Why the service refused a key (kept to answer new opens without asking again).
#[derive(Debug, Clone)]
enum Refusal {
    State(KeyState),
    Denied(String),
    Gone(String),
}

struct Live {
    cipher: Option<Arc<Cipher>>,
    refusal: Option<Refusal>,
    last_ok: Option<Instant>,
    /// Since when, and why, the service cannot be reached (cleared by a good probe).
    unreachable: Option<(Instant, String)>,
    next_check: Instant,
}

/// One client per endpoint (none: AWS) and region.
type ClientSlot = (Option<String>, String);

struct Inner {
    records: RwLock<HashMap<String, IntermediateRecord>>,
    live: RwLock<HashMap<String, Live>>,
    clients: Mutex<HashMap<ClientSlot, Arc<KmsClient>>>,
    /// One first unwrap at a time: threads opening files under a new key wait for one call.
    unwrapping: Mutex<()>,
    settings: RemoteSettings,
    store: TableStore,
    /// The endpoint new assignments use when the caller names none.
    default_endpoint: Option<String>,
    volume_context: BTreeMap<String, String>,
    checker: std::sync::Once,
    calls: AtomicU64,
    /// Serializes `intermediate_for`, so that concurrent requests make one key.
    creating: Mutex<()>,
    /// Key references (alias ARNs too) already given an intermediate key by this process.
    made_for: Mutex<HashMap<String, String>>,
}

/// The remote keys of one volume.
#[derive(Clone)]
pub struct RemoteKeys {
    inner: Arc<Inner>,
}

impl RemoteKeys {
    /// `records`: the volume's key table; `volume_context`: the pairs every new
    /// intermediate key's encryption context starts with (the volume's id and name).
    pub fn new(
        records: Vec<IntermediateRecord>,
        volume_context: BTreeMap<String, String>,
        settings: RemoteSettings,
        store: TableStore,
    ) -> RemoteKeys {
        let default_endpoint = records.first().and_then(|r| r.endpoint.clone());
        let records = records.into_iter().map(|r| (r.id.clone(), r)).collect();
        RemoteKeys {
            inner: Arc::new(Inner {
                records: RwLock::new(records),
                live: RwLock::new(HashMap::new()),
                clients: Mutex::new(HashMap::new()),
                unwrapping: Mutex::new(()),
                settings,
                store,
                default_endpoint,
                volume_context,
                checker: std::sync::Once::new(),
                calls: AtomicU64::new(0),
                creating: Mutex::new(()),
                made_for: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Whether `key_id` is one of this volume's intermediate keys.
    pub fn knows(&self, key_id: &str) -> bool {
        self.inner.records.read().expect("remote records lock").contains_key(key_id)
    }

    /// The remote key behind an intermediate key.
    pub fn arn(&self, key_id: &str) -> Option<String> {
        self.inner.records.read().expect("remote records lock").get(key_id).map(|r| r.key_arn.clone())
    }

    /// The table's record of an intermediate key.
    pub fn record_of(&self, key_id: &str) -> Option<IntermediateRecord> {
        self.inner.records.read().expect("remote records lock").get(key_id).cloned()
    }

    pub fn records(&self) -> Vec<IntermediateRecord> {
        let mut all: Vec<_> =
            self.inner.records.read().expect("remote records lock").values().cloned().collect();
        all.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        all
    }

    /// Requests sent to key services so far (retries included).
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::Relaxed)
    }

    /// The state of a key as last seen at the service (`Enabled` until seen otherwise).
    pub fn state(&self, key_id: &str) -> Option<KeyState> {
        if !self.knows(key_id) {
            return None;
        }
        let live = self.inner.live.read().expect("remote live lock");
        Some(match live.get(key_id).and_then(|l| l.refusal.clone()) {
            Some(Refusal::State(s)) => s,
            Some(_) => KeyState::Disabled,
            None => KeyState::Enabled,
        })
    }

    /// Every intermediate key of the table, as this process sees it now.
    pub fn report(&self) -> Vec<KeyReport> {
        let live = self.inner.live.read().expect("remote live lock");
        self.records()
            .into_iter()
            .map(|r| {
                let l = live.get(&r.id);
                let refusal = l.and_then(|l| l.refusal.clone());
                let key_state = match &refusal {
                    Some(Refusal::State(s)) => *s,
                    Some(_) => KeyState::Disabled,
                    None => KeyState::Enabled,
                };
                let usable =
                    l.is_some_and(|l| l.cipher.is_some() && l.refusal.is_none() && !self.grace_over(l));
                let problem = match (&refusal, l.and_then(|l| l.unreachable.as_ref())) {
                    (Some(refused), _) => Some(refusal_error(refused, &r.key_arn).to_string()),
                    (None, Some((_, why))) => Some(self.unreachable_error(&r, why).to_string()),
                    (None, None) => None,
                };
                KeyReport {
                    intermediate_key: r.id.clone(),
                    key_arn: r.key_arn.clone(),
                    endpoint: self.endpoint_of(&r),
                    in_use: l.is_some(),
                    key_state,
                    usable,
                    problem,
                }
            })
            .collect()
    }

    /// The intermediate key `key_id`, unwrapped (at its first use, with one call to the
    /// service), or why it may not be used now.
    pub fn cipher(&self, key_id: &str) -> Result<Arc<Cipher>> {
        if let Some(answer) = self.cached(key_id) {
            return answer;
        }
        let _one = self.inner.unwrapping.lock().expect("remote unwrap lock");
        if let Some(answer) = self.cached(key_id) {
            return answer;
        }
        let record = self.record(key_id)?;
        let now = Instant::now();
        let outcome = self.probe(&record);
        let mut live = self.inner.live.write().expect("remote live lock");
        let entry = live.entry(key_id.to_string()).or_insert(Live {
            cipher: None,
            refusal: None,
            last_ok: None,
            unreachable: None,
            next_check: now + self.inner.settings.check_interval,
        });
        let result = match outcome {
            Ok(key) => {
                let cipher = Arc::new(key.cipher());
                *entry = Live {
                    cipher: Some(Arc::clone(&cipher)),
                    refusal: None,
                    last_ok: Some(now),
                    unreachable: None,
                    next_check: now + self.inner.settings.check_interval,
                };
                log::info!("remote key {} unwrapped (intermediate key {key_id})", record.key_arn);
                Ok(cipher)
            }
            Err(CallError::Refused(e)) => {
                entry.refusal = Some(refusal_of(&e));
                log::warn!("remote key {}: refused by the key service: {e}", record.key_arn);
                Err(e)
            }
            Err(CallError::Unavailable(why)) => {
                entry.unreachable = Some((now, why.clone()));
                entry.next_check = now + self.inner.settings.retry_after;
                let e = self.unreachable_error(&record, &why);
                log::error!("{e}");
                Err(e)
            }
        };
        drop(live);
        self.start_checker();
        result
    }

    /// The answer for a key already seen, `None` when it must be unwrapped now.
    fn cached(&self, key_id: &str) -> Option<Result<Arc<Cipher>>> {
        let live = self.inner.live.read().expect("remote live lock");
        let l = live.get(key_id)?;
        let arn = || self.arn(key_id).unwrap_or_else(|| key_id.to_string());
        if let Some(r) = &l.refusal {
            return Some(Err(refusal_error(r, &arn())));
        }
        if let Some(c) = &l.cipher {
            if !self.grace_over(l) {
                return Some(Ok(Arc::clone(c)));
            }
            // Judged by time, not by the probe's end: a probe of a service that does not
            // answer takes its timeouts, and the grace period must not grow by them.
            let why = l.unreachable.as_ref().map_or("no check succeeded within the grace period", |(_, w)| w);
            return Some(Err(self.unreachable_error(&self.record(key_id).ok()?, why)));
        }
        match &l.unreachable {
            Some((_, why)) if Instant::now() < l.next_check => {
                Some(Err(self.unreachable_error(&self.record(key_id).ok()?, why)))
            }
            _ => None,
        }
    }

    /// Whether a key has gone unconfirmed for longer than the grace period after the check
    /// that should have confirmed it (`check_interval + grace` since the last good one).
    fn grace_over(&self, l: &Live) -> bool {
        let s = &self.inner.settings;
        l.last_ok.is_none_or(|t| t.elapsed() > s.check_interval + s.grace)
    }

    fn unreachable_error(&self, record: &IntermediateRecord, why: &str) -> Error {
        Error::KeyServiceUnavailable(format!(
            "key service {} unreachable for key {}: {why}",
            self.endpoint_of(record),
            record.key_arn
        ))
    }

    fn endpoint_of(&self, record: &IntermediateRecord) -> String {
        match &record.endpoint {
            Some(e) => e.clone(),
            None => client::arn_region(&record.key_arn)
                .map(|r| format!("https://kms.{r}.amazonaws.com"))
                .unwrap_or_else(|| "(AWS KMS)".into()),
        }
    }

    fn record(&self, key_id: &str) -> Result<IntermediateRecord> {
        self.inner
            .records
            .read()
            .expect("remote records lock")
            .get(key_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(NotFound::Key { key_id: key_id.to_string() }))
    }

    fn client(&self, endpoint: Option<&str>, arn: &str) -> Result<Arc<KmsClient>> {
        let region = client::arn_region(arn).unwrap_or_default().to_string();
        let slot = (endpoint.map(str::to_string), region);
        let mut clients = self.inner.clients.lock().expect("remote clients lock");
        if let Some(c) = clients.get(&slot) {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(KmsClient::new(endpoint, arn, self.inner.settings.call)?);
        clients.insert(slot, Arc::clone(&c));
        Ok(c)
    }

    /// Asks the service whether the key is usable (DescribeKey: some services, moto among
    /// them, decrypt under a disabled key) and for the intermediate key (Decrypt: refused
    /// when the host's principal may no longer use the key).
    fn probe(&self, record: &IntermediateRecord) -> std::result::Result<SecretKey, CallError> {
        let client = self.client(record.endpoint.as_deref(), &record.key_arn).map_err(CallError::Refused)?;
        let before = client.calls();
        let result = (|| {
            let (_, state) = client.describe_key(&record.key_arn)?;
            if state != KeyState::Enabled {
                return Err(CallError::Refused(refusal_error(&Refusal::State(state), &record.key_arn)));
            }
            let blob = record.blob().map_err(CallError::Refused)?;
            client.decrypt(&record.key_arn, &blob, &record.context())
        })();
        self.inner.calls.fetch_add(client.calls() - before, Ordering::Relaxed);
        result.map_err(|e| match e {
            CallError::Refused(e) => CallError::Refused(with_key(e, &record.key_arn)),
            other => other,
        })
    }

    /// The intermediate key of this volume under `key_ref` (an ARN): the one the table has
    /// for that key, else a new one (`create`). One per remote key and volume: every
    /// directory given that key shares it, so a mount costs one unwrap per remote key, and a
    /// tree moved to a remote key (`rewrap --to-key`, one request per file) makes one.
    pub fn intermediate_for(&self, key_ref: &str, endpoint: Option<&str>, created: &str) -> Result<String> {
        let _one = self.inner.creating.lock().expect("remote create lock");
        let known = self.inner.made_for.lock().expect("remote made-for lock").get(key_ref).cloned();
        let existing =
            known.or_else(|| self.records().into_iter().find(|r| r.key_arn == key_ref).map(|r| r.id));
        if let Some(id) = existing {
            return Ok(id);
        }
        let id = self.create(key_ref, endpoint, created)?;
        self.inner.made_for.lock().expect("remote made-for lock").insert(key_ref.to_string(), id.clone());
        Ok(id)
    }

    /// Makes a new intermediate key under `key_ref` (an ARN) at `endpoint` (default: the
    /// volume's), records it in the key table, and returns its id. Nothing is recorded if
    /// the service refuses or cannot be reached.
    pub fn create(&self, key_ref: &str, endpoint: Option<&str>, created: &str) -> Result<String> {
        // The AWS SDKs' variables for a custom endpoint name it when neither the caller nor
        // the volume does; what is used is recorded, so later mounts need no variable.
        let endpoint = endpoint
            .map(str::to_string)
            .or_else(|| self.inner.default_endpoint.clone())
            .or_else(client::endpoint_from_environment);
        let client = self.client(endpoint.as_deref(), key_ref)?;
        let id = super::keyid::new_key_id();
        let mut context = self.inner.volume_context.clone();
        context.insert("kmsfs:intermediate-key".into(), id.clone());
        let ctx = EncryptionContext(context.clone());
        let before = client.calls();
        let made = client.generate_data_key(key_ref, &ctx);
        self.inner.calls.fetch_add(client.calls() - before, Ordering::Relaxed);
        let (key, blob, arn) = made.map_err(|e| e.into_error(client.endpoint(), key_ref))?;
        let record = IntermediateRecord {
            id: id.clone(),
            key_arn: arn,
            endpoint,
            encryption_context: context,
            ciphertext_blob: B64.encode(&blob),
            created: created.to_string(),
        };
        self.save_with(Some(record.clone()), None)?;
        let now = Instant::now();
        self.inner.live.write().expect("remote live lock").insert(
            id.clone(),
            Live {
                cipher: Some(Arc::new(key.cipher())),
                refusal: None,
                last_ok: Some(now),
                unreachable: None,
                next_check: now + self.inner.settings.check_interval,
            },
        );
        log::info!("new intermediate key {id} under remote key {}", record.key_arn);
        self.start_checker();
        Ok(id)
    }

    /// Re-wraps every intermediate key under the current material of its remote key
    /// (ReEncrypt: the plaintext never leaves the service); the files stay as they are.
    /// Returns how many were re-wrapped.
    pub fn rewrap_all(&self) -> Result<usize> {
        let mut done = 0;
        for record in self.records() {
            let client = self.client(record.endpoint.as_deref(), &record.key_arn)?;
            let before = client.calls();
            let blob = record.blob()?;
            let answer = client.re_encrypt(&record.key_arn, &blob, &record.context(), &record.key_arn);
            self.inner.calls.fetch_add(client.calls() - before, Ordering::Relaxed);
            let new_blob = answer.map_err(|e| e.into_error(client.endpoint(), &record.key_arn))?;
            let updated = IntermediateRecord { ciphertext_blob: B64.encode(&new_blob), ..record };
            self.save_with(Some(updated), None)?;
            done += 1;
        }
        Ok(done)
    }

    /// Saves the table with `add` added or replaced (`drop`: removed); memory follows the
    /// file only once it is written.
    fn save_with(&self, add: Option<IntermediateRecord>, drop: Option<&str>) -> Result<()> {
        let mut records = self.inner.records.write().expect("remote records lock");
        let mut next = records.clone();
        if let Some(r) = add {
            next.insert(r.id.clone(), r);
        }
        if let Some(id) = drop {
            next.remove(id);
        }
        let mut list: Vec<_> = next.values().cloned().collect();
        list.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        (self.inner.store)(&list)?;
        *records = next;
        Ok(())
    }

    fn start_checker(&self) {
        self.inner.checker.call_once(|| {
            let weak = Arc::downgrade(&self.inner);
            let spawned =
                std::thread::Builder::new().name("kmsfs-remote-keys".into()).spawn(move || checker(weak));
            if let Err(e) = spawned {
                log::error!("cannot start the remote key checker: {e}; remote key states are not followed");
            }
        });
    }

    /// One round of the checker: probes every key in use whose time has come.
    fn check_due(&self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .inner
            .live
            .read()
            .expect("remote live lock")
            .iter()
            .filter(|(_, l)| l.next_check <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Ok(record) = self.record(&id) else { continue };
            let outcome = self.probe(&record);
            let now = Instant::now();
            let mut live = self.inner.live.write().expect("remote live lock");
            let Some(l) = live.get_mut(&id) else { continue };
            l.next_check = now + self.inner.settings.check_interval;
            match outcome {
                Ok(key) => {
                    if l.refusal.is_some() || l.unreachable.is_some() {
                        log::warn!("remote key {}: usable again", record.key_arn);
                    }
                    l.cipher = Some(Arc::new(key.cipher()));
                    l.refusal = None;
                    l.unreachable = None;
                    l.last_ok = Some(now);
                }
                Err(CallError::Refused(e)) => {
                    if l.refusal.is_none() {
                        log::warn!("remote key {}: {e}; new opens under it are refused", record.key_arn);
                    }
                    l.refusal = Some(refusal_of(&e));
                    l.cipher = None;
                    l.unreachable = None;
                }
                Err(CallError::Unavailable(why)) => {
                    if l.unreachable.is_none() {
                        log::warn!(
                            "{}; keys already unwrapped keep serving for {} s",
                            self.unreachable_error(&record, &why),
                            self.inner.settings.grace.as_secs()
                        );
                    }
                    l.unreachable = Some((l.unreachable.take().map_or(now, |(t, _)| t), why));
                    if l.cipher.is_some() && self.grace_over(l) {
                        log::error!(
                            "remote key {}: grace period over, the key service still unreachable; \
                             new opens under it fail",
                            record.key_arn
                        );
                        l.cipher = None;
                    }
                }
            }
        }
    }
}

fn checker(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let tick = inner.settings.check_interval.min(Duration::from_secs(1));
        RemoteKeys { inner }.check_due();
        std::thread::sleep(tick);
    }
}

fn refusal_of(e: &Error) -> Refusal {
    match e {
        Error::KeyState(k) => Refusal::State(k.state.unwrap_or(KeyState::Disabled)),
        Error::NotFound(n) => Refusal::Gone(n.to_string()),
        other => Refusal::Denied(other.to_string()),
    }
}

fn refusal_error(r: &Refusal, arn: &str) -> Error {
    match r {
        Refusal::State(state) => Error::KeyState(KeyStateError {
            key_id: arn.to_string(),
            state: Some(*state),
            deletion_date: None,
            problem: StateProblem::NotEnabled,
        }),
        Refusal::Denied(why) => Error::AccessDenied(AccessDenied {
            key_id: Some(arn.to_string()),
            reason: Denial::Policy { action: "kms:Decrypt".into(), why: why.clone() },
        }),
        Refusal::Gone(why) => Error::NotFound(NotFound::Other(why.clone())),
    }
}

/// A refusal worded with the key's ARN.
fn with_key(e: Error, arn: &str) -> Error {
    match e {
        Error::KeyState(mut k) => {
            k.key_id = arn.to_string();
            Error::KeyState(k)
        }
        other => other,
    }
}

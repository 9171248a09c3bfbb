//! The other regions a server knows (`kmsfs serve --peer REGION=PATH`): keystores it opens
//! and unlocks at start, where ReplicateKey puts replicas and UpdatePrimaryRegion moves
//! primaries, and which it syncs multi-Region keys with every `--peer-sync-interval` seconds
//! (docs/MULTI_REGION.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::config::ServeArgs;
use super::Service;
use crate::error::{Error, Result};
use crate::keystore::{self, Keystore};
use crate::kms::{Kms, Principal};

/// The unlocked peer keystores, by region.
#[derive(Default)]
pub struct Peers {
    by_region: BTreeMap<String, Mutex<Kms>>,
}

/// `REGION=VALUE` of `--peer` and `--peer-passphrase-file`.
fn split_assignment(flag: &str, text: &str) -> Result<(String, String)> {
    let (region, value) =
        text.split_once('=').filter(|(r, v)| !r.is_empty() && !v.is_empty()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{flag} '{text}' must be REGION=PATH, such as us-west-2=/srv/west.db"
            ))
        })?;
    keystore::validate_region(region)?;
    Ok((region.to_string(), value.to_string()))
}

impl Peers {
    /// Opens every `--peer` and has `unlock` unlock it (given the keystore and the
    /// `--peer-passphrase-file` of its region, if any); refuses one that is not the region it
    /// is named as, is this server's own region, or is named twice.
    pub fn open(
        args: &ServeArgs,
        own_region: &str,
        mut unlock: impl FnMut(&Path, Option<&Path>) -> Result<Kms>,
    ) -> Result<Peers> {
        let mut files = BTreeMap::new();
        for text in &args.peer_passphrase_file {
            let (region, path) = split_assignment("--peer-passphrase-file", text)?;
            files.insert(region, PathBuf::from(path));
        }
        let mut peers = Peers::default();
        for text in &args.peer {
            let (region, location) = split_assignment("--peer", text)?;
            if location.starts_with("http://") || location.starts_with("https://") {
                return Err(Error::InvalidArgument(format!(
                    "--peer {region}={location}: reaching a peer through another kmsfs serve is not \
                     supported yet; give the path of its keystore"
                )));
            }
            if region == own_region {
                return Err(Error::InvalidArgument(format!(
                    "--peer {region}: that is this server's own region; a peer is another region"
                )));
            }
            if peers.by_region.contains_key(&region) {
                return Err(Error::InvalidArgument(format!("--peer {region} is given twice")));
            }
            let path = Path::new(&location);
            let actual = Keystore::open(path)?.region()?;
            if actual != region {
                return Err(Error::InvalidArgument(format!(
                    "--peer {region}={location}: that keystore answers as region {actual}"
                )));
            }
            let kms = unlock(path, files.get(&region).map(PathBuf::as_path))?;
            peers.by_region.insert(region, Mutex::new(kms));
        }
        Ok(peers)
    }

    pub fn get(&self, region: &str) -> Option<&Mutex<Kms>> {
        self.by_region.get(region)
    }

    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.by_region.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_region.is_empty()
    }
}

/// Syncs the server's keystore with every peer, one after the other (the server's control
/// plane lock first, then the peer's: the order every caller takes them in).
pub fn sync_all(svc: &Service, me: &Principal) {
    for region in svc.peers.regions() {
        let Some(peer) = svc.peers.get(region) else { continue };
        let (Ok(mut kms), Ok(mut peer)) = (svc.kms.lock(), peer.lock()) else {
            log::error!("a control plane lock is poisoned; multi-Region sync with {region} skipped");
            continue;
        };
        match kms.sync_with(me, &mut peer) {
            Ok(r)
                if r.versions_copied > 0
                    || !r.replicas_removed.is_empty()
                    || !r.deletions_started.is_empty() =>
            {
                log::info!(
                    "multi-Region sync with {region}: {} versions copied, replicas removed {:?}, deletions started {:?}",
                    r.versions_copied,
                    r.replicas_removed,
                    r.deletions_started
                )
            }
            Ok(_) => {}
            Err(e) => log::warn!("multi-Region sync with {region} failed: {e}"),
        }
    }
}

/// The thread that syncs with the peers every `every`.
pub struct Syncer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Syncer {
    pub fn start(svc: Arc<Service>, me: Principal, every: Duration) -> Result<Option<Syncer>> {
        if svc.peers.is_empty() {
            return Ok(None);
        }
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kmsfs-peer-sync".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    sync_all(&svc, &me);
                }
            })
            .map_err(|e| Error::io("peer sync thread", e))?;
        Ok(Some(Syncer { stop, thread }))
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

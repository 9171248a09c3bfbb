//! `kmsfs fsck`: checks every directory's metadata and names, every file's header and
//! every block of an (ideally unmounted) volume, and reports per item what is wrong and
//! whether it can be read. With `repair`, fixes what is safe: leftovers of interrupted
//! operations (temp files, orphan long-name sidecars, a damaged metadata copy, a header
//! slot torn by an interrupted re-wrap, an empty file whose create was cut short). Data
//! goes away only with `force` (files that can never be read again) or `prune_shredded`
//! (files whose key was destroyed: crypto-shredded).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::dirmeta::{DirKeys, DirMeta, DIR_META, DIR_META_BACKUP};
use super::file_keys::{new_file_key, unwrap_header};
use super::link_targets::{self, TARGETS_DIR};
use super::rewrap::rewrap_file;
use super::xattr_store;
use super::{VolumeConfig, CONFIG_NAME};
use crate::content::crypt_file::Damage;
use crate::content::names::{sidecar_of, EntryName, NameCipher, IV_LEN, LONG_PREFIX, SIDECAR_SUFFIX};
use crate::content::volume_cipher::{target_sidecar, VolumeCipher};
use crate::crypto;
use crate::encoding::hex;
use crate::error::Error;
use crate::kms::blob::BlobHeader;
use crate::kms::keyring::{Access, KeyRing};
use crate::kms::KeyState;
use crate::kms::Principal;
use crate::sys::open_noatime;

/// What a run may change.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsckOptions {
    /// Fix what is safe; never removes data.
    pub repair: bool,
    /// With `repair`: also remove what can never be read again.
    pub force: bool,
    /// Remove only what is crypto-shredded (its key destroyed), nothing else.
    pub prune_shredded: bool,
}

/// The verdict on one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    /// A block (or the file's length) does not authenticate.
    Tampered,
    /// No header slot unwraps: the file cannot be read.
    HeaderDamaged,
    /// A zero-length file: its create was interrupted before the header was written.
    MissingHeader,
    /// The newer header slot is damaged (an interrupted re-wrap); the older one works.
    InterruptedRewrap,
    KeyDisabled,
    KeyPendingDeletion,
    /// The key was destroyed: unrecoverable (crypto-shredded).
    KeyDestroyed,
    /// The key is not in this keystore.
    KeyUnknown,
    /// A key policy or grant refuses the caller: not checked.
    AccessDenied,
    /// The remote key service could not be reached: not checked (nothing is known about
    /// the item, so it is never called damaged or removed).
    KeyUnreachable,
    /// An entry whose encrypted name does not authenticate (or whose sidecar is gone).
    NameDamaged,
    /// A long-name sidecar without its entry.
    OrphanSidecar,
    /// A temporary file left by an interrupted metadata write.
    TempFile,
    /// One of a directory's two metadata copies is missing, damaged or stale.
    MetadataCopyDamaged,
    /// A directory without usable metadata: its names cannot be read.
    MetadataDamaged,
    /// A symlink target that does not authenticate.
    SymlinkDamaged,
    /// An xattr store that cannot be read or holds an attribute that does not authenticate.
    XattrsDamaged,
}

impl Status {
    /// Never readable again, whatever is done.
    pub fn unrecoverable(self) -> bool {
        matches!(self, Status::KeyDestroyed | Status::HeaderDamaged)
    }
}

/// One item's line in the report.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Finding {
    /// The plaintext path where known, else the backing path (relative to the cipher dir).
    pub path: String,
    pub kind: &'static str,
    pub status: Status,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// What `repair`, `force` or `prune_shredded` did about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

impl Finding {
    fn remains(&self) -> bool {
        self.status != Status::Ok && self.action.is_none()
    }
}

#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FsckReport {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes_checked: u64,
    /// Problems left after this run (0: the volume is clean).
    pub problems_remaining: u64,
    pub repaired: u64,
    pub seconds: f64,
    /// Every file, with its status; every other item only when something is wrong with it.
    pub items: Vec<Finding>,
}

impl FsckReport {
    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.items.iter().filter(|f| f.status != Status::Ok)
    }
}

/// One run over a volume.
pub struct Fsck<'a> {
    ring: &'a KeyRing,
    caller: &'a Principal,
    config: &'a VolumeConfig,
    options: FsckOptions,
    /// The volume's names key (symlink targets), if it unwraps.
    names: Option<VolumeCipher>,
    seen_inodes: HashSet<(u64, u64)>,
    /// The cipher directory checked (long symlink targets are in its `kmsfs.targets`).
    root: PathBuf,
    /// The sidecars of long symlink targets that some symlink names.
    named_targets: HashSet<String>,
    /// The xattr stores that some file or directory names.
    named_stores: HashSet<String>,
    /// Some directory's entries could not be listed or named: a sidecar that no symlink seen
    /// names may belong to one of them, so none is called an orphan.
    incomplete: bool,
    progress: &'a mut dyn FnMut(&FsckReport),
    report: FsckReport,
}

impl<'a> Fsck<'a> {
    pub fn new(
        ring: &'a KeyRing,
        caller: &'a Principal,
        config: &'a VolumeConfig,
        options: FsckOptions,
        progress: &'a mut dyn FnMut(&FsckReport),
    ) -> Self {
        Fsck {
            ring,
            caller,
            config,
            options,
            names: None,
            seen_inodes: HashSet::new(),
            root: PathBuf::new(),
            named_targets: HashSet::new(),
            named_stores: HashSet::new(),
            incomplete: false,
            progress,
            report: FsckReport::default(),
        }
    }

    pub fn run(mut self, cipher_dir: &Path) -> FsckReport {
        let began = Instant::now();
        self.root = cipher_dir.to_path_buf();
        self.volume_key();
        self.directory(cipher_dir, "/", None);
        self.target_sidecars();
        self.xattr_stores();
        self.report.problems_remaining = self.report.items.iter().filter(|f| f.remains()).count() as u64;
        self.report.repaired = self.report.items.iter().filter(|f| f.action.is_some()).count() as u64;
        self.report.seconds = began.elapsed().as_secs_f64();
        self.report
    }

    fn access<'b>(&'b self, path: &'b str) -> Access<'b> {
        Access { caller: self.caller, path }
    }

    fn note(
        &mut self,
        path: &str,
        kind: &'static str,
        status: Status,
        detail: String,
        action: Option<String>,
    ) {
        self.report.items.push(Finding { path: path.to_string(), kind, status, detail, action });
    }

    /// The volume's own names key, for symlink targets.
    fn volume_key(&mut self) {
        match self.config.unwrap_names_key(self.ring, self.access("/")) {
            Ok((key, _)) => self.names = Some(VolumeCipher::new(&key)),
            Err(e) => {
                let (status, detail) = self.key_problem(&e);
                self.note(CONFIG_NAME, "volume", status, format!("volume names key: {detail}"), None);
            }
        }
    }

    /// Classifies a refusal to unwrap a key, by the state of the key that refused.
    fn key_problem(&self, e: &Error) -> (Status, String) {
        let status = match e {
            Error::KeyState(refused) => match refused.state {
                Some(KeyState::PendingDeletion | KeyState::PendingReplicaDeletion) => {
                    Status::KeyPendingDeletion
                }
                Some(KeyState::Destroyed) => Status::KeyDestroyed,
                _ => Status::KeyDisabled,
            },
            Error::AccessDenied(_) => Status::AccessDenied,
            Error::NotFound(_) => Status::KeyUnknown,
            Error::KeyServiceUnavailable(_) => Status::KeyUnreachable,
            _ => Status::HeaderDamaged,
        };
        (status, e.to_string())
    }

    /// Checks a directory's metadata, then everything in it. `parent_key`: the key new
    /// metadata would be created under (`None` at the root).
    fn directory(&mut self, dir: &Path, plain: &str, parent_key: Option<&str>) {
        self.report.directories += 1;
        self.xattr_store_of(dir, plain, "directory");
        (self.progress)(&self.report);
        let Some(keys) = self.directory_keys(dir, plain, parent_key) else {
            self.incomplete = true;
            return;
        };
        let names = NameCipher::new(&keys.names_key, &keys.iv);
        let mut entries: Vec<_> = match std::fs::read_dir(dir) {
            Ok(e) => e.flatten().collect(),
            Err(e) => {
                self.note(plain, "directory", Status::MetadataDamaged, format!("cannot list: {e}"), None);
                self.incomplete = true;
                return;
            }
        };
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let path = dir.join(&name);
            let plain_name = match names.entry_name(dir, &name) {
                EntryName::Plain(n) => n,
                EntryName::Internal => {
                    self.internal(dir, &name, plain);
                    continue;
                }
                EntryName::Undecryptable => {
                    let label = format!("{}/<{}>", plain.trim_end_matches('/'), name.to_string_lossy());
                    let why = if name.as_bytes().starts_with(LONG_PREFIX.as_bytes())
                        && !dir.join(sidecar_of(&name)).exists()
                    {
                        "its long-name sidecar is missing"
                    } else {
                        "the encrypted name does not authenticate"
                    };
                    self.note(&label, "entry", Status::NameDamaged, why.into(), None);
                    self.incomplete = true;
                    continue;
                }
            };
            let child = format!("{}/{}", plain.trim_end_matches('/'), plain_name.to_string_lossy());
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.is_dir() {
                self.directory(&path, &child, Some(&keys.key_id));
                if self.options.prune_shredded || self.options.force {
                    self.remove_if_shredded_dir(&path, &child);
                }
            } else if meta.is_file() {
                if !self.seen_inodes.insert((meta.dev(), meta.ino())) {
                    continue; // a hard link already checked
                }
                self.report.files += 1;
                self.file(&path, &child, &keys.key_id, meta.len());
                (self.progress)(&self.report);
            } else if meta.file_type().is_symlink() {
                self.report.symlinks += 1;
                self.symlink(&path, &child);
            }
        }
    }

    /// The directory's keys, after checking (and repairing) its two metadata copies.
    fn directory_keys(&mut self, dir: &Path, plain: &str, parent_key: Option<&str>) -> Option<DirKeys> {
        let copies = match DirMeta::load_copies(dir) {
            Ok(c) => c,
            Err(e) => {
                self.note(plain, "directory", Status::MetadataDamaged, e.to_string(), None);
                return None;
            }
        };
        if copies.is_empty() {
            return self.missing_metadata(dir, plain, parent_key);
        }
        let keys = match DirMeta::unwrap_any(&copies, self.ring, self.access(plain), &self.config.volume_id) {
            Ok(keys) => keys,
            Err(e) => {
                let (status, detail) = self.key_problem(&e);
                let status = if status == Status::HeaderDamaged { Status::MetadataDamaged } else { status };
                self.note(
                    plain,
                    "directory",
                    status,
                    format!("{detail}; its contents cannot be checked"),
                    None,
                );
                return None;
            }
        };
        let good = copies.iter().find(|c| c.key_id == keys.key_id && c.iv_bytes() == Some(keys.iv));
        let consistent = copies.len() == 2 && copies[0] == copies[1];
        if !consistent {
            let action = match good {
                Some(good) if self.options.repair => {
                    good.save(dir).ok().map(|_| "both copies rewritten from the one that unwraps".to_string())
                }
                _ => None,
            };
            let detail = format!("{} of 2 metadata copies usable or the copies differ", copies.len());
            self.note(plain, "directory", Status::MetadataCopyDamaged, detail, action);
        }
        Some(keys)
    }

    /// A directory without metadata (interrupted mkdir). Empty: repair gives it fresh
    /// metadata under its parent's key. Not empty: its names are lost.
    fn missing_metadata(&mut self, dir: &Path, plain: &str, parent_key: Option<&str>) -> Option<DirKeys> {
        let empty = std::fs::read_dir(dir).map(|mut e| e.next().is_none()).unwrap_or(false);
        let detail =
            if empty { "no metadata (interrupted mkdir)" } else { "no metadata: its names cannot be read" };
        let mut action = None;
        let mut keys = None;
        if let (true, true, Some(key_id)) = (empty, self.options.repair, parent_key) {
            let iv = crypto::random_bytes::<IV_LEN>();
            let ctx = DirMeta::context(&self.config.volume_id, &hex(&iv));
            if let Ok((names_key, blob)) = self.ring.generate_data_key(self.access(plain), key_id, &ctx) {
                if DirMeta::new(key_id, false, &iv, &blob).save(dir).is_ok() {
                    action = Some(format!("new metadata under its parent's key {key_id}"));
                    let key_version = BlobHeader::parse(&blob).map(|(h, _)| h.key_version).unwrap_or(0);
                    keys =
                        Some(DirKeys { key_id: key_id.into(), key_version, explicit: false, iv, names_key });
                }
            }
        }
        self.note(plain, "directory", Status::MetadataDamaged, detail.into(), action);
        keys
    }

    /// kmsfs's own files in a directory: metadata, sidecars, leftovers.
    fn internal(&mut self, dir: &Path, name: &OsStr, plain: &str) {
        let bytes = name.as_bytes();
        let label = format!("{}/{}", plain.trim_end_matches('/'), name.to_string_lossy());
        if [DIR_META.as_bytes(), DIR_META_BACKUP.as_bytes(), CONFIG_NAME.as_bytes()].contains(&bytes) {
            return;
        }
        let path = dir.join(name);
        let (status, detail) =
            if bytes.starts_with(LONG_PREFIX.as_bytes()) && bytes.ends_with(SIDECAR_SUFFIX.as_bytes()) {
                let entry = &bytes[..bytes.len() - SIDECAR_SUFFIX.len()];
                if dir.join(OsStr::from_bytes(entry)).symlink_metadata().is_ok() {
                    return;
                }
                (Status::OrphanSidecar, "a long-name sidecar without its entry")
            } else if bytes.starts_with(b".") && bytes.windows(5).any(|w| w == b".tmp-") {
                (Status::TempFile, "left by an interrupted metadata write")
            } else {
                return; // not kmsfs's: left alone, as a backup tool's file would be
            };
        let action = self
            .options
            .repair
            .then(|| std::fs::remove_file(&path).ok().map(|_| "removed".to_string()))
            .flatten();
        self.note(&label, "internal", status, detail.into(), action);
    }

    fn symlink(&mut self, path: &Path, plain: &str) {
        let text = std::fs::read_link(path).ok();
        let sidecar = text.as_deref().and_then(|t| target_sidecar(t.as_os_str())).map(str::to_string);
        if let Some(name) = &sidecar {
            self.named_targets.insert(name.clone());
        }
        let Some(names) = &self.names else { return };
        let readable = text.and_then(|t| link_targets::resolve(names, &self.root, t.as_os_str())).is_some();
        if !readable {
            let detail = match sidecar {
                Some(_) => "the sidecar of its long target is missing, damaged or does not authenticate",
                None => "the target does not authenticate",
            };
            self.note(plain, "symlink", Status::SymlinkDamaged, detail.into(), None);
        }
    }

    /// The sidecars of long symlink targets: one that no symlink names (a crash between
    /// writing it and making its symlink, or between removing the symlink and it) and
    /// temporary files of an interrupted write are leftovers.
    fn target_sidecars(&mut self) {
        let named = std::mem::take(&mut self.named_targets);
        let leftover = Leftovers {
            dir: TARGETS_DIR,
            interrupted: "left by an interrupted write of a long symlink target",
            orphan: "a long symlink target that no symlink names",
        };
        self.sweep(link_targets::list(&self.root), &named, leftover);
        self.named_targets = named;
    }

    /// Reports (and with --repair removes) the leftovers among `entries` of one of the
    /// volume's own directories, where every entry belongs to something that names it.
    /// Only after a walk that reached every directory: else an entry's owner may be unseen.
    fn sweep(&mut self, entries: Vec<std::ffi::OsString>, named: &HashSet<String>, leftover: Leftovers) {
        if self.incomplete {
            return;
        }
        for name in entries {
            let text = name.to_string_lossy();
            let (status, detail) = if text.starts_with('.') && text.contains(".tmp-") {
                (Status::TempFile, leftover.interrupted)
            } else if !named.contains(&*text) {
                (Status::OrphanSidecar, leftover.orphan)
            } else {
                continue;
            };
            let path = self.root.join(leftover.dir).join(&name);
            let action = self
                .options
                .repair
                .then(|| std::fs::remove_file(&path).ok().map(|_| "removed".to_string()))
                .flatten();
            self.note(&format!("/{}/{text}", leftover.dir), "internal", status, detail.into(), action);
        }
    }

    /// The xattr store the inode at `path` names, if any: remembered (it is no orphan) and
    /// checked (it parses, and every name and value authenticates).
    fn xattr_store_of(&mut self, path: &Path, plain: &str, kind: &'static str) {
        let Some(id) = xattr_store::pointer_of(path) else { return };
        self.named_stores.insert(id.clone());
        let Some(names) = &self.names else { return };
        let detail = match xattr_store::read(&self.root, &id) {
            Ok(None) => return, // not moved into a store (yet): the backing xattrs are its attributes
            Ok(Some(entries)) => {
                let bad = entries
                    .iter()
                    .filter(|(n, v)| {
                        names.decrypt_xattr_value(n, v).is_none() || names.decrypt_xattr_name(n).is_none()
                    })
                    .count();
                if bad == 0 {
                    return;
                }
                format!("{bad} extended attribute(s) in its store {id} do not authenticate")
            }
            Err(e) => format!("its extended-attribute store {id} cannot be read: {e}"),
        };
        self.note(plain, kind, Status::XattrsDamaged, detail, None);
    }

    /// The xattr stores: one that no inode names (its last link removed while a handle or a
    /// crash kept it) and temporary files of an interrupted write are leftovers.
    fn xattr_stores(&mut self) {
        let named = std::mem::take(&mut self.named_stores);
        let leftover = Leftovers {
            dir: xattr_store::STORES_DIR,
            interrupted: "left by an interrupted write of an extended-attribute store",
            orphan: "an extended-attribute store that no file or directory names",
        };
        self.sweep(xattr_store::list(&self.root), &named, leftover);
        self.named_stores = named;
    }

    fn file(&mut self, path: &Path, plain: &str, dir_key: &str, len: u64) {
        self.xattr_store_of(path, plain, "file");
        let writable = self.options.repair || self.options.prune_shredded;
        let file = match open_noatime(path, writable) {
            Ok(f) => f,
            Err(e) => {
                return self.note(plain, "file", Status::HeaderDamaged, format!("cannot open: {e}"), None)
            }
        };
        let (status, detail) = self.check_file(&file, plain, len);
        let action = match status {
            Status::InterruptedRewrap if self.options.repair => {
                rewrap_file(self.ring, self.access(plain), self.config, &file, None)
                    .ok()
                    .map(|_| "damaged header slot rewritten".to_string())
            }
            Status::MissingHeader if self.options.repair => {
                self.fresh_header(&file, plain, dir_key).then(|| "given a header: an empty file".to_string())
            }
            Status::KeyDestroyed if self.options.prune_shredded || self.options.force => {
                remove_entry(path).then(|| "removed (crypto-shredded)".to_string())
            }
            s if s.unrecoverable() && self.options.force => {
                remove_entry(path).then(|| "removed (--force)".to_string())
            }
            _ => None,
        };
        self.note(plain, "file", status, detail, action);
    }

    /// Header and every block of one file.
    fn check_file(&mut self, file: &File, plain: &str, len: u64) -> (Status, String) {
        if len == 0 {
            return (Status::MissingHeader, "no header (its create was interrupted)".into());
        }
        let found = match unwrap_header(self.ring, self.access(plain), self.config, file) {
            Ok(found) => found,
            Err(e) => return self.key_problem(&e),
        };
        let newest = found.newest;
        match found.into_file_key().crypt(file, plain).verify(len) {
            Ok(checked) => self.report.bytes_checked += checked,
            Err(damage) => {
                if let Damage::Block { start, .. } = damage {
                    self.report.bytes_checked += start; // the whole blocks before it
                }
                return (Status::Tampered, damage.to_string());
            }
        }
        if !newest {
            return (
                Status::InterruptedRewrap,
                "the newer header slot is damaged; the older one unwraps".into(),
            );
        }
        (Status::Ok, String::new())
    }

    /// Gives a zero-length file the header and empty last block of an empty file, under
    /// its directory's key (as the mount does on first open).
    fn fresh_header(&self, file: &File, plain: &str, key_id: &str) -> bool {
        let Ok((key, header)) = new_file_key(self.ring, self.access(plain), self.config, key_id) else {
            return false;
        };
        key.crypt(file, plain).init_new(&header.encode()).is_ok() && file.sync_all().is_ok()
    }

    /// A directory whose names key is destroyed is removed whole (nothing in it can be
    /// named or read again).
    fn remove_if_shredded_dir(&mut self, path: &Path, plain: &str) {
        let Some(finding) =
            self.report.items.iter_mut().rev().find(|f| f.path == plain && f.kind == "directory")
        else {
            return;
        };
        if finding.status == Status::KeyDestroyed
            && finding.action.is_none()
            && std::fs::remove_dir_all(path).is_ok()
        {
            finding.action = Some("removed with everything in it (crypto-shredded)".into());
        }
    }
}

/// Removes a file and, for a long name, its sidecar.
fn remove_entry(path: &Path) -> bool {
    let removed = std::fs::remove_file(path).is_ok();
    if removed && path.file_name().is_some_and(|n| n.as_bytes().starts_with(LONG_PREFIX.as_bytes())) {
        let _ = std::fs::remove_file(path.with_file_name(sidecar_of(path.file_name().unwrap_or_default())));
    }
    removed
}

/// One of the volume's own directories for [`Fsck::sweep`], and how its leftovers are
/// described.
struct Leftovers {
    dir: &'static str,
    interrupted: &'static str,
    orphan: &'static str,
}

//! `kmsfs volume copy`: the snapshot copy of a volume to another key and/or another
//! keystore (AWS's cross-account/region snapshot copy). Ciphertext blocks are copied as
//! they are (holes stay holes); every wrapped key — each file's data key, each directory's
//! names key, the volume's names key — is unwrapped with the source keystore and wrapped
//! again for the destination under a new volume id. Names, symlink targets and xattrs stay
//! as stored, because the names keys themselves are kept. The source is only read.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::dirmeta::DirMeta;
use super::file_keys::unwrap_header;
use super::link_targets;
use super::xattr_store;
use super::VolumeConfig;
use crate::content::names::{EntryName, NameCipher, SIDECAR_SUFFIX};
use crate::content::volume_cipher::target_sidecar;
use crate::content::{FileHeader, HEADER_LEN};
use crate::encoding::hex;
use crate::error::{Error, Result};
use crate::kms::keyring::{Access, KeyRing};
use crate::kms::remote::RemoteKeys;
use crate::kms::Principal;
use crate::sys::{self, open_noatime, Node};

/// One volume of the copy, with the key ring that opens it.
pub struct Side<'a> {
    pub ring: &'a KeyRing,
    pub caller: &'a Principal,
    pub config: &'a VolumeConfig,
}

impl Side<'_> {
    fn access<'b>(&'b self, path: &'b str) -> Access<'b> {
        Access { caller: self.caller, path }
    }
}

#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CopyReport {
    pub volume_id: String,
    pub default_key_id: String,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes_copied: u64,
    pub errors: Vec<String>,
    pub seconds: f64,
}

/// Which key each wrapped key of the copy goes under. With `to_key`, everything moves to
/// it; else each item keeps its key, except that a key of the source's remote key table
/// (an intermediate key: its encryption context names the source volume) is replaced by
/// the destination's intermediate key under the same remote key, made once per remote key.
pub struct KeyMap {
    pub to_key: Option<String>,
    /// The source volume's remote keys, if it has any.
    pub src_remote: Option<RemoteKeys>,
    /// The destination's key table (attached to the destination ring).
    pub dst_remote: RemoteKeys,
    /// The creation date recorded for new intermediate keys.
    pub created: String,
}

impl KeyMap {
    /// The destination key for an item the source wraps under `own`.
    pub fn target(&self, own: &str) -> Result<String> {
        if let Some(k) = &self.to_key {
            return Ok(k.clone());
        }
        let Some(record) = self.src_remote.as_ref().and_then(|r| r.record_of(own)) else {
            return Ok(own.to_string());
        };
        self.dst_remote.intermediate_for(&record.key_arn, record.endpoint.as_deref(), &self.created)
    }
}

/// The destination's configuration before its names key: a new volume id, the source's
/// name, block size and format, the destination keystore.
pub fn new_config(src: &VolumeConfig, dst_keystore_id: &str, now: i64) -> VolumeConfig {
    VolumeConfig {
        volume_id: super::new_volume_id(),
        keystore_id: dst_keystore_id.to_string(),
        created: crate::kms::clock::format_date(now),
        names_key: String::new(),
        ..src.clone()
    }
}

/// Wraps the source's volume names key for the destination `config`, under the key `map`
/// gives for the key that wraps it in the source, which becomes the default key.
pub fn wrap_names_key(
    src: &Side<'_>,
    dst_ring: &KeyRing,
    dst_caller: &Principal,
    config: &mut VolumeConfig,
    map: &KeyMap,
) -> Result<()> {
    let (names_key, wrapped_by) = src.config.unwrap_names_key(src.ring, src.access("/"))?;
    // Not the config's `default_key_id`, which nothing authenticates (anyone who can write
    // the cipher directory could name their own key there): the key that really wraps the
    // source's names key, as the successful unwrap just proved.
    config.default_key_id = map.target(&wrapped_by.key_id)?;
    let wrapped = dst_ring.wrap_data_key(
        Access { caller: dst_caller, path: "/" },
        &config.default_key_id,
        &config.names_context(),
        &names_key,
    )?;
    config.set_names_key_blob(&wrapped);
    Ok(())
}

pub struct Copier<'a> {
    src: Side<'a>,
    dst: Side<'a>,
    /// Which key each item goes under.
    map: &'a KeyMap,
    /// Hard links: the first copy of each source inode.
    links: HashMap<(u64, u64), std::path::PathBuf>,
    /// The two cipher directories (for the sidecars of long symlink targets at their tops).
    src_root: PathBuf,
    dst_root: PathBuf,
    progress: &'a mut dyn FnMut(&CopyReport),
    report: CopyReport,
}

impl<'a> Copier<'a> {
    pub fn new(
        src: Side<'a>,
        dst: Side<'a>,
        map: &'a KeyMap,
        progress: &'a mut dyn FnMut(&CopyReport),
    ) -> Self {
        let report = CopyReport {
            volume_id: dst.config.volume_id.clone(),
            default_key_id: dst.config.default_key_id.clone(),
            ..Default::default()
        };
        Copier {
            src,
            dst,
            map,
            links: HashMap::new(),
            src_root: PathBuf::new(),
            dst_root: PathBuf::new(),
            progress,
            report,
        }
    }

    /// Copies the tree of `src_dir` into the empty directory `dst_dir`, then writes the
    /// destination's `kmsfs.volume` last (a cut-short copy is not a volume) and syncs.
    pub fn run(mut self, src_dir: &Path, dst_dir: &Path) -> Result<CopyReport> {
        let began = Instant::now();
        (self.src_root, self.dst_root) = (src_dir.to_path_buf(), dst_dir.to_path_buf());
        self.directory(src_dir, dst_dir, "/")?;
        if self.report.errors.is_empty() {
            self.dst.config.save(dst_dir)?;
        }
        sys::sync_filesystem(dst_dir);
        self.report.seconds = began.elapsed().as_secs_f64();
        Ok(self.report)
    }

    fn target(&self, own: &str) -> Result<String> {
        self.map.target(own)
    }

    fn directory(&mut self, src: &Path, dst: &Path, plain: &str) -> Result<()> {
        self.report.directories += 1;
        let keys = DirMeta::unwrap_any(
            &DirMeta::load_copies(src)?,
            self.src.ring,
            self.src.access(plain),
            &self.src.config.volume_id,
        )?;
        let ctx = DirMeta::context(&self.dst.config.volume_id, &hex(&keys.iv));
        let key = self.target(&keys.key_id)?;
        let blob = self.dst.ring.wrap_data_key(self.dst.access(plain), &key, &ctx, &keys.names_key)?;
        DirMeta::new(&key, keys.explicit, &keys.iv, &blob).save(dst)?;
        let names = NameCipher::new(&keys.names_key, &keys.iv);
        let mut entries: Vec<_> =
            std::fs::read_dir(src).map_err(|e| Error::io(plain, e))?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let is_sidecar = name.as_bytes().ends_with(SIDECAR_SUFFIX.as_bytes());
            let child = match names.entry_name(src, &name) {
                EntryName::Plain(n) => format!("{}/{}", plain.trim_end_matches('/'), n.to_string_lossy()),
                // Long-name sidecars travel with their entries; other bookkeeping is new.
                EntryName::Internal if is_sidecar => {
                    self.item(&src.join(&name), &dst.join(&name), plain, |c, s, d, _| c.plain_file(s, d));
                    continue;
                }
                EntryName::Internal => continue,
                EntryName::Undecryptable => {
                    self.report.errors.push(format!("{plain}: entry {name:?} does not decrypt; not copied"));
                    continue;
                }
            };
            self.item(&src.join(&name), &dst.join(&name), &child, |c, s, d, p| c.entry(s, d, p));
            (self.progress)(&self.report);
        }
        self.xattr_store(src)?;
        copy_attributes(src, dst).map_err(|e| Error::io(format!("{plain}: attributes"), e))?;
        Ok(())
    }

    /// Runs one item's copy, recording its error instead of stopping the whole copy.
    fn item(
        &mut self,
        src: &Path,
        dst: &Path,
        plain: &str,
        copy: impl FnOnce(&mut Self, &Path, &Path, &str) -> Result<()>,
    ) {
        if let Err(e) = copy(self, src, dst, plain) {
            self.report.errors.push(format!("{plain}: {e}"));
        }
    }

    fn entry(&mut self, src: &Path, dst: &Path, plain: &str) -> Result<()> {
        let meta = std::fs::symlink_metadata(src).map_err(|e| Error::io("stat", e))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            std::fs::create_dir(dst).map_err(|e| Error::io("mkdir", e))?;
            return self.directory(src, dst, plain);
        }
        if meta.nlink() > 1 && !kind.is_dir() {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                return std::fs::hard_link(first, dst).map_err(|e| Error::io("link", e));
            }
            self.links.insert((meta.dev(), meta.ino()), dst.to_path_buf());
        }
        if kind.is_file() {
            self.report.files += 1;
            self.file(src, dst, plain)?;
        } else if kind.is_symlink() {
            self.report.symlinks += 1;
            let target = std::fs::read_link(src).map_err(|e| Error::io("readlink", e))?;
            // A long target's sidecar goes first, as on the mount.
            if let Some(name) = target_sidecar(target.as_os_str()) {
                let stored = link_targets::read(&self.src_root, name)
                    .map_err(|e| Error::io("the sidecar of a long symlink target", e))?;
                link_targets::write(&self.dst_root, name, &stored)?;
            }
            std::os::unix::fs::symlink(target, dst).map_err(|e| Error::io("symlink", e))?;
        } else {
            // FIFOs and sockets (and device nodes, as root): recreated alike.
            sys::c_path(dst)
                .and_then(|path| sys::mknod(&path, meta.mode(), meta.rdev()))
                .map_err(|e| Error::io("mknod", e))?;
        }
        self.xattr_store(src)?;
        copy_attributes(src, dst).map_err(|e| Error::io("attributes", e))
    }

    /// The xattr store `src` names, copied as it is (its entries are under the names key,
    /// which the copy keeps), before the pointer is copied with the other xattrs.
    fn xattr_store(&self, src: &Path) -> Result<()> {
        let Some(id) = xattr_store::pointer_of(src) else { return Ok(()) };
        let entries = xattr_store::read(&self.src_root, &id)
            .map_err(|e| Error::io("the extended-attribute store", e))?;
        match entries {
            Some(entries) => xattr_store::write(&self.dst_root, &id, &entries),
            None => Ok(()),
        }
    }

    /// One file: its data key wrapped again for the destination, its blocks as they are.
    fn file(&mut self, src: &Path, dst: &Path, plain: &str) -> Result<()> {
        let from = open_noatime(src, false).map_err(|e| Error::io("open", e))?;
        let found = unwrap_header(self.src.ring, self.src.access(plain), self.src.config, &from)?;
        let file_id = found.header.file_id;
        let key = self.target(&found.wrapped_by.key_id)?;
        let ctx = self.dst.config.file_context(&file_id);
        let blob = self.dst.ring.wrap_data_key(self.dst.access(plain), &key, &ctx, &found.data_key)?;
        let to = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o600)
            .open(dst)
            .map_err(|e| Error::io("create", e))?;
        to.write_all_at(&FileHeader::new(file_id, blob).encode(), 0)
            .map_err(|e| Error::io("write header", e))?;
        let len = from.metadata().map_err(|e| Error::io("stat", e))?.len();
        self.report.bytes_copied +=
            sys::copy_sparse(&from, &to, HEADER_LEN, len).map_err(|e| Error::io("copy", e))?;
        to.set_len(len).map_err(|e| Error::io("set length", e))?;
        Ok(())
    }

    /// A file copied byte for byte (long-name sidecars).
    fn plain_file(&mut self, src: &Path, dst: &Path) -> Result<()> {
        std::fs::copy(src, dst).map(|_| ()).map_err(|e| Error::io("copy", e))
    }
}

/// Mode, ownership (as root), xattrs (kmsfs's encrypted ones) and times of `src` onto `dst`.
/// Best effort, as `cp -a`: what the destination refuses is left as created.
pub(super) fn copy_attributes(src: &Path, dst: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    let path = sys::c_path(dst)?;
    let node = Node::Path(&path);
    if sys::effective_ids().0 == 0 {
        let _ = sys::chown(node, Some(meta.uid()), Some(meta.gid()));
    }
    if !meta.file_type().is_symlink() {
        let _ = sys::chmod(node, meta.mode() & 0o7777);
    }
    let src_path = sys::c_path(src)?;
    let listed = sys::list_xattr(Node::Path(&src_path)).unwrap_or_default();
    for name in listed.split(|&b| b == 0).filter(|n| n.starts_with(b"user.")) {
        let c_name = sys::c_bytes(name)?;
        let value = sys::get_xattr(Node::Path(&src_path), &c_name)?;
        let _ = sys::set_xattr(node, &c_name, &value, 0);
    }
    let times = [
        libc::timespec { tv_sec: meta.atime(), tv_nsec: meta.atime_nsec() },
        libc::timespec { tv_sec: meta.mtime(), tv_nsec: meta.mtime_nsec() },
    ];
    let _ = sys::set_times(node, &times);
    Ok(())
}

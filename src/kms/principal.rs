//! Who is calling: the principal every KMS operation is decided for and audited under.

use std::ffi::CStr;
use std::sync::Arc;

/// A Linux user acting through a process: the command-line user, or the process behind a
/// FUSE request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (may repeat `gid`).
    pub groups: Vec<u32>,
    /// The user name, or the uid as text if the user has no passwd entry.
    pub user: String,
    pub pid: Option<u32>,
    /// Set for a caller of the API server: how it was identified and from where.
    pub remote: Option<Arc<Remote>>,
}

/// A caller of the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// `arn:aws:iam::ACCOUNT:user/NAME` for an access key; `None` for a Unix-socket peer.
    pub arn: Option<String>,
    /// The account the caller belongs to (the keystore's).
    pub account: String,
    pub access_key_id: Option<String>,
    /// `IP:PORT`, or `unix` for the socket.
    pub source: String,
    /// Whether the caller is also a Unix user (a socket peer, an access key with a uid), so
    /// that Unix principals in policies and grants apply to it.
    pub unix: bool,
}

/// The uid an access key without one acts as: no Unix principal names it.
pub const NO_UID: u32 = u32::MAX;

impl Principal {
    /// The user running this process.
    pub fn current_process() -> Self {
        // SAFETY: these calls cannot fail and touch no memory of ours.
        let (uid, gid, pid) = unsafe { (libc::getuid(), libc::getgid(), libc::getpid()) };
        Principal {
            uid,
            gid,
            groups: current_groups(),
            user: user_name(uid),
            pid: Some(pid as u32),
            remote: None,
        }
    }

    /// A principal known only by ids (a FUSE request); the name is looked up.
    pub fn from_ids(uid: u32, gid: u32, groups: Vec<u32>, pid: Option<u32>) -> Self {
        Principal { uid, gid, groups, user: user_name(uid), pid, remote: None }
    }

    /// Whether Unix principals (users, uids, groups) in policies can name this caller.
    pub fn is_unix(&self) -> bool {
        self.remote.as_ref().is_none_or(|r| r.unix)
    }

    /// The caller's IAM principal ARN, if it signed with an access key.
    pub fn arn(&self) -> Option<&str> {
        self.remote.as_ref().and_then(|r| r.arn.as_deref())
    }
}

/// The user name of `uid`, cached: a mount asks for it on every audited open, and the
/// passwd database is a file to parse.
pub fn user_name(uid: u32) -> String {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<u32, String>>> =
        std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(name) = cache.lock().expect("user name cache").get(&uid) {
        return name.clone();
    }
    let name = lookup_user_name(uid);
    cache.lock().expect("user name cache").insert(uid, name.clone());
    name
}

/// The user name of `uid` from the passwd database, or the number itself.
fn lookup_user_name(uid: u32) -> String {
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes only into `pwd` and `buf`, both alive for the call, and sets
    // `result` to `&pwd` or null.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
    if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
        // SAFETY: pw_name points into `buf`, NUL-terminated by getpwuid_r.
        return unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned();
    }
    uid.to_string()
}

fn current_groups() -> Vec<u32> {
    // SAFETY: with size 0 getgroups only returns the count.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut groups = vec![0 as libc::gid_t; n as usize];
    // SAFETY: `groups` has room for `n` entries.
    let got = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    groups.truncate(got.max(0) as usize);
    groups
}

/// A group's gid, from its name or its number as text (`None`: no such group).
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    let c = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes only into `grp` and `buf`, both alive for the call.
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
    (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
}

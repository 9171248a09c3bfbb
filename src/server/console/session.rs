//! Console sign-in: one-time login tokens (issued to a local user over the Unix socket, by
//! `kmsfs console`) and sessions (a random id in an HttpOnly, SameSite=Strict cookie, with a
//! CSRF token every state-changing form must carry back). Kept in memory: a restart of the
//! server signs everybody out.

use std::collections::HashMap;
use std::sync::Mutex;

/// How long a login link works.
pub const LOGIN_TOKEN_SECS: i64 = 300;
/// A session ends after this long without a request.
pub const IDLE_SECS: i64 = 8 * 3600;
/// The cookie's name.
pub const COOKIE: &str = "kmsfs_console";

/// Who signed in: a Unix user (by a login link) or an access key (by its id and secret).
/// The principal is rebuilt from this on every request, so a disabled access key ends its
/// sessions at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Unix { uid: u32, gid: u32 },
    AccessKey { id: String },
}

#[derive(Debug, Clone)]
pub struct Session {
    pub identity: Identity,
    pub csrf: String,
    last_secs: i64,
}

#[derive(Default)]
pub struct Sessions {
    tokens: Mutex<HashMap<String, (Identity, i64)>>,
    sessions: Mutex<HashMap<String, Session>>,
}

fn random_token() -> String {
    crate::crypto::random_bytes::<32>().iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    /// A login token for `identity`, valid once within LOGIN_TOKEN_SECS.
    pub fn issue_login_token(&self, identity: Identity, now: i64) -> String {
        let token = random_token();
        let mut tokens = self.tokens.lock().expect("console tokens");
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.insert(token.clone(), (identity, now + LOGIN_TOKEN_SECS));
        token
    }

    /// Uses up a login token: the identity it was issued for, if it is valid.
    pub fn redeem_login_token(&self, token: &str, now: i64) -> Option<Identity> {
        let (identity, expires) = self.tokens.lock().expect("console tokens").remove(token)?;
        (expires > now).then_some(identity)
    }

    /// A new session; returns its cookie value.
    pub fn start(&self, identity: Identity, now: i64) -> String {
        let id = random_token();
        let mut sessions = self.sessions.lock().expect("console sessions");
        sessions.retain(|_, s| s.last_secs + IDLE_SECS > now);
        sessions.insert(id.clone(), Session { identity, csrf: random_token(), last_secs: now });
        id
    }

    /// The live session of cookie value `id`, refreshed.
    pub fn get(&self, id: &str, now: i64) -> Option<Session> {
        let mut sessions = self.sessions.lock().expect("console sessions");
        let s = sessions.get_mut(id)?;
        if s.last_secs + IDLE_SECS <= now {
            sessions.remove(id);
            return None;
        }
        s.last_secs = now;
        Some(s.clone())
    }

    pub fn end(&self, id: &str) {
        self.sessions.lock().expect("console sessions").remove(id);
    }
}

/// The session cookie's value in a `Cookie` header.
pub fn cookie_value(header: &str) -> Option<&str> {
    header.split(';').map(str::trim).find_map(|c| c.strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The `Set-Cookie` that starts a session (Secure when served over TLS).
pub fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={IDLE_SECS}{secure}")
}

/// The `Set-Cookie` that ends it.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_token_works_once_and_not_late() {
        let s = Sessions::default();
        let id = Identity::Unix { uid: 1000, gid: 1000 };
        let t = s.issue_login_token(id.clone(), 100);
        assert_eq!(s.redeem_login_token(&t, 101), Some(id.clone()));
        assert_eq!(s.redeem_login_token(&t, 101), None);
        let late = s.issue_login_token(id, 100);
        assert_eq!(s.redeem_login_token(&late, 100 + LOGIN_TOKEN_SECS), None);
    }

    #[test]
    fn sessions_expire_when_idle() {
        let s = Sessions::default();
        let id = s.start(Identity::AccessKey { id: "AKIA".into() }, 0);
        assert!(s.get(&id, IDLE_SECS - 1).is_some());
        assert!(s.get(&id, 2 * IDLE_SECS).is_none());
        assert_eq!(cookie_value(&format!("a=b; {COOKIE}={id}")), Some(id.as_str()));
        assert!(set_cookie("x", true).contains("HttpOnly; SameSite=Strict"));
        assert!(set_cookie("x", true).ends_with("; Secure"));
    }
}

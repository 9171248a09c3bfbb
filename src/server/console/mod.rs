//! The web console under `/console/`: read-mostly pages over the same KMS the JSON API
//! serves (keys, one key, mounts and volumes, the audit trail), and a few actions (enable,
//! disable, schedule and cancel deletion, revoke a grant), each behind a confirmation page.
//!
//! Every read and action runs as the signed-in principal through the same `Kms` calls the
//! API makes, so key policies decide and the audit trail records exactly as for the API.
//! Nothing is loaded from outside the page: styles are inline, the chart is SVG drawn here,
//! and no script runs (the Content-Security-Policy forbids any).

mod chart;
mod html;
mod pages;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::Response;

use super::{Peer, Service};
use crate::kms::principal::Remote;
use crate::kms::{AuditEvent, Outcome, Principal};
use html::{esc, field, form};
use session::{Identity, Sessions};

/// The console's state in the server.
pub struct Console {
    pub sessions: Sessions,
    /// Served over TLS: the session cookie is marked Secure.
    pub secure: bool,
}

impl Console {
    pub fn new(secure: bool) -> Self {
        Console { sessions: Sessions::default(), secure }
    }
}

/// Whether a request is for the console (everything else is the JSON API).
pub fn is_console(parts: &::http::request::Parts) -> bool {
    let p = parts.uri.path();
    p == "/console" || p.starts_with("/console/")
}

/// What a handler needs of the request (owned: handlers run on a blocking thread).
struct Req {
    post: bool,
    path: String,
    query: Vec<(String, String)>,
    form: Vec<(String, String)>,
    cookie: Option<String>,
    peer: Peer,
}

/// What a handler answers.
struct Reply {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn html(status: u16, body: String) -> Self {
        Reply {
            status,
            content_type: "text/html; charset=utf-8",
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }

    fn redirect(to: &str) -> Self {
        Reply {
            status: 303,
            content_type: "text/plain; charset=utf-8",
            headers: vec![("location", to.to_string())],
            body: Vec::new(),
        }
    }

    fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// A page that says why a request was refused.
fn refusal(status: u16, title: &str, message: &str, who: Option<(&str, &str)>) -> Reply {
    let body = format!("<h1>{}</h1><div class=\"err\" id=\"error\">{}</div>", esc(title), esc(message));
    Reply::html(status, html::page(title, who, &body))
}

pub async fn handle(
    svc: &Arc<Service>,
    peer: &Peer,
    parts: &::http::request::Parts,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let req = Req {
        post: parts.method == ::http::Method::POST,
        path: parts.uri.path().to_string(),
        query: form(parts.uri.query().unwrap_or("")),
        form: form(&String::from_utf8_lossy(&body)),
        cookie: parts.headers.get(::http::header::COOKIE).and_then(|v| v.to_str().ok()).map(str::to_string),
        peer: peer.clone(),
    };
    let svc = Arc::clone(svc);
    let reply = tokio::task::spawn_blocking(move || route(&svc, &req)).await.unwrap_or_else(|_| {
        refusal(500, "Internal error", "the console's thread failed; see the server log", None)
    });
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() =
        hyper::StatusCode::from_u16(reply.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let h = response.headers_mut();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = hyper::header::HeaderValue::from_str(value) {
            h.append(name, v);
        }
    };
    put("content-type", reply.content_type);
    // No script at all, nothing from elsewhere, not framed; the login token in a URL is
    // not sent on as a Referer.
    put(
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    );
    put("x-frame-options", "DENY");
    put("x-content-type-options", "nosniff");
    put("referrer-policy", "no-referrer");
    put("cache-control", "no-store");
    for (name, value) in &reply.headers {
        put(name, value);
    }
    response
}

/// The signed-in caller of one request.
struct Caller {
    principal: Principal,
    csrf: String,
    session_id: String,
    /// The name shown in the page header.
    name: String,
    /// The keystore's administrator (its owner, or root) sees the whole audit trail.
    admin: bool,
}

impl Caller {
    fn who(&self) -> Option<(&str, &str)> {
        Some((&self.name, &self.csrf))
    }
}

fn source_of(peer: &Peer) -> String {
    match peer {
        Peer::Tcp(addr) => addr.to_string(),
        Peer::Unix { .. } => "unix".into(),
    }
}

/// The principal a session acts as, built afresh (an access key disabled since sign-in
/// gives none).
fn principal_of(svc: &Service, identity: &Identity, peer: &Peer) -> Option<Principal> {
    match identity {
        Identity::Unix { uid, gid } => {
            let mut p = Principal::from_ids(*uid, *gid, vec![*gid], None);
            p.remote = Some(Arc::new(Remote {
                arn: None,
                account: svc.account.clone(),
                access_key_id: None,
                source: source_of(peer),
                unix: true,
            }));
            Some(p)
        }
        Identity::AccessKey { id } => {
            let cred = svc.ring.credential(id).ok()??;
            let addr = match peer {
                Peer::Tcp(a) => *a,
                Peer::Unix { .. } => SocketAddr::from(([127, 0, 0, 1], 0)),
            };
            Some(svc.caller(&Peer::Tcp(addr), Some(&cred)))
        }
    }
}

fn display_name(p: &Principal) -> String {
    match p.arn() {
        Some(arn) => arn.to_string(),
        None => format!("{} (uid {})", p.user, p.uid),
    }
}

fn signed_in(svc: &Service, req: &Req) -> Option<Caller> {
    let now = svc.clock.now_secs();
    let id = session::cookie_value(req.cookie.as_deref()?)?.to_string();
    let s = svc.console.sessions.get(&id, now)?;
    let Some(principal) = principal_of(svc, &s.identity, &req.peer) else {
        svc.console.sessions.end(&id);
        return None;
    };
    let owner = svc.kms.lock().map(|k| k.owner_uid()).unwrap_or(0);
    let admin = principal.is_unix() && (principal.uid == 0 || principal.uid == owner);
    Some(Caller { name: display_name(&principal), principal, csrf: s.csrf, session_id: id, admin })
}

/// Records a sign-in, successful or refused, as `ConsoleLogin` (CloudTrail's name for it).
fn audit_login(svc: &Service, principal: &Principal, refused: Option<&str>) {
    let mut event = AuditEvent::new(principal, "ConsoleLogin", svc.clock.now_ms());
    if let Some(why) = refused {
        event.outcome = Outcome::Denied;
        event.error_code = Some("AccessDeniedException".into());
        event.reason = why.to_string();
    }
    svc.ring.record(event);
}

fn route(svc: &Service, req: &Req) -> Reply {
    let path = req.path.trim_end_matches('/');
    match (req.post, path) {
        (true, "/console/token") => issue_token(svc, req),
        (false, "/console/login") => match field(&req.query, "token") {
            Some(token) => login_with_token(svc, req, token),
            None => Reply::html(200, pages::login_form(None)),
        },
        (true, "/console/login") => login_with_access_key(svc, req),
        _ => match signed_in(svc, req) {
            None if req.post => refusal(403, "Not signed in", "sign in first: run `kmsfs console`", None),
            None => Reply::redirect("/console/login"),
            Some(caller) => signed_in_route(svc, req, &caller, path),
        },
    }
}

fn signed_in_route(svc: &Service, req: &Req, caller: &Caller, path: &str) -> Reply {
    if req.post {
        // Every state-changing request carries the session's CSRF token.
        let given = field(&req.form, "csrf").unwrap_or("");
        if !crate::crypto::ct_eq(given.as_bytes(), caller.csrf.as_bytes()) {
            return refusal(
                403,
                "Refused",
                "the form's CSRF token is missing or wrong; reload the page and try again",
                caller.who(),
            );
        }
        if path == "/console/logout" {
            svc.console.sessions.end(&caller.session_id);
            return Reply::redirect("/console/login")
                .with_header("set-cookie", session::clear_cookie(svc.console.secure));
        }
        return match path.strip_prefix("/console/key/").and_then(|r| r.split_once('/')) {
            Some((key_id, action)) => pages::act(svc, caller, key_id, action, &req.form),
            None => refusal(404, "Not found", "no such console action", caller.who()),
        };
    }
    match path {
        "/console" => Reply::redirect("/console/keys"),
        "/console/keys" => pages::keys(svc, caller, &req.query),
        "/console/mounts" => pages::mounts(svc, caller),
        "/console/audit" => pages::audit(svc, caller, &req.query),
        "/console/audit/cloudtrail.json" => pages::audit_download(svc, caller, &req.query),
        _ => match path.strip_prefix("/console/key/") {
            Some(rest) => match rest.split_once('/') {
                None => pages::key(svc, caller, rest, &req.query),
                Some((key_id, "confirm")) => pages::confirm(svc, caller, key_id, &req.query),
                Some(_) => refusal(404, "Not found", "no such console page", caller.who()),
            },
            None => refusal(404, "Not found", "no such console page", caller.who()),
        },
    }
}

/// `POST /console/token` over the Unix socket: a login link for the peer's user.
fn issue_token(svc: &Service, req: &Req) -> Reply {
    let Peer::Unix { uid, gid, .. } = req.peer else {
        return refusal(
            403,
            "Refused",
            "login tokens are issued only over the Unix socket, to its peer's user",
            None,
        );
    };
    let token = svc.console.sessions.issue_login_token(Identity::Unix { uid, gid }, svc.clock.now_secs());
    let body = serde_json::json!({
        "Path": format!("/console/login?token={token}"),
        "ExpiresInSeconds": session::LOGIN_TOKEN_SECS,
        "User": crate::kms::principal::user_name(uid),
        "Uid": uid,
    });
    Reply {
        status: 200,
        content_type: "application/json",
        headers: Vec::new(),
        body: body.to_string().into_bytes(),
    }
}

fn start_session(svc: &Service, identity: Identity) -> Reply {
    let id = svc.console.sessions.start(identity, svc.clock.now_secs());
    Reply::redirect("/console/keys").with_header("set-cookie", session::set_cookie(&id, svc.console.secure))
}

fn login_with_token(svc: &Service, req: &Req, token: &str) -> Reply {
    match svc.console.sessions.redeem_login_token(token, svc.clock.now_secs()) {
        Some(identity) => {
            if let Some(p) = principal_of(svc, &identity, &req.peer) {
                audit_login(svc, &p, None);
            }
            start_session(svc, identity)
        }
        None => refusal(
            403,
            "Sign-in refused",
            "this login link was used already or has expired; run `kmsfs console` for a new one",
            None,
        ),
    }
}

fn login_with_access_key(svc: &Service, req: &Req) -> Reply {
    let id = field(&req.form, "access_key_id").unwrap_or("").trim().to_string();
    let secret = field(&req.form, "secret_access_key").unwrap_or("");
    let cred = svc.ring.credential(&id).ok().flatten();
    let ok = cred.as_ref().is_some_and(|c| crate::crypto::ct_eq(c.secret.as_bytes(), secret.as_bytes()));
    let identity = Identity::AccessKey { id: id.clone() };
    if !ok {
        let mut anonymous = svc.caller(&req.peer, None);
        if let Some(r) = anonymous.remote.as_mut() {
            Arc::make_mut(r).access_key_id = (id.len() <= 128).then(|| id.clone());
        }
        audit_login(svc, &anonymous, Some("the access key is unknown or inactive, or the secret is wrong"));
        return Reply::html(
            403,
            pages::login_form(Some("The access key is unknown or inactive, or the secret is wrong.")),
        );
    }
    if let Some(p) = principal_of(svc, &identity, &req.peer) {
        audit_login(svc, &p, None);
    }
    start_session(svc, identity)
}

//! The console's pages and actions. Each runs the KMS calls the API would make for the
//! signed-in principal; a section the principal may not read says so instead of failing
//! the page. Every value from the keystore is escaped (`esc`) or URL-encoded (`url`).

use std::fmt::Write;

use super::chart::{self, Hour, HOURS};
use super::html::{self, duration, esc, field, state_badge, url};
use super::{refusal, Caller, Reply};
use crate::error::Error;
use crate::keystore::records::KeyState;
use crate::kms::clock::{format_date, format_time_ms, parse_time};
use crate::kms::cloudtrail::{self, TrailIdentity};
use crate::kms::lifecycle::{DAY_SECS, DEFAULT_PENDING_WINDOW_DAYS, PENDING_WINDOW_DAYS};
use crate::kms::{AuditFilter, KeyMetadata, Kms, Outcome};
use crate::server::Service;

/// Audit events per page.
const PAGE_SIZE: usize = 50;

fn lock(svc: &Service) -> std::sync::MutexGuard<'_, Kms> {
    // A panic while holding the lock leaves the keystore consistent (transactions roll
    // back), so a poisoned lock is still usable.
    svc.kms.lock().unwrap_or_else(|e| e.into_inner())
}

fn err_box(e: &Error) -> String {
    format!("<div class=\"err\">{}</div>", esc(&e.to_string()))
}

fn aliases_text(aliases: &[String]) -> String {
    if aliases.is_empty() {
        "<span class=\"muted\">–</span>".into()
    } else {
        aliases.iter().map(|a| format!("<code>{}</code>", esc(a))).collect::<Vec<_>>().join(" ")
    }
}

fn rotation_text(k: &KeyMetadata) -> String {
    match (k.key_rotation_enabled, &k.next_rotation_date) {
        (true, Some(next)) => format!(
            "every {} days<br><span class=\"muted\">next {}</span>",
            k.rotation_period_in_days.unwrap_or(365),
            esc(next)
        ),
        (true, None) => "on".into(),
        _ => "<span class=\"muted\">off</span>".into(),
    }
}

fn deletion_text(k: &KeyMetadata, now: i64) -> String {
    match (k.key_state, k.deletion_secs) {
        (KeyState::PendingDeletion, Some(date)) => format!(
            "<span class=\"countdown\" id=\"countdown-{}\">destroyed in {}</span><br>\
             <span class=\"muted\">{}</span>",
            esc(&k.key_id),
            duration(date - now),
            esc(&format_date(date))
        ),
        (KeyState::Destroyed, Some(date)) => format!("destroyed {}", esc(&format_date(date))),
        _ => "<span class=\"muted\">–</span>".into(),
    }
}

fn notice(query: &[(String, String)]) -> String {
    field(query, "done")
        .map(|d| format!("<div class=\"notice\" id=\"notice\">{}</div>", esc(d)))
        .unwrap_or_default()
}

pub fn keys(svc: &Service, caller: &Caller, query: &[(String, String)]) -> Reply {
    let mut kms = lock(svc);
    let now = kms.now_secs();
    let mut body = String::from("<h1>Keys</h1>");
    body.push_str(&notice(query));
    match kms.list_keys(&caller.principal) {
        Err(e) => body.push_str(&err_box(&e)),
        Ok(keys) => {
            body.push_str(
                "<table id=\"keys\"><tr><th>Aliases</th><th>Key ID</th><th>State</th><th>Spec</th>\
                 <th>Description</th><th>Rotation</th><th>Deletion</th></tr>",
            );
            for k in &keys {
                let _ = write!(
                    body,
                    "<tr class=\"key\" id=\"key-{id}\"><td>{}</td><td><a href=\"/console/key/{}\"><code>{id}</code></a></td>\
                     <td>{}</td><td>{}</td><td class=\"description\">{}</td><td>{}</td><td>{}</td></tr>",
                    aliases_text(&k.aliases),
                    url(&k.key_id),
                    state_badge(k.key_state.as_str()),
                    esc(k.key_spec),
                    esc(&k.description),
                    rotation_text(k),
                    deletion_text(k, now),
                    id = esc(&k.key_id),
                );
            }
            body.push_str("</table>");
            if keys.is_empty() {
                body.push_str("<p class=\"muted\">No keys yet: <code>kmsfs key create</code>.</p>");
            }
        }
    }
    Reply::html(200, html::page("Keys", caller.who(), &body))
}

/// The actions a caller may take on a key in its state (as `(action, label, IAM action)`).
fn offered_actions(kms: &Kms, caller: &Caller, k: &KeyMetadata) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    let candidates: &[(&str, &str, &str)] = match k.key_state {
        KeyState::Enabled => &[
            ("disable", "Disable", "kms:DisableKey"),
            ("schedule-deletion", "Schedule deletion…", "kms:ScheduleKeyDeletion"),
        ],
        KeyState::Disabled => &[
            ("enable", "Enable", "kms:EnableKey"),
            ("schedule-deletion", "Schedule deletion…", "kms:ScheduleKeyDeletion"),
        ],
        KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => {
            &[("cancel-deletion", "Cancel deletion", "kms:CancelKeyDeletion")]
        }
        KeyState::PendingImport => &[("schedule-deletion", "Schedule deletion…", "kms:ScheduleKeyDeletion")],
        KeyState::Destroyed => &[],
    };
    if k.key_manager.as_str() == "MANAGED" {
        return out;
    }
    for (action, label, iam) in candidates {
        if kms.permits(&caller.principal, &k.key_id, iam).unwrap_or(false) {
            out.push((*action, *label));
        }
    }
    out
}

fn hourly(kms: &Kms, key_id: &str, now: i64) -> Result<Vec<Hour>, Error> {
    let end_hour = now / 3600;
    let start_hour = end_hour - HOURS as i64 + 1;
    let mut hours = vec![Hour::default(); HOURS];
    for (hour, outcome, n) in
        crate::kms::usage::hourly_counts(kms.keystore().conn(), key_id, start_hour * 3_600_000)?
    {
        let Some(slot) = usize::try_from(hour - start_hour).ok().and_then(|i| hours.get_mut(i)) else {
            continue;
        };
        match outcome {
            Outcome::Success => slot.allowed += n,
            Outcome::Denied => slot.denied += n,
            Outcome::Error => slot.error += n,
        }
    }
    Ok(hours)
}

pub fn key(svc: &Service, caller: &Caller, key_id: &str, query: &[(String, String)]) -> Reply {
    let mut kms = lock(svc);
    let p = &caller.principal;
    let now = kms.now_secs();
    let k = match kms.describe_key(p, key_id) {
        Ok(k) => k,
        Err(e) => {
            let status = if matches!(e, Error::AccessDenied(_)) { 403 } else { 404 };
            return refusal(status, "Key", &e.to_string(), caller.who());
        }
    };
    let id = k.key_id.clone();
    let title = k.aliases.first().cloned().unwrap_or_else(|| id.clone());
    let mut b = format!("<h1>{} {}</h1>", esc(&title), state_badge(k.key_state.as_str()));
    b.push_str(&notice(query));
    b.push_str("<div class=\"actions\" id=\"actions\">");
    for (action, label) in offered_actions(&kms, caller, &k) {
        let class = if action == "schedule-deletion" || action == "disable" { "btn danger" } else { "btn" };
        let _ = write!(
            b,
            "<a class=\"{class}\" id=\"action-{action}\" href=\"/console/key/{}/confirm?action={action}\">{label}</a>",
            url(&id)
        );
    }
    b.push_str("</div>");
    let arn = svc.key_arn(&id);
    let rows: Vec<(&str, String)> = vec![
        ("Key ID", format!("<code>{}</code>", esc(&id))),
        ("ARN", format!("<code>{}</code>", esc(&arn))),
        ("Aliases", aliases_text(&k.aliases)),
        ("Description", format!("<span id=\"description\">{}</span>", esc(&k.description))),
        ("State", state_badge(k.key_state.as_str())),
        ("Spec / usage", format!("{} / {}", esc(k.key_spec), esc(k.key_usage))),
        ("Origin / manager", format!("{} / {}", esc(&k.origin), esc(k.key_manager.as_str()))),
        ("Created", esc(&k.creation_date).to_string()),
        ("Rotation", rotation_text(&k)),
        ("Current version", k.current_key_version.to_string()),
        ("Deletion", deletion_text(&k, now)),
    ];
    b.push_str("<h2>Metadata</h2><table id=\"metadata\">");
    for (name, value) in rows {
        let _ = write!(b, "<tr><th>{name}</th><td>{value}</td></tr>");
    }
    b.push_str("</table>");

    b.push_str("<h2>Use over the last 7 days (calls per hour)</h2>");
    match hourly(&kms, &id, now) {
        Ok(hours) => b.push_str(&chart::usage_svg(&hours, now)),
        Err(e) => b.push_str(&err_box(&e)),
    }
    b.push_str("<h2>Last use</h2>");
    match kms.key_last_usage(p, &id) {
        Ok(u) => match u.last {
            Some((op, ms)) => {
                let _ = write!(b, "<p id=\"last-use\">{} at {}</p>", esc(&op), esc(&format_time_ms(ms)));
            }
            None => b.push_str("<p id=\"last-use\" class=\"muted\">never used for cryptography</p>"),
        },
        Err(e) => b.push_str(&err_box(&e)),
    }

    b.push_str("<h2>Versions</h2>");
    match kms.list_key_versions(p, &id) {
        Ok(versions) => {
            b.push_str("<table id=\"versions\"><tr><th>Version</th><th>Created</th><th>Rotation</th><th>Material</th></tr>");
            for v in versions {
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    v.version,
                    esc(&format_date(v.created)),
                    esc(&v.rotation_type),
                    if v.material_present { "present" } else { "destroyed" }
                );
            }
            b.push_str("</table>");
        }
        Err(e) => b.push_str(&err_box(&e)),
    }

    b.push_str("<h2>Key policy</h2>");
    match kms.get_key_policy(p, &id) {
        Ok(text) => {
            let pretty = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(text);
            let _ = write!(b, "<pre id=\"policy\">{}</pre>", esc(&pretty));
        }
        Err(e) => b.push_str(&err_box(&e)),
    }

    b.push_str("<h2>Grants</h2>");
    match kms.list_grants(p, &id) {
        Ok(grants) if grants.is_empty() => b.push_str("<p class=\"muted\" id=\"grants\">none</p>"),
        Ok(grants) => {
            let may_revoke = kms.permits(p, &id, "kms:RevokeGrant").unwrap_or(false);
            b.push_str(
                "<table id=\"grants\"><tr><th>Grant</th><th>Name</th><th>Grantee</th><th>Operations</th>\
                 <th>Constraints</th><th>Created</th><th>Expires</th><th></th></tr>",
            );
            for g in grants {
                let expires = match g.expires {
                    None => "<span class=\"muted\">never</span>".to_string(),
                    Some(t) if t <= now => format!("expired {}", esc(&format_date(t))),
                    Some(t) => format!(
                        "{}<br><span class=\"muted\">in {}</span>",
                        esc(&format_date(t)),
                        duration(t - now)
                    ),
                };
                let constraints = g
                    .constraints
                    .iter()
                    .map(|(k, v)| format!("<code>{}={}</code>", esc(k), esc(v)))
                    .collect::<Vec<_>>()
                    .join(" ");
                let revoke = if may_revoke {
                    format!(
                        "<a class=\"btn danger\" href=\"/console/key/{}/confirm?action=revoke-grant&amp;grant={}\">Revoke…</a>",
                        url(&id),
                        url(&g.grant_id)
                    )
                } else {
                    String::new()
                };
                let _ = write!(
                    b,
                    "<tr class=\"grant\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&g.grant_id[..g.grant_id.len().min(16)]),
                    esc(&g.name),
                    esc(&g.grantee),
                    esc(&g.operations.join(", ")),
                    constraints,
                    esc(&format_date(g.created)),
                    expires,
                    revoke
                );
            }
            b.push_str("</table>");
        }
        Err(e) => b.push_str(&err_box(&e)),
    }

    b.push_str("<h2>Tags</h2>");
    match kms.list_key_tags(p, &id) {
        Ok(tags) if tags.is_empty() => b.push_str("<p class=\"muted\" id=\"tags\">none</p>"),
        Ok(tags) => {
            b.push_str("<table id=\"tags\"><tr><th>Key</th><th>Value</th></tr>");
            for (k, v) in tags {
                let _ = write!(b, "<tr><td>{}</td><td>{}</td></tr>", esc(&k), esc(&v));
            }
            b.push_str("</table>");
        }
        Err(e) => b.push_str(&err_box(&e)),
    }
    let _ = write!(b, "<p><a href=\"/console/audit?key={}\">This key's audit trail</a></p>", url(&id));
    Reply::html(200, html::page(&title, caller.who(), &b))
}

fn pending_days(form: &[(String, String)]) -> Result<i64, String> {
    let days = field(form, "days")
        .map(|d| d.parse::<i64>())
        .transpose()
        .map_err(|_| "the window must be a number of days")?;
    let days = days.unwrap_or(DEFAULT_PENDING_WINDOW_DAYS);
    if !PENDING_WINDOW_DAYS.contains(&days) {
        return Err(format!(
            "the deletion window must be {} to {} days",
            PENDING_WINDOW_DAYS.start(),
            PENDING_WINDOW_DAYS.end()
        ));
    }
    Ok(days)
}

/// The second step of every action: what will happen, and a form that does it.
pub fn confirm(svc: &Service, caller: &Caller, key_id: &str, query: &[(String, String)]) -> Reply {
    let mut kms = lock(svc);
    let now = kms.now_secs();
    let k = match kms.describe_key(&caller.principal, key_id) {
        Ok(k) => k,
        Err(e) => return refusal(403, "Key", &e.to_string(), caller.who()),
    };
    let name = k.aliases.first().cloned().unwrap_or_else(|| k.key_id.clone());
    let action = field(query, "action").unwrap_or("");
    let mut hidden = String::new();
    let (title, explain, button) = match action {
        "enable" => {
            ("Enable key", "Files and API calls under this key will work again.".to_string(), "Enable")
        }
        "disable" => (
            "Disable key",
            "Every use of this key is refused until it is enabled again: mounted files under it \
             stop opening (ENOKEY) and API calls get DisabledException."
                .to_string(),
            "Disable",
        ),
        "cancel-deletion" => (
            "Cancel deletion",
            "The key is kept and becomes Disabled (as in AWS KMS); enable it to use it again.".to_string(),
            "Cancel deletion",
        ),
        "schedule-deletion" => {
            let days = match pending_days(query) {
                Ok(d) => d,
                Err(e) => return refusal(400, "Schedule deletion", &e, caller.who()),
            };
            let date = format_date(now + days * DAY_SECS);
            let _ = write!(hidden, "<input type=\"hidden\" name=\"days\" value=\"{days}\">");
            let mut options = String::new();
            for d in PENDING_WINDOW_DAYS {
                let sel = if d == days { " selected" } else { "" };
                let _ = write!(options, "<option value=\"{d}\"{sel}>{d} days</option>");
            }
            let explain = format!(
                "After a waiting period of <b id=\"window\">{days} days</b>, on <b id=\"deletion-date\">{}</b>, \
                 the key's material is destroyed: everything encrypted under it becomes unrecoverable. \
                 Until then the key is unusable and the deletion can be cancelled.\
                 <form method=\"get\" class=\"filters\"><input type=\"hidden\" name=\"action\" value=\"schedule-deletion\">\
                 <label>Waiting period<select name=\"days\">{options}</select></label>\
                 <button class=\"btn\" type=\"submit\">Show the date</button></form>",
                esc(&date)
            );
            ("Schedule key deletion", explain, "Schedule deletion")
        }
        "revoke-grant" => {
            let Some(grant) = field(query, "grant") else {
                return refusal(400, "Revoke grant", "which grant? (grant=ID)", caller.who());
            };
            let _ = write!(hidden, "<input type=\"hidden\" name=\"grant\" value=\"{}\">", esc(grant));
            (
                "Revoke grant",
                format!(
                    "Grant <code>{}</code> stops allowing anything at once; its grantee keeps only what the policy allows.",
                    esc(grant)
                ),
                "Revoke",
            )
        }
        _ => return refusal(400, "Confirm", "unknown action", caller.who()),
    };
    let body = format!(
        "<h1>{title}: {}</h1><p>{explain}</p>\
         <form method=\"post\" action=\"/console/key/{}/{action}\" id=\"confirm-form\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">{hidden}\
         <div class=\"actions\"><button class=\"btn danger\" type=\"submit\" id=\"confirm\">{button}</button>\
         <a class=\"btn\" href=\"/console/key/{}\">Back</a></div></form>",
        esc(&name),
        url(&k.key_id),
        esc(&caller.csrf),
        url(&k.key_id),
    );
    Reply::html(200, html::page(title, caller.who(), &body))
}

/// A confirmed action (the CSRF token was checked): done as the principal, audited by the
/// KMS like the API call of the same name.
pub fn act(svc: &Service, caller: &Caller, key_id: &str, action: &str, form: &[(String, String)]) -> Reply {
    let mut kms = lock(svc);
    let p = &caller.principal;
    let result: Result<String, Error> = match action {
        "enable" => kms.enable_key(p, key_id).map(|_| "Key enabled.".into()),
        "disable" => kms.disable_key(p, key_id).map(|_| "Key disabled.".into()),
        "cancel-deletion" => {
            kms.cancel_key_deletion(p, key_id).map(|_| "Deletion cancelled; the key is Disabled.".into())
        }
        "schedule-deletion" => match pending_days(form) {
            Ok(days) => kms
                .schedule_key_deletion(p, key_id, days)
                .map(|date| format!("Deletion scheduled for {}.", format_date(date))),
            Err(e) => Err(Error::InvalidArgument(e)),
        },
        "revoke-grant" => match field(form, "grant") {
            Some(g) => kms.revoke_grant(p, key_id, g).map(|_| "Grant revoked.".into()),
            None => Err(Error::InvalidArgument("which grant? (grant=ID)".into())),
        },
        _ => return refusal(404, "Not found", "no such console action", caller.who()),
    };
    match result {
        Ok(done) => Reply::redirect(&format!("/console/key/{}?done={}", url(key_id), url(&done))),
        Err(e) => {
            let status = match Outcome::of_error(&e) {
                Outcome::Denied if matches!(e, Error::AccessDenied(_)) => 403,
                _ => 400,
            };
            refusal(status, "Refused", &e.to_string(), caller.who())
        }
    }
}

pub fn mounts(svc: &Service, caller: &Caller) -> Reply {
    let kms = lock(svc);
    let mut b = String::from("<h1>Mounts &amp; volumes</h1><h2>Mounted now</h2>");
    let keystore_id = kms.keystore().keystore_id().unwrap_or_default();
    // Only this keystore's volumes: a mount of another keystore is none of its business.
    let mut others = 0;
    let mut rows = String::new();
    for m in crate::mounts::kmsfs_mounts() {
        let config = match crate::volume::VolumeConfig::load(&m.cipher_dir) {
            Ok(c) if c.keystore_id == keystore_id => c,
            _ => {
                others += 1;
                continue;
            }
        };
        let _ = write!(
            rows,
            "<tr class=\"mount\"><td><code>{}</code></td><td><code>{}</code></td><td>{}<br><code class=\"muted\">{}</code></td>\
             <td><a href=\"/console/key/{}\"><code>{}</code></a></td></tr>",
            esc(&m.mount_point.display().to_string()),
            esc(&m.cipher_dir.display().to_string()),
            esc(&config.name),
            esc(&config.volume_id),
            url(&config.default_key_id),
            esc(&config.default_key_id),
        );
    }
    if rows.is_empty() {
        b.push_str(
            "<p class=\"muted\" id=\"mounts\">no volume of this keystore is mounted on this machine</p>",
        );
    } else {
        let _ = write!(
            b,
            "<table id=\"mounts\"><tr><th>Mount point</th><th>Cipher directory</th><th>Volume</th>\
             <th>Default key</th></tr>{rows}</table>"
        );
    }
    if others > 0 {
        let _ = write!(b, "<p class=\"muted\">and {others} kmsfs mount(s) of other keystores</p>");
    }
    b.push_str("<h2>Volumes seen in the audit trail</h2>");
    if !caller.admin {
        b.push_str("<p class=\"muted\">the keystore's administrator sees which volumes used its keys</p>");
    } else {
        match crate::kms::usage::volumes_seen(kms.keystore().conn()) {
            Ok(v) if v.is_empty() => b.push_str("<p class=\"muted\" id=\"volumes\">none yet</p>"),
            Ok(vols) => {
                b.push_str(
                    "<table id=\"volumes\"><tr><th>Volume id</th><th>Events</th><th>Users</th><th>Keys</th>\
                     <th>Last seen</th><th>Last path</th></tr>",
                );
                for v in vols {
                    let _ = write!(
                        b,
                        "<tr class=\"volume\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                        esc(&v.volume_id),
                        v.events,
                        v.users,
                        v.keys,
                        esc(&format_time_ms(v.last_ms)),
                        esc(v.last_path.as_deref().unwrap_or("–"))
                    );
                }
                b.push_str("</table>");
            }
            Err(e) => b.push_str(&err_box(&e)),
        }
    }
    Reply::html(200, html::page("Mounts & volumes", caller.who(), &b))
}

/// The filter of the audit page's query; a caller who is not the administrator sees only
/// its own events.
fn audit_filter(kms: &Kms, caller: &Caller, q: &[(String, String)]) -> Result<AuditFilter, String> {
    let now = kms.now_secs();
    let time = |name: &str| -> Result<Option<i64>, String> {
        field(q, name).map(|t| parse_time(t, now, true).map(|s| s * 1000)).transpose()
    };
    let mut f = AuditFilter {
        key_id: field(q, "key").map(|k| kms.resolve_key_id(k).unwrap_or_else(|_| k.to_string())),
        operation: field(q, "operation").map(str::to_string),
        outcome: match field(q, "outcome") {
            None => None,
            Some("Success") => Some(Outcome::Success),
            Some("Denied") => Some(Outcome::Denied),
            Some("Error") => Some(Outcome::Error),
            Some(other) => return Err(format!("unknown outcome '{other}'")),
        },
        since_ms: time("since")?,
        until_ms: time("until")?,
        before_seq: field(q, "before").and_then(|s| s.parse().ok()),
        ..Default::default()
    };
    match field(q, "principal") {
        Some(p) if p.starts_with("arn:") => f.principal_arn = Some(p.to_string()),
        Some(p) => f.uid = Some(p.parse().map_err(|_| format!("principal '{p}': give an IAM ARN or a uid"))?),
        None => {}
    }
    if !caller.admin {
        match caller.principal.arn() {
            Some(arn) => f.principal_arn = Some(arn.to_string()),
            None => f.uid = Some(caller.principal.uid),
        }
    }
    Ok(f)
}

fn query_string(q: &[(String, String)], skip: &str) -> String {
    q.iter()
        .filter(|(k, v)| k != skip && !v.is_empty())
        .map(|(k, v)| format!("{}={}", url(k), url(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub fn audit(svc: &Service, caller: &Caller, q: &[(String, String)]) -> Reply {
    let kms = lock(svc);
    let mut b = String::from("<h1>Audit trail</h1>");
    if !caller.admin {
        b.push_str("<div class=\"notice\">Only your own calls are shown; the keystore's administrator sees everyone's.</div>");
    }
    let v = |name: &str| esc(field(q, name).unwrap_or("")).to_string();
    let mut outcomes = String::from("<option value=\"\">any</option>");
    for o in ["Success", "Denied", "Error"] {
        let sel = if field(q, "outcome") == Some(o) { " selected" } else { "" };
        let _ = write!(outcomes, "<option value=\"{o}\"{sel}>{o}</option>");
    }
    let _ = write!(
        b,
        "<form class=\"filters\" method=\"get\" id=\"filters\">\
         <label>Key (id or alias)<input name=\"key\" value=\"{}\"></label>\
         <label>Principal (ARN or uid)<input name=\"principal\" value=\"{}\"></label>\
         <label>Operation<input name=\"operation\" value=\"{}\"></label>\
         <label>Outcome<select name=\"outcome\">{outcomes}</select></label>\
         <label>Since (2h, 2026-12-01)<input name=\"since\" value=\"{}\"></label>\
         <label>Until<input name=\"until\" value=\"{}\"></label>\
         <button class=\"btn primary\" type=\"submit\">Filter</button></form>",
        v("key"),
        v("principal"),
        v("operation"),
        v("since"),
        v("until"),
    );
    let mut filter = match audit_filter(&kms, caller, q) {
        Ok(f) => f,
        Err(e) => {
            let _ = write!(b, "<div class=\"err\">{}</div>", esc(&e));
            return Reply::html(400, html::page("Audit trail", caller.who(), &b));
        }
    };
    filter.limit = Some(PAGE_SIZE + 1);
    let events = match kms.audit_events(&filter) {
        Ok(e) => e,
        Err(e) => {
            b.push_str(&err_box(&e));
            return Reply::html(500, html::page("Audit trail", caller.who(), &b));
        }
    };
    let more = events.len() > PAGE_SIZE;
    let shown: Vec<_> = events.into_iter().rev().take(PAGE_SIZE).collect();
    let qs = query_string(q, "before");
    let _ = write!(
        b,
        "<p><a class=\"btn\" href=\"/console/audit/cloudtrail.json?{}\" id=\"download\">Download as CloudTrail JSON</a></p>",
        esc(&qs)
    );
    b.push_str(
        "<table id=\"audit\"><tr><th>#</th><th>Time (UTC)</th><th>Principal</th><th>Operation</th><th>Key</th>\
         <th>Outcome</th><th>Source</th><th>Detail</th></tr>",
    );
    for r in &shown {
        let ev = &r.event;
        let who = ev.principal_arn.clone().unwrap_or_else(|| format!("{} (uid {})", ev.user, ev.uid));
        let key = match &ev.key_id {
            Some(k) => {
                format!("<a href=\"/console/key/{}\"><code>{}</code></a>", url(k), esc(&k[..k.len().min(8)]))
            }
            None => "–".into(),
        };
        let detail =
            [ev.path.clone(), ev.error_code.clone(), (!ev.reason.is_empty()).then(|| ev.reason.clone())]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" · ");
        let _ = write!(
            b,
            "<tr class=\"event row-{outcome}\"><td>{}</td><td class=\"time\">{}</td><td>{}</td><td>{}</td><td>{key}</td>\
             <td class=\"{outcome}\">{outcome}</td><td>{}</td><td>{}</td></tr>",
            r.seq,
            esc(&format_time_ms(ev.time_ms)),
            esc(&who),
            esc(&ev.operation),
            esc(ev.source.as_deref().unwrap_or("local")),
            esc(&detail),
            outcome = ev.outcome.as_str(),
        );
    }
    b.push_str("</table>");
    if shown.is_empty() {
        b.push_str("<p class=\"muted\">no event matches</p>");
    }
    b.push_str("<div class=\"actions\">");
    if filter.before_seq.is_some() {
        let _ = write!(b, "<a class=\"btn\" href=\"/console/audit?{}\">Newest</a>", esc(&qs));
    }
    if let (true, Some(oldest)) = (more, shown.last()) {
        let sep = if qs.is_empty() { "" } else { "&" };
        let _ = write!(
            b,
            "<a class=\"btn\" id=\"older\" href=\"/console/audit?{}{sep}before={}\">Older →</a>",
            esc(&qs),
            oldest.seq
        );
    }
    b.push_str("</div>");
    Reply::html(200, html::page("Audit trail", caller.who(), &b))
}

/// The events the audit page's filters select, as CloudTrail's `{"Records": [...]}`.
pub fn audit_download(svc: &Service, caller: &Caller, q: &[(String, String)]) -> Reply {
    let kms = lock(svc);
    let filter = match audit_filter(&kms, caller, q) {
        Ok(f) => f,
        Err(e) => return refusal(400, "Audit trail", &e, caller.who()),
    };
    let id = TrailIdentity {
        account: svc.account.clone(),
        region: svc.region.clone(),
        keystore_id: kms.keystore().keystore_id().unwrap_or_default(),
    };
    let mut out = Vec::new();
    let written = kms.audit_events(&filter).map_err(|e| e.to_string()).and_then(|events| {
        cloudtrail::write(&mut out, &id, &events, cloudtrail::Layout::Records).map_err(|e| e.to_string())
    });
    if let Err(e) = written {
        return refusal(500, "Audit trail", &e, caller.who());
    }
    Reply {
        status: 200,
        content_type: "application/json",
        headers: vec![("content-disposition", "attachment; filename=\"kmsfs-cloudtrail.json\"".into())],
        body: out,
    }
}

pub fn login_form(error: Option<&str>) -> String {
    let error =
        error.map(|e| format!("<div class=\"err\" id=\"error\">{}</div>", esc(e))).unwrap_or_default();
    let body = format!(
        "<h1>Sign in</h1>{error}\
         <p>On the server's machine, <code>kmsfs console</code> prints a one-time link that signs you in as \
         your Unix user. Or sign in with an access key (<code>kmsfs access-key create</code>):</p>\
         <form method=\"post\" action=\"/console/login\" class=\"filters\" id=\"login\">\
         <label>Access key id<input name=\"access_key_id\" autocomplete=\"username\" size=\"24\"></label>\
         <label>Secret access key<input name=\"secret_access_key\" type=\"password\" autocomplete=\"current-password\" size=\"44\"></label>\
         <button class=\"btn primary\" type=\"submit\">Sign in</button></form>"
    );
    html::page("Sign in", None, &body)
}

//! HTML building: one escaping helper for every value that did not come from this file,
//! percent-encoding for values put into links, the page frame, and form/query decoding.
//!
//! Pages are plain `format!` strings. Anything interpolated that came from a user or the
//! keystore (descriptions, aliases, tags, policies, paths, principals, error messages) goes
//! through [`esc`]; numbers and the constants of this module are the only raw inserts.

use std::fmt;

/// Text made safe for HTML element content and double- or single-quoted attributes.
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// Escapes `s` for HTML (see [`Esc`]).
pub fn esc(s: &str) -> Esc<'_> {
    Esc(s)
}

/// Percent-encodes `s` for a URL path segment or query value (then escaped as HTML, since
/// `&` separates query pairs).
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `application/x-www-form-urlencoded` (a form body or a query string).
pub fn form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first value of `name` in decoded pairs, if not empty.
pub fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2b3a;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}
header a{color:#cfe3ff;text-decoration:none}header b{font-size:16px}
header .who{margin-left:auto;color:#9fb3c8}header form{display:inline}
main{padding:16px 24px;max-width:1180px}
h1{font-size:20px;margin:8px 0 12px}h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;background:#fff;width:100%;box-shadow:0 1px 2px #0001}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eef1f4;font-weight:600;font-size:13px}
code,pre{font:12.5px ui-monospace,monospace}pre{background:#fff;padding:10px;border:1px solid #e3e6ea;overflow:auto}
.state{padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600}
.Enabled{background:#d9f2e1;color:#145c2c}.Disabled{background:#e6e8eb;color:#444}
.PendingDeletion{background:#fde2cf;color:#8a3b00}.PendingImport{background:#e8e0f5;color:#4a2a7a}.Destroyed{background:#f5d0d0;color:#7a1010}
.Success{color:#145c2c}.Denied{color:#b00020;font-weight:700}.Error{color:#8a5a00}
.countdown{color:#8a3b00;font-weight:600}
.btn{display:inline-block;padding:4px 12px;border:1px solid #8895a7;border-radius:4px;background:#fff;color:#1d2430;text-decoration:none;font:inherit;cursor:pointer}
.danger{border-color:#b00020;color:#b00020}.primary{background:#1d5fbf;border-color:#1d5fbf;color:#fff}
.notice{background:#fff7d6;border:1px solid #e8d48a;padding:8px 12px;margin:8px 0}
.err{background:#fde8e8;border:1px solid #e4a5a5;padding:8px 12px;margin:8px 0}
form.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:end;margin-bottom:10px}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#556}
input,select{font:inherit;padding:3px 6px}
.muted{color:#778}.actions{display:flex;gap:8px;margin:8px 0}
#keys td,td.time{white-space:nowrap}tr.row-Denied{background:#fff0f1}#keys td.description{white-space:normal}
";

/// A whole page: the navigation (with the signed-in principal and a sign-out form) and
/// `body`, which the caller built with every user value escaped.
pub fn page(title: &str, who: Option<(&str, &str)>, body: &str) -> String {
    let nav = match who {
        Some((name, csrf)) => format!(
            "<a href=\"/console/keys\">Keys</a><a href=\"/console/mounts\">Mounts &amp; volumes</a>\
             <a href=\"/console/audit\">Audit trail</a>\
             <span class=\"who\">signed in as <b id=\"principal\">{}</b> \
             <form method=\"post\" action=\"/console/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button class=\"btn\" type=\"submit\">Sign out</button></form></span>",
            esc(name),
            esc(csrf)
        ),
        None => String::new(),
    };
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · kmsfs</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style></head>\
         <body><header><b>kmsfs console</b>{nav}</header><main>{body}</main></body></html>",
        esc(title)
    )
}

/// A key state as a coloured badge.
pub fn state_badge(state: &str) -> String {
    format!("<span class=\"state {0}\">{0}</span>", esc(state))
}

/// "3 days 4 h" for a number of seconds.
pub fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h) {
        (0, 0) => format!("{m} min"),
        (0, _) => format!("{h} h {m} min"),
        _ => format!("{d} day{} {h} h", if d == 1 { "" } else { "s" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script>&\"").to_string(),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(esc("plain").to_string(), "plain");
    }

    #[test]
    fn forms_decode_and_urls_encode() {
        let f = form("a=1+2&b=%3Cx%3E&c=&d=%zz&e=%4");
        assert_eq!(field(&f, "a"), Some("1 2"));
        assert_eq!(field(&f, "b"), Some("<x>"));
        assert_eq!(field(&f, "c"), None);
        assert_eq!(field(&f, "d"), Some("%zz"));
        assert_eq!(field(&f, "e"), Some("%4"));
        assert_eq!(url("alias/a b&c"), "alias%2Fa%20b%26c");
    }
}

//! Checking AWS Signature Version 4 on a received request: the signature is computed again
//! by the `aws-sigv4` crate (the SDKs' own signer) over the headers the caller says it
//! signed, with the secret of the access key it names, and compared in constant time.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use super::errors::ApiError;
use crate::crypto;
use crate::kms::access_keys::Credential;
use crate::kms::keyring::KeyRing;

/// How far a request's X-Amz-Date may be from the server's clock (AWS's limit).
pub const MAX_SKEW: Duration = Duration::from_secs(300);
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const SERVICE: &str = "kms";

/// The parts of an `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn incomplete(msg: &str) -> ApiError {
    ApiError::client("IncompleteSignatureException", msg)
}

fn invalid_signature(msg: impl Into<String>) -> ApiError {
    ApiError::client("InvalidSignatureException", msg)
}

pub fn unrecognized() -> ApiError {
    ApiError::client("UnrecognizedClientException", "The security token included in the request is invalid.")
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, ApiError> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| incomplete("Authorization header requires the AWS4-HMAC-SHA256 algorithm"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let missing = |what: &str| {
        incomplete(&format!("Authorization header requires '{what}' parameter. Authorization={value}"))
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 {
        return Err(incomplete(&format!(
            "Credential should have scope ACCESS_KEY/DATE/REGION/SERVICE/aws4_request; found '{credential}'"
        )));
    }
    Ok(Authorization {
        access_key_id: scope[0],
        date: scope[1],
        region: scope[2],
        service: scope[3],
        terminator: scope[4],
        signed_headers: signed.split(';').collect(),
        signature,
    })
}

/// Unix seconds of an ISO-8601 basic time `YYYYMMDDTHHMMSSZ`.
pub fn parse_amz_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes().all(|c| c.is_ascii_digit()).then(|| s.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYYMMDDTHHMMSSZ` of unix seconds.
pub fn format_amz_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Checks the request's signature; returns the access key it was made with.
pub fn verify(
    parts: &http::request::Parts,
    body: &[u8],
    ring: &KeyRing,
    region: &str,
    now_secs: i64,
) -> Result<Arc<Credential>, ApiError> {
    if parts.headers.contains_key("x-amz-security-token") {
        // No session tokens are issued, so none can be valid.
        return Err(unrecognized());
    }
    let header = match parts.headers.get(http::header::AUTHORIZATION) {
        Some(h) => h.to_str().map_err(|_| incomplete("the Authorization header is not text"))?,
        None => {
            return Err(ApiError::client(
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            ))
        }
    };
    let auth = parse_authorization(header)?;
    if auth.service != SERVICE || auth.terminator != "aws4_request" {
        return Err(invalid_signature(format!(
            "Credential should be scoped to correct service: '{SERVICE}'. "
        )));
    }
    if auth.region != region {
        return Err(invalid_signature(format!(
            "Credential should be scoped to a valid region, not '{}'. ",
            auth.region
        )));
    }
    let amz_date = parts.headers.get("x-amz-date").and_then(|v| v.to_str().ok()).ok_or_else(|| {
        incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
    })?;
    let signed_at = parse_amz_date(amz_date)
        .ok_or_else(|| incomplete(&format!("Date must be in ISO-8601 'basic format'. Got '{amz_date}'.")))?;
    if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
        return Err(invalid_signature(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
            auth.date,
            &amz_date[..8]
        )));
    }
    let skew = MAX_SKEW.as_secs() as i64;
    if signed_at < now_secs - skew {
        return Err(invalid_signature(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - 5 min.)",
            format_amz_date(now_secs - skew),
            format_amz_date(now_secs)
        )));
    }
    if signed_at > now_secs + skew {
        return Err(invalid_signature(format!(
            "Signature not yet current: {amz_date} is still later than {} ({} + 5 min.)",
            format_amz_date(now_secs + skew),
            format_amz_date(now_secs)
        )));
    }
    if !auth.signed_headers.contains(&"host") {
        return Err(invalid_signature("'Host' must be a 'SignedHeader' in the AWS Authorization."));
    }
    let credential = ring.credential(auth.access_key_id).map_err(ApiError::from)?.ok_or_else(unrecognized)?;
    let expected = expected_signature(parts, body, &auth, &credential, region, signed_at)?;
    if !crypto::ct_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        return Err(invalid_signature(
            "The request signature we calculated does not match the signature you provided. Check your AWS \
             Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    Ok(credential)
}

fn expected_signature(
    parts: &http::request::Parts,
    body: &[u8],
    auth: &Authorization<'_>,
    credential: &Credential,
    region: &str,
    signed_at: i64,
) -> Result<String, ApiError> {
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        for value in parts.headers.get_all(*name) {
            let value =
                value.to_str().map_err(|_| invalid_signature(format!("header {name} is not text")))?;
            headers.push((name, value));
        }
    }
    let identity: Identity =
        Credentials::new(auth.access_key_id, credential.secret.as_str(), None, None, "kmsfs-keystore").into();
    let mut settings = SigningSettings::default();
    // Sign exactly what the caller listed: the crate's defaults would drop User-Agent,
    // which some clients sign.
    settings.excluded_headers = Some(Vec::new());
    let time = UNIX_EPOCH + Duration::from_secs(signed_at.max(0) as u64);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| ApiError::internal(format!("signing parameters: {e}")))?
        .into();
    let uri = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request =
        SignableRequest::new(parts.method.as_str(), uri, headers.into_iter(), SignableBody::Bytes(body))
            .map_err(|e| invalid_signature(format!("the request cannot be signed: {e}")))?;
    let (_, signature) = sign(request, &params)
        .map_err(|e| invalid_signature(format!("the request cannot be signed: {e}")))?
        .into_parts();
    Ok(signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_round_trip() {
        for secs in [0i64, 951_782_400, 1_700_000_000, 4_102_444_799] {
            assert_eq!(parse_amz_date(&format_amz_date(secs)), Some(secs));
        }
        assert_eq!(format_amz_date(1_700_000_000), "20231114T221320Z");
        assert_eq!(parse_amz_date("20231114T221320"), None);
        assert_eq!(parse_amz_date("2023111XT221320Z"), None);
    }

    #[test]
    fn authorization_header_parts() {
        let a = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/kms/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature=abcd",
        )
        .unwrap();
        assert_eq!(a.access_key_id, "AKIDEXAMPLE");
        assert_eq!(a.region, "us-east-1");
        assert_eq!(a.signed_headers, ["content-type", "host", "x-amz-date"]);
        assert_eq!(a.signature, "abcd");
        assert_eq!(parse_authorization("Basic abc").unwrap_err().code, "IncompleteSignatureException");
    }
}

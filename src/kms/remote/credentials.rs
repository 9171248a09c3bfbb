//! Credentials, region and CA bundle from the standard AWS chain, as the AWS CLI reads them:
//! the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_CA_BUNDLE`), then the profile `AWS_PROFILE`
//! (default `default`) in `~/.aws/credentials` and `~/.aws/config` (or the files named by
//! `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE`). Instance roles and SSO are not
//! read: a host that uses them can export the environment variables.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Zeroizing<String>,
    pub session_token: Option<Zeroizing<String>>,
    /// Where they came from, for error messages ("environment", "profile default").
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} from {})", self.access_key_id, self.source)
    }
}

/// What the chain gives a client.
#[derive(Debug)]
pub struct AwsConfig {
    pub credentials: Credentials,
    pub region: Option<String>,
    pub ca_bundle: Option<PathBuf>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn home_file(var: &str, name: &str) -> Option<PathBuf> {
    env(var).map(PathBuf::from).or_else(|| env("HOME").map(|h| Path::new(&h).join(".aws").join(name)))
}

/// Reads the chain now.
pub fn load() -> Result<AwsConfig> {
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let config_file = home_file("AWS_CONFIG_FILE", "config");
    let creds_file = home_file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    // In ~/.aws/config a profile other than default is "[profile NAME]".
    let config_section = if profile == "default" { profile.clone() } else { format!("profile {profile}") };
    let config = config_file.as_deref().map(|p| read_section(p, &config_section)).transpose()?.flatten();
    let from_creds = creds_file.as_deref().map(|p| read_section(p, &profile)).transpose()?.flatten();

    let credentials = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Credentials {
            access_key_id: id,
            secret_access_key: Zeroizing::new(secret),
            session_token: env("AWS_SESSION_TOKEN").map(Zeroizing::new),
            source: "the environment".into(),
        },
        _ => {
            let section = from_creds
                .as_ref()
                .filter(|s| s.contains_key("aws_access_key_id"))
                .or(config.as_ref().filter(|s| s.contains_key("aws_access_key_id")));
            let Some(section) = section else {
                return Err(Error::InvalidArgument(format!(
                    "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or profile '{profile}' \
                     in {} (AWS_PROFILE picks another)",
                    creds_file.as_deref().map(|p| p.display().to_string()).unwrap_or("~/.aws/credentials".into())
                )));
            };
            let secret = section.get("aws_secret_access_key").cloned().ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "profile '{profile}' has aws_access_key_id but no aws_secret_access_key"
                ))
            })?;
            Credentials {
                access_key_id: section["aws_access_key_id"].clone(),
                secret_access_key: Zeroizing::new(secret),
                session_token: section.get("aws_session_token").cloned().map(Zeroizing::new),
                source: format!("profile {profile}"),
            }
        }
    };
    let region = env("AWS_REGION")
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .or_else(|| config.as_ref().and_then(|s| s.get("region").cloned()));
    let ca_bundle = env("AWS_CA_BUNDLE")
        .or_else(|| config.as_ref().and_then(|s| s.get("ca_bundle").cloned()))
        .map(PathBuf::from);
    Ok(AwsConfig { credentials, region, ca_bundle })
}

/// The `key = value` pairs of `[section]` in an INI file; `None` if the file or the
/// section is missing.
fn read_section(path: &Path, section: &str) -> Result<Option<HashMap<String, String>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
    };
    Ok(parse_section(&text, section))
}

fn parse_section(text: &str, section: &str) -> Option<HashMap<String, String>> {
    let mut found = None;
    let mut current: Option<&str> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim());
            if current == Some(section) {
                found.get_or_insert_with(HashMap::new);
            }
            continue;
        }
        if current == Some(section) {
            if let Some((k, v)) = line.split_once('=') {
                found.get_or_insert_with(HashMap::new).insert(k.trim().to_lowercase(), v.trim().to_string());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_sections_are_read() {
        let text = "[default]\naws_access_key_id = A\n\n[profile other]\nregion=eu-west-1\n# c\nca_bundle = /x.pem\n";
        assert_eq!(parse_section(text, "default").unwrap()["aws_access_key_id"], "A");
        let other = parse_section(text, "profile other").unwrap();
        assert_eq!((other["region"].as_str(), other["ca_bundle"].as_str()), ("eu-west-1", "/x.pem"));
        assert!(parse_section(text, "missing").is_none());
    }
}

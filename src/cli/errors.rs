//! How the command line words an error: the error's own sentence (the fact), and where there
//! is one, the command that helps. The library's errors carry no such advice, so that other
//! front ends (the mount's log, an API server) can word them their own way.

use crate::error::{AccessDenied, AlreadyExists, Denial, Error, KeyStateError, NotFound, StateProblem};
use crate::keystore::records::KeyState;
use crate::kms::keyid::is_key_id;

/// The message printed after `kmsfs: error: `.
pub fn describe(e: &Error) -> String {
    match hint(e) {
        Some(hint) => format!("{e}{hint}"),
        None => e.to_string(),
    }
}

/// What to do about `e`, as it follows the error's sentence.
fn hint(e: &Error) -> Option<String> {
    Some(match e {
        Error::KeystoreMissing(_) => {
            ": create one with `kmsfs keystore init` or point --keystore / KMSFS_KEYSTORE at it".into()
        }
        Error::InsecureKeystore { path, .. } => format!(": run `chmod 600 {}`", path.display()),
        Error::NotFound(NotFound::KeyRef(key_ref)) if is_key_id(key_ref) => " (see `kmsfs key list`)".into(),
        Error::NotFound(NotFound::KeyRef(_)) => {
            " (a key is named by its id or by an alias starting with 'alias/')".into()
        }
        Error::NotFound(NotFound::Alias { .. }) => " (see `kmsfs alias list`)".into(),
        Error::NotFound(NotFound::Volume { .. }) => "; create one with `kmsfs volume init`".into(),
        Error::AlreadyExists(AlreadyExists::Alias { .. }) => "; use `kmsfs alias update` to move it".into(),
        Error::KeyState(KeyStateError { key_id, state, problem: StateProblem::NotEnabled, .. }) => {
            match state {
                Some(KeyState::Disabled) => format!("; enable it with `kmsfs key enable {key_id}`"),
                Some(KeyState::PendingDeletion | KeyState::PendingReplicaDeletion) => {
                    format!("; `kmsfs key cancel-deletion {key_id}` keeps it")
                }
                Some(KeyState::PendingImport) => {
                    format!("; import the same material with `kmsfs key import {key_id} --material FILE`")
                }
                _ => return None,
            }
        }
        Error::AccessDenied(AccessDenied { reason: Denial::NotGrantee { .. }, .. }) => {
            "; an administrator revokes it with `kmsfs grant revoke`".into()
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_follow_the_fact() {
        let disabled = Error::KeyState(KeyStateError {
            key_id: "k1".into(),
            state: Some(KeyState::Disabled),
            deletion_date: None,
            problem: StateProblem::NotEnabled,
        });
        assert_eq!(disabled.to_string(), "key k1 is disabled");
        assert_eq!(describe(&disabled), "key k1 is disabled; enable it with `kmsfs key enable k1`");
        let alias = Error::NotFound(NotFound::Alias { alias: "alias/x".into() });
        assert_eq!(describe(&alias), "unknown alias 'alias/x' (see `kmsfs alias list`)");
        let plain = Error::InvalidArgument("bad".into());
        assert_eq!(describe(&plain), "bad");
    }
}

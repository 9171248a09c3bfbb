//! Whether the key policy and grants would allow an action, without doing it or leaving an
//! audit event: for a user interface that offers only the actions a caller may take. The
//! action itself is still decided (and audited) when it is asked for; this only answers
//! "would it be allowed" the same way, from the same policy evaluation.

use super::access::{effective_policy, grant_rules};
use super::policy::{Decision, Request};
use super::{EncryptionContext, Kms, Principal};
use crate::error::Result;

impl Kms {
    /// Whether `caller` may do `action` (`kms:DisableKey`) on key `key_id` now.
    pub fn permits(&self, caller: &Principal, key_id: &str, action: &str) -> Result<bool> {
        let conn = self.ks.conn();
        let policy = effective_policy(conn, key_id, self.owner_uid)?;
        let grants = grant_rules(conn, key_id)?;
        let ctx = EncryptionContext::new();
        let request = Request { caller, action, context: &ctx, path: None, now: self.now_secs() };
        Ok(matches!(policy.decide(&grants, &request), Decision::Allow(_)))
    }

    /// The uid owning the keystore file: its administrator.
    pub fn owner_uid(&self) -> u32 {
        self.owner_uid
    }
}

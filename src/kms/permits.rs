//! Whether the key policy and grants would allow an action, without doing it or leaving an
//! audit event: for a user interface that offers only the actions a caller may take. The
//! action itself is still decided (and audited) when it is asked for; this asks the same
//! function that decision uses ([`access::authorize_admin`]), so the two cannot differ.

use super::access;
use super::{Kms, Principal};
use crate::error::{Error, Result};

impl Kms {
    /// Whether `caller` may do `action` (`kms:DisableKey`) on key `key_id` now.
    pub fn permits(&self, caller: &Principal, key_id: &str, action: &str) -> Result<bool> {
        match access::authorize_admin(self.ks.conn(), self.owner_uid, self.now_secs(), caller, key_id, action)
        {
            Ok(_) => Ok(true),
            Err(Error::AccessDenied(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The uid owning the keystore file: its administrator.
    pub fn owner_uid(&self) -> u32 {
        self.owner_uid
    }
}

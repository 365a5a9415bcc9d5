//! What a submitted job spec must satisfy beyond its own fields: the
//! outbound rules of a `callback_url`.

use super::Engine;
use crate::domain::FieldError;

impl Engine {
    /// Checks a submitted `callback_url` against the outbound rules (where
    /// that can be done before a lookup), and that webhooks are on at all.
    pub(super) fn check_callback(&self, url: Option<&str>, pointer: String) -> Option<FieldError> {
        let url = url?;
        let problem = match &self.inner.webhooks {
            None => "webhooks are off on this service: it needs SPOOL_WEBHOOK_SECRET to sign them"
                .to_owned(),
            Some(webhooks) => webhooks.check_url(url).err()?,
        };
        Some(FieldError::new(pointer, problem))
    }
}

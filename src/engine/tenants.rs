//! Tenants' quotas as the engine sees them: settings cached from the store
//! (so that an admission knows, without a query, whether its tenant has a
//! `max_pending` to check), changed at runtime, re-read when another
//! instance says it changed them and every second in shared mode.

use std::collections::HashMap;
use std::time::Duration;

use super::{Engine, EngineError};
use crate::domain::{
    FieldError, TenantConfig, TenantInfo, TenantSettings, Timestamp, valid_tenant,
};
use crate::store::StoreError;

/// How often a shared-mode instance re-reads the tenants without being
/// told: the bound on how long a change made elsewhere takes to apply here
/// when its bus message is lost.
const REFRESH_SHARED: Duration = Duration::from_secs(1);

/// `Retry-After` of a `tenant_quota` refusal: room comes back as the
/// tenant's jobs are claimed, at a pace this instance does not measure per
/// tenant. Long enough not to hammer, short enough to notice recovery.
pub const TENANT_QUOTA_RETRY_AFTER_S: u64 = 2;

pub(super) type TenantCache = HashMap<String, TenantSettings>;

impl Engine {
    fn read_tenants(&self) -> std::sync::RwLockReadGuard<'_, TenantCache> {
        // Replaced whole or per entry: a poisoned lock still holds a good map.
        self.inner.tenants.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_tenants(&self) -> std::sync::RwLockWriteGuard<'_, TenantCache> {
        self.inner
            .tenants
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant's quotas as this instance knows them (none when unset).
    pub fn tenant_settings(&self, tenant: &str) -> TenantSettings {
        self.read_tenants().get(tenant).cloned().unwrap_or_default()
    }

    /// Whether admissions of `tenant` check a `max_pending`.
    pub(super) fn limits_pending(&self, tenant: &str) -> bool {
        self.read_tenants()
            .get(tenant)
            .is_some_and(|settings| settings.max_pending.is_some())
    }

    /// A tenant's settings and its waiting jobs now. A tenant never set has
    /// no limits (`updated_at: null`).
    pub async fn get_tenant(&self, name: &str) -> Result<TenantInfo, EngineError> {
        check_name(name)?;
        let stored = self
            .inner
            .store
            .tenants()
            .await?
            .into_iter()
            .find(|tenant| tenant.name == name);
        let pending = self.inner.store.tenant_pending(name).await?;
        Ok(TenantInfo {
            name: name.to_owned(),
            settings: stored
                .as_ref()
                .map(|tenant| tenant.settings.clone())
                .unwrap_or_default(),
            pending,
            updated_at: stored.map(|tenant| tenant.updated_at),
        })
    }

    /// Sets a tenant's quotas: here at once, on the other instances within
    /// about a second. `true` when the tenant had no settings before.
    pub async fn put_tenant(
        &self,
        name: &str,
        settings: TenantSettings,
    ) -> Result<(TenantInfo, bool), EngineError> {
        check_name(name)?;
        settings.validate().map_err(EngineError::Validation)?;
        let created = self.store_tenant(name, settings).await?;
        self.tell_tenants_changed();
        tracing::info!(tenant = %name, "tenant quotas changed");
        Ok((self.get_tenant(name).await?, created))
    }

    /// The tenants of the config file, stored at start-up (as declared
    /// queues are: a change made through the API lasts until the next start).
    pub async fn declare_tenants(
        &self,
        declared: Vec<(String, TenantSettings)>,
    ) -> Result<(), StoreError> {
        for (name, settings) in declared {
            self.store_tenant(&name, settings).await?;
        }
        Ok(())
    }

    async fn store_tenant(&self, name: &str, settings: TenantSettings) -> Result<bool, StoreError> {
        let created = self
            .inner
            .store
            .upsert_tenant(&TenantConfig {
                name: name.to_owned(),
                settings: settings.clone(),
                updated_at: Timestamp::now(),
            })
            .await?;
        self.write_tenants().insert(name.to_owned(), settings);
        Ok(created)
    }

    /// Takes the tenants' settings as stored.
    pub(super) async fn refresh_tenants(&self) -> Result<(), StoreError> {
        let stored = self.inner.store.tenants().await?;
        let cache: TenantCache = stored
            .into_iter()
            .filter(|tenant| !tenant.settings.is_unlimited())
            .map(|tenant| (tenant.name, tenant.settings))
            .collect();
        *self.write_tenants() = cache;
        Ok(())
    }

    /// Keeps the cache current in shared mode: on a `tenants` message, after
    /// lost messages, and every second.
    pub(super) async fn tenants_loop(self) {
        let stopping = self.inner.stopping.clone();
        loop {
            tokio::select! {
                _ = self.inner.tenants_heard.notified() => {}
                _ = tokio::time::sleep(REFRESH_SHARED) => {}
                _ = stopping.cancelled() => return,
            }
            if let Err(error) = self.refresh_tenants().await {
                // The settings known so far stay in force until the store answers.
                tracing::warn!(%error, "cannot re-read the tenants' quotas");
            }
        }
    }
}

fn check_name(name: &str) -> Result<(), EngineError> {
    if valid_tenant(name) {
        Ok(())
    } else {
        Err(EngineError::Validation(vec![FieldError::parameter(
            "tenant",
            "tenant names are 1 to 64 of A-Z a-z 0-9 _ - .",
        )]))
    }
}

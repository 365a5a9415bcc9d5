//! Long-polls: requests waiting for a job or batch to finish, woken by the
//! engine when it stores that end, not by polling the store.
//!
//! A waiter registers *before* it reads the store, so an end stored between
//! its read and its wait still wakes it. Waking costs a map lookup, and
//! nothing at all while nobody waits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Default)]
pub struct Waiters {
    /// Per id: its `Notify` and how many requests wait on it.
    map: Mutex<HashMap<Uuid, (Arc<Notify>, usize)>>,
    /// Entries in `map`, read without the lock on every job end.
    entries: AtomicUsize,
    /// Requests waiting, over every id.
    requests: AtomicUsize,
}

/// One request's interest in one id; dropping it unregisters.
pub struct Waiter<'a> {
    waiters: &'a Waiters,
    id: Uuid,
    notify: Arc<Notify>,
}

impl Waiters {
    pub fn register(&self, id: Uuid) -> Waiter<'_> {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = map.entry(id).or_insert_with(|| {
            self.entries.fetch_add(1, Ordering::AcqRel);
            (Arc::new(Notify::new()), 0)
        });
        entry.1 += 1;
        self.requests.fetch_add(1, Ordering::AcqRel);
        crate::telemetry::metrics::long_poll_waiting(true);
        Waiter {
            waiters: self,
            id,
            notify: entry.0.clone(),
        }
    }

    /// Requests waiting now: each registered before it read the store, so
    /// any end stored from now on wakes it.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    /// Ids waited on now.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes every request waiting on `id`.
    pub fn wake(&self, id: Uuid) {
        if self.entries.load(Ordering::Acquire) == 0 {
            return;
        }
        let map = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((notify, _)) = map.get(&id) {
            notify.notify_waiters();
        }
    }
}

impl Waiter<'_> {
    /// A future that completes at the next `wake` of this id. Create (and
    /// enable) it before reading the store, then await it.
    pub fn notified(&self) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
        let mut notified = Box::pin(self.notify.notified());
        notified.as_mut().enable();
        notified
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.waiters.requests.fetch_sub(1, Ordering::AcqRel);
        crate::telemetry::metrics::long_poll_waiting(false);
        let mut map = self
            .waiters
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = map.get_mut(&self.id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.id);
                self.waiters.entries.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_wake_between_registering_and_waiting_is_not_lost() {
        let waiters = Waiters::default();
        let id = Uuid::now_v7();
        let waiter = waiters.register(id);
        let notified = waiter.notified();
        waiters.wake(id);
        tokio::time::timeout(Duration::from_secs(1), notified)
            .await
            .expect("the wake was lost");
    }

    #[tokio::test]
    async fn dropping_the_last_waiter_forgets_the_id() {
        let waiters = Waiters::default();
        let id = Uuid::now_v7();
        let first = waiters.register(id);
        let second = waiters.register(id);
        drop(first);
        assert_eq!(waiters.entries.load(Ordering::Acquire), 1);
        drop(second);
        assert_eq!(waiters.entries.load(Ordering::Acquire), 0);
        assert!(waiters.map.lock().unwrap().is_empty());
    }
}

//! API keys in the store: kept as hashes, listed until revoked, revoked
//! once, last use only ever moving forward.

use std::sync::Arc;

use spool::domain::{ApiKey, KeyHash, KeyId, KeySource, Role, StoredKey, Timestamp};
use spool::store::JobStore;

fn key(name: &str, secret: &str, expires_at: Option<Timestamp>) -> StoredKey {
    StoredKey {
        hash: KeyHash::of_secret(secret),
        key: ApiKey {
            id: KeyId::new(),
            name: name.to_owned(),
            tenant: "acme".to_owned(),
            role: Role::Write,
            source: KeySource::Api,
            created_at: Timestamp::from_millis(1_000),
            last_used_at: None,
            expires_at,
        },
    }
}

pub async fn stored_keys_are_hashed_listed_until_revoked_and_their_last_use_only_moves_forward(
    store: Arc<dyn JobStore>,
) {
    let one = key("one", "first-secret-of-the-test", None);
    let two = key(
        "two",
        "second-secret-of-the-test",
        Some(Timestamp::from_millis(9_000)),
    );
    store.insert_key(&one).await.expect("inserted");
    store.insert_key(&two).await.expect("inserted");
    let mut listed = store.stored_keys().await.expect("listed");
    listed.sort_by_key(|k| k.key.name.clone());
    assert_eq!(listed.len(), 2);
    assert!(listed[0].hash == KeyHash::of_secret("first-secret-of-the-test"));
    assert_eq!(listed[0].key.id, one.key.id);
    assert_eq!(listed[0].key.tenant, "acme");
    assert_eq!(listed[0].key.role, Role::Write);
    assert_eq!(
        listed[1].key.expires_at,
        Some(Timestamp::from_millis(9_000))
    );

    store
        .record_key_use(&[
            (one.key.id, Timestamp::from_millis(5_000)),
            (one.key.id, Timestamp::from_millis(7_000)),
        ])
        .await
        .expect("recorded");
    // An older report (another instance's, late) never moves it back.
    store
        .record_key_use(&[(one.key.id, Timestamp::from_millis(6_000))])
        .await
        .expect("recorded");
    let listed = store.stored_keys().await.expect("listed");
    let used = listed
        .iter()
        .find(|k| k.key.id == one.key.id)
        .expect("kept");
    assert_eq!(used.key.last_used_at, Some(Timestamp::from_millis(7_000)));

    let at = Timestamp::from_millis(8_000);
    assert!(store.revoke_key(one.key.id, at).await.expect("revoked"));
    assert!(
        !store.revoke_key(one.key.id, at).await.expect("answered"),
        "revoked twice"
    );
    assert!(!store.revoke_key(KeyId::new(), at).await.expect("answered"));
    let listed = store.stored_keys().await.expect("listed");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key.id, two.key.id);
    // The same secret cannot be stored twice.
    assert!(
        store
            .insert_key(&key("again", "second-secret-of-the-test", None))
            .await
            .is_err()
    );
}

//! Access control across processes: start-up refused when the service would
//! be open to the network, and keys revoked on one instance refused by the
//! others (shared mode, three binaries).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::access::ADMIN;
use crate::helpers::{PgSchema, SpoolProcess, TEST_WEBHOOK_SECRET};

#[test]
fn start_up_is_refused_on_a_non_loopback_address_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_spool"));
        command
            .env("SPOOL_BIND", "0.0.0.0:0")
            .env(
                "SPOOL_DATABASE_URL",
                format!("sqlite://{}", dir.path().join("spool.db").display()),
            )
            .env("SPOOL_WEBHOOK_SECRET", TEST_WEBHOOK_SECRET)
            .env_remove("SPOOL_API_KEYS")
            .env_remove("SPOOL_AUTH");
        for (name, value) in extra {
            command.env(name, value);
        }
        command
    };
    let output = run(&[]).output().expect("the binary runs");
    assert!(!output.status.success(), "it started open to the network");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SPOOL_API_KEYS"), "{stderr}");
    assert!(stderr.contains("SPOOL_AUTH=none"), "{stderr}");
    // With a key, or with SPOOL_AUTH=none, it starts (and is stopped here).
    for extra in [
        [("SPOOL_API_KEYS", format!("ops:admin:{ADMIN}"))],
        [("SPOOL_AUTH", "none".to_owned())],
    ] {
        let extra: Vec<(&str, &str)> = extra.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let mut child = run(&extra).spawn().expect("the binary runs");
        std::thread::sleep(Duration::from_secs(2));
        let exited = child.try_wait().expect("a status");
        let _ = child.kill();
        let _ = child.wait();
        assert!(exited.is_none(), "{extra:?}: it did not start: {exited:?}");
    }
}

async fn status(client: &reqwest::Client, process: &SpoolProcess, key: &str) -> u16 {
    client
        .get(process.url("/v1/jobs"))
        .bearer_auth(key)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_key_revoked_through_one_instance_is_refused_by_the_others_within_two_seconds() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let keys = format!("ops:admin:{ADMIN}");
    let env = [("SPOOL_API_KEYS", keys.as_str())];
    let a = SpoolProcess::start_with_url(&schema.url, &env);
    let b = SpoolProcess::start_with_url(&schema.url, &env);
    let c = SpoolProcess::start_with_url(&schema.url, &env);
    let client = reqwest::Client::new();
    let made: Value = client
        .post(a.url("/v1/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "ci", "tenant": "acme", "role": "write"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = made["secret"].as_str().expect("a secret").to_owned();
    let id = made["id"].as_str().expect("an id").to_owned();
    // A new key reaches the other instances as fast as a revoked one leaves.
    for process in [&b, &c] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while status(&client, process, &secret).await != 200 {
            assert!(
                Instant::now() < deadline,
                "a new key never worked on another instance"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let revoked = client
        .delete(a.url(&format!("/v1/keys/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let revoked_at = Instant::now();
    assert_eq!(
        status(&client, &a, &secret).await,
        401,
        "the revoking instance let it in"
    );
    for process in [&b, &c] {
        loop {
            let answer = status(&client, process, &secret).await;
            if answer == 401 {
                break;
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(2),
                "a revoked key still answered {answer} after {:?}",
                revoked_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn no_key_secret_reaches_the_log_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("spool.log");
    let database_url = format!("sqlite://{}", dir.path().join("spool.db").display());
    let file = std::fs::File::create(&log).unwrap();
    let declared = format!("ops:admin:{ADMIN}");
    let spool = SpoolProcess::start_configured(
        &database_url,
        &[("SPOOL_API_KEYS", declared.as_str()), ("RUST_LOG", "trace")],
        |command| {
            command
                .stdout(std::process::Stdio::from(file.try_clone().unwrap()))
                .stderr(std::process::Stdio::from(file));
        },
    );
    let client = reqwest::Client::new();
    let made: Value = client
        .post(spool.url("/v1/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "ci", "tenant": "acme", "role": "write"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = made["secret"].as_str().expect("a secret").to_owned();
    let id = made["id"].as_str().expect("an id").to_owned();
    let guess = "spool_acme_a-guess-that-is-not-a-key-0000";
    for key in [secret.as_str(), guess, ADMIN] {
        client
            .post(spool.url("/v1/jobs"))
            .bearer_auth(key)
            .json(&json!({"kind": "noop"}))
            .send()
            .await
            .unwrap();
    }
    let revoked = client
        .delete(spool.url(&format!("/v1/keys/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    spool.sigterm();
    let mut spool = spool;
    let _ = spool.child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&id),
        "the log does not name the key it made: too quiet to check"
    );
    for secret in [secret.as_str(), guess, ADMIN] {
        assert!(!text.contains(secret), "the log holds a secret");
    }
}

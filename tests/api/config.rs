//! Start-up configuration: a bad value stops start-up with a message naming it.

use std::process::Command;

use crate::helpers::{SpoolProcess, db_path};

/// Starts the binary; `(false, stderr)` when it exits within 3 s, `(true, "")`
/// when it is still serving then.
fn start_with(env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_spool"));
    command.env("SPOOL_BIND", "127.0.0.1:0").env(
        "SPOOL_DATABASE_URL",
        format!("sqlite://{}", dir.path().join("c.db").display()),
    );
    for (name, value) in env {
        command.env(name, value);
    }
    // A valid configuration would serve forever: give it a moment, then stop it.
    let mut child = command
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            let output = child.wait_with_output().unwrap();
            return (
                output.status.success(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    (true, String::new())
}

#[test]
fn bad_settings_stop_start_up_naming_the_setting() {
    let (ok, stderr) = start_with(&[("SPOOL_SHUTDOWN_GRACE", "soon")]);
    assert!(!ok);
    assert!(
        stderr.contains("shutdown-grace") || stderr.contains("SPOOL_SHUTDOWN_GRACE"),
        "{stderr}"
    );

    let (ok, stderr) = start_with(&[("SPOOL_DATABASE_URL", "mysql://nope")]);
    assert!(!ok);
    assert!(stderr.contains("SPOOL_DATABASE_URL"), "{stderr}");

    let (ok, stderr) = start_with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")]);
    assert!(!ok);
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spool.toml");
    std::fs::write(&file, "[queues.mail]\nconcurrency = 0\n").unwrap();
    let (ok, stderr) = start_with(&[("SPOOL_CONFIG", file.to_str().unwrap())]);
    assert!(!ok);
    assert!(
        stderr.contains("SPOOL_CONFIG")
            && stderr.contains("mail")
            && stderr.contains("concurrency"),
        "{stderr}"
    );

    std::fs::write(&file, "[queues.mail]\nconcurency = 3\n").unwrap();
    let (ok, stderr) = start_with(&[("SPOOL_CONFIG", file.to_str().unwrap())]);
    assert!(!ok);
    assert!(stderr.contains("concurency"), "{stderr}");
}

#[tokio::test]
async fn queues_declared_in_the_config_file_exist_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spool.toml");
    std::fs::write(
        &file,
        "[queues.mail]\nconcurrency = 4\ncapacity = 100\ndefaults = { max_attempts = 5 }\n",
    )
    .unwrap();
    let spool = SpoolProcess::start(&db_path(&dir), &[("SPOOL_CONFIG", file.to_str().unwrap())]);
    let queue: serde_json::Value = reqwest::get(spool.url("/v1/queues/mail"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(queue["concurrency"], 4);
    assert_eq!(queue["capacity"], 100);
    assert_eq!(queue["defaults"]["max_attempts"], 5);
}

/// The binary with `args`, to its end: (success, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_spool"));
    command.args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn commands_offer_only_the_flags_they_use_and_the_version_names_its_commit() {
    let (ok, bench_help, _) = run(&["bench", "--help"], &[]);
    assert!(ok);
    assert!(bench_help.contains("--rounds"), "{bench_help}");
    assert!(!bench_help.contains("--database-url"), "{bench_help}");
    let (ok, openapi_help, _) = run(&["openapi", "--help"], &[]);
    assert!(ok);
    assert!(!openapi_help.contains("--bind"), "{openapi_help}");
    let (ok, serve_help, _) = run(&["serve", "--help"], &[]);
    assert!(ok);
    assert!(
        serve_help.contains("--bind") && serve_help.contains("postgres://"),
        "{serve_help}"
    );

    // The service's settings in the environment (as in the image) do not
    // get in the way of the other commands.
    let (ok, document, stderr) = run(
        &["openapi"],
        &[("SPOOL_BIND", "0.0.0.0:8080"), ("SPOOL_AUTH", "none")],
    );
    assert!(ok, "{stderr}");
    assert!(document.starts_with("openapi:"), "{document}");
    // A service flag given to another command is refused, not ignored.
    let (ok, _, stderr) = run(&["--bind", "127.0.0.1:0", "openapi"], &[]);
    assert!(!ok);
    assert!(stderr.contains("--bind"), "{stderr}");

    let (ok, version, _) = run(&["--version"], &[]);
    assert!(ok);
    assert!(
        version.starts_with(&format!("spool {} (", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
}

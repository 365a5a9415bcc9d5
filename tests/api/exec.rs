//! The `exec` kind: configured commands only, no shell, a clean environment,
//! capped output, and the whole process group killed on cancel or timeout.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spool::app::App;
use tempfile::TempDir;

use crate::helpers::{SOON, TestApp, spawn_app, spawn_app_with, test_config};

/// Starts the app with `toml` as its config file, in a scratch directory the
/// test can use too.
async fn spawn_with_commands(toml: &str) -> (TestApp, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spool.toml");
    std::fs::write(&file, toml).unwrap();
    let app = spawn_app_with(|config| config.config_file = Some(file)).await;
    (app, dir)
}

fn exec(command: &str, args: Value) -> Value {
    json!({"kind": "exec", "payload": {"command": command, "args": args}, "max_attempts": 1})
}

async fn kind_names(app: &TestApp) -> Vec<String> {
    let kinds: Value = app.get("/v1/kinds").await.json().await.unwrap();
    kinds["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A process that no longer runs: gone, or a zombie nobody reaped yet.
fn is_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Waits until `pidfile` lists `count` pids, and returns them.
async fn recorded_pids(pidfile: &Path, count: usize) -> Vec<String> {
    let deadline = Instant::now() + SOON;
    loop {
        let pids: Vec<String> = std::fs::read_to_string(pidfile)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if pids.len() >= count {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "the command never wrote its pids"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_all_gone(pids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids.iter().all(|pid| is_gone(pid)) {
        let alive: Vec<&String> = pids.iter().filter(|pid| !is_gone(pid)).collect();
        assert!(Instant::now() < deadline, "still running: {alive:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs two background sleeps and waits; `$1` is the file their pids (and
/// the shell's) go to.
const FAMILY: &str = r#"
[exec.family]
argv = ["sh", "-c", 'echo $$ > "$1"; sleep 300 & echo $! >> "$1"; sleep 300 & echo $! >> "$1"; wait', "sh", "{pidfile}"]
"#;

#[tokio::test]
async fn without_configured_commands_there_is_no_exec_kind() {
    let app = spawn_app().await;
    assert!(!kind_names(&app).await.contains(&"exec".to_owned()));
    let refused = app.post("/v1/jobs", &exec("hello", json!({}))).await;
    assert_eq!(refused.status(), 422);
}

#[tokio::test]
async fn configured_commands_make_the_exec_kind_listed_with_their_schema() {
    let (app, _dir) = spawn_with_commands("[exec.hello]\nargv = [\"true\"]\n").await;
    assert!(kind_names(&app).await.contains(&"exec".to_owned()));
    let kinds: Value = app.get("/v1/kinds").await.json().await.unwrap();
    let exec_kind = kinds["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "exec")
        .unwrap();
    assert_eq!(
        exec_kind["schema"]["oneOf"][0]["properties"]["command"]["const"],
        "hello"
    );
}

#[tokio::test]
async fn output_and_exit_code_are_captured() {
    let (app, _dir) = spawn_with_commands(
        r#"
[exec.greet]
argv = ["printf", "hello %s|%s|%s", "{name}", "n={n}", "{flag}{{x}}"]
description = "Greets"
"#,
    )
    .await;
    let job = app
        .submit(exec(
            "greet",
            json!({"name": "world", "n": 1.5, "flag": true}),
        ))
        .await;
    let done = app
        .wait_for_status(job["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
    let result = &done["result"];
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["stdout"], "hello world|n=1.5|true{x}");
    assert_eq!(result["stderr"], "");
    assert_eq!(result["stdout_truncated"], false);
    assert_eq!(result["stderr_truncated"], false);
    assert!(result["duration_ms"].is_u64());
}

#[tokio::test]
async fn arguments_are_never_interpreted_by_a_shell() {
    let (app, dir) =
        spawn_with_commands("[exec.say]\nargv = [\"printf\", \"%s\", \"{text}\"]\n").await;
    let marker = dir.path().join("pwned");
    let text = format!("\"; touch {}; $(id) `id` && echo *", marker.display());
    let job = app.submit(exec("say", json!({"text": text}))).await;
    let done = app
        .wait_for_status(job["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
    assert_eq!(done["result"]["stdout"], text.as_str());
    assert!(!marker.exists());
}

#[tokio::test]
async fn the_command_gets_a_clean_environment_plus_its_configured_variables() {
    let (app, _dir) =
        spawn_with_commands("[exec.env]\nargv = [\"env\"]\nenv = { GREETING = \"hi there\" }\n")
            .await;
    let allowed = [
        "PATH",
        "LANG",
        "HOME",
        "GREETING",
        "TRACEPARENT",
        "TRACESTATE",
    ];
    // Spool runs in this process: everything here besides the allowed names
    // (cargo's variables at least, secrets in production) must stay hidden.
    let hidden: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| !allowed.contains(&name.as_str()))
        .collect();
    assert!(!hidden.is_empty());

    let job = app.submit(exec("env", json!({}))).await;
    let done = app
        .wait_for_status(job["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
    let env = done["result"]["stdout"].as_str().unwrap();
    let seen: Vec<&str> = env
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .collect();
    assert!(seen.iter().all(|name| allowed.contains(name)), "{env}");
    assert!(env.lines().any(|l| l == "GREETING=hi there"), "{env}");
    if std::env::var_os("PATH").is_some() {
        assert!(seen.contains(&"PATH"), "{env}");
    }
}

#[tokio::test]
async fn unknown_commands_and_missing_or_extra_arguments_are_refused() {
    let (app, _dir) = spawn_with_commands(
        "[exec.say]\nargv = [\"printf\", \"%s\", \"{text}\"]\n[exec.ok]\nargv = [\"true\"]\n",
    )
    .await;
    for (payload, pointer) in [
        (json!({"command": "rm"}), "/payload/command"),
        (json!({"command": "say"}), "/payload/args"),
        (json!({"command": "say", "args": {}}), "/payload/args/text"),
        (
            json!({"command": "say", "args": {"text": "a", "more": "b"}}),
            "/payload/args/more",
        ),
        (
            json!({"command": "say", "args": {"text": ["a"]}}),
            "/payload/args/text",
        ),
        (
            json!({"command": "ok", "args": {"text": "a"}}),
            "/payload/args/text",
        ),
        (json!({"command": "ok", "shell": true}), "/payload/shell"),
    ] {
        let response = app
            .post("/v1/jobs", &json!({"kind": "exec", "payload": payload}))
            .await;
        assert_eq!(response.status(), 422, "{payload}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "validation_failed", "{payload}");
        let pointers: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["pointer"].as_str().unwrap())
            .collect();
        assert!(pointers.contains(&pointer), "{payload}: {problem}");
        assert!(
            pointers.iter().all(|p| p.starts_with("/payload")),
            "{problem}"
        );
    }
    app.submit(exec("ok", json!({}))).await;
    app.submit(json!({"kind": "exec", "payload": {"command": "ok"}}))
        .await;
}

#[tokio::test]
async fn output_beyond_the_cap_is_cut_and_a_chatty_command_still_finishes() {
    let (app, _dir) = spawn_with_commands(
        r#"
[exec.chatty]
argv = ["sh", "-c", 'yes abcdefgh | head -c 5000000; yes err | head -c 300000 >&2; echo done >&2']
max_output_bytes = 100
"#,
    )
    .await;
    let job = app.submit(exec("chatty", json!({}))).await;
    let done = app
        .wait_for_status(job["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
    let result = &done["result"];
    assert_eq!(result["stdout"].as_str().unwrap().len(), 100);
    assert!(result["stdout"].as_str().unwrap().starts_with("abcdefgh\n"));
    assert_eq!(result["stdout_truncated"], true);
    assert_eq!(result["stderr"].as_str().unwrap().len(), 100);
    assert_eq!(result["stderr_truncated"], true);
}

#[tokio::test]
async fn a_non_zero_exit_fails_the_job_and_configured_codes_are_retried() {
    let (app, _dir) = spawn_with_commands(
        r#"
[exec.fail]
argv = ["sh", "-c", 'echo "it broke: $1" >&2; exit "$1"', "sh", "{code}"]
retryable_exit_codes = [75]
"#,
    )
    .await;
    let job = app.submit(exec("fail", json!({"code": 4}))).await;
    let done = app
        .wait_for_status(job["id"].as_str().unwrap(), "failed", SOON)
        .await;
    assert_eq!(done["error"]["code"], "exit_status");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("status 4") && message.contains("it broke: 4"),
        "{message}"
    );

    let mut spec = exec("fail", json!({"code": 75}));
    spec["max_attempts"] = json!(2);
    spec["backoff"] = json!({"base_ms": 1, "max_ms": 1});
    let job = app.submit(spec).await;
    let done = app
        .wait_for_status(job["id"].as_str().unwrap(), "failed", SOON)
        .await;
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["errors"].as_array().unwrap().len(), 2);
    assert_eq!(done["error"]["code"], "exit_status");
}

#[tokio::test]
async fn a_missing_program_fails_with_spawn_failed() {
    let (app, _dir) =
        spawn_with_commands("[exec.ghost]\nargv = [\"/nonexistent/spool-test-program\"]\n").await;
    let job = app.submit(exec("ghost", json!({}))).await;
    let done = app
        .wait_for_status(job["id"].as_str().unwrap(), "failed", SOON)
        .await;
    assert_eq!(done["error"]["code"], "spawn_failed");
}

#[tokio::test]
async fn the_command_timeout_kills_the_whole_process_group() {
    let (app, dir) = spawn_with_commands(&format!("{FAMILY}timeout = \"300ms\"\n")).await;
    let pidfile = dir.path().join("pids");
    let job = app
        .submit(exec(
            "family",
            json!({"pidfile": pidfile.to_str().unwrap()}),
        ))
        .await;
    let started = Instant::now();
    let done = app
        .wait_for_status(job["id"].as_str().unwrap(), "failed", SOON)
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(done["error"]["code"], "timeout");
    assert_all_gone(&recorded_pids(&pidfile, 3).await).await;
}

#[tokio::test]
async fn cancelling_a_running_exec_job_kills_the_whole_process_group() {
    let (app, dir) = spawn_with_commands(FAMILY).await;
    let pidfile = dir.path().join("pids");
    let job = app
        .submit(exec(
            "family",
            json!({"pidfile": pidfile.to_str().unwrap()}),
        ))
        .await;
    let id = job["id"].as_str().unwrap();
    app.wait_for_status(id, "running", SOON).await;
    let pids = recorded_pids(&pidfile, 3).await;
    assert!(pids.iter().all(|pid| !is_gone(pid)));

    let response = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert!(response.status().is_success());
    assert_all_gone(&pids).await;
    let done = app.wait_for_status(id, "cancelled", SOON).await;
    assert_eq!(done["error"]["code"], "cancelled");
}

#[tokio::test]
async fn a_job_timeout_kills_the_whole_process_group() {
    let (app, dir) = spawn_with_commands(FAMILY).await;
    let pidfile = dir.path().join("pids");
    let mut spec = exec("family", json!({"pidfile": pidfile.to_str().unwrap()}));
    spec["timeout_ms"] = json!(500);
    let job = app.submit(spec).await;
    let id = job["id"].as_str().unwrap();
    let pids = recorded_pids(&pidfile, 3).await;
    let done = app.wait_for_status(id, "failed", SOON).await;
    assert_eq!(done["error"]["code"], "timeout");
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn background_children_do_not_outlive_a_command_that_exited() {
    let (app, dir) = spawn_with_commands(
        r#"
[exec.leaky]
argv = ["sh", "-c", 'sleep 300 & echo $! > "$1"', "sh", "{pidfile}"]
"#,
    )
    .await;
    let pidfile = dir.path().join("pids");
    let job = app
        .submit(exec("leaky", json!({"pidfile": pidfile.to_str().unwrap()})))
        .await;
    app.wait_for_status(job["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
    assert_all_gone(&recorded_pids(&pidfile, 1).await).await;
}

#[tokio::test]
async fn a_bad_exec_table_stops_start_up_naming_it() {
    for (toml, expected) in [
        ("[exec.bad]\nargv = []\n", "exec.bad"),
        ("[exec.prog]\nargv = [\"{program}\"]\n", "exec.prog"),
        ("[exec.brace]\nargv = [\"echo\", \"{oops\"]\n", "exec.brace"),
        (
            "[exec.slow]\nargv = [\"true\"]\ntimeout = \"soon\"\n",
            "exec.slow",
        ),
        ("[exec.\"no/slash\"]\nargv = [\"true\"]\n", "exec.no/slash"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spool.toml");
        std::fs::write(&file, toml).unwrap();
        let mut config = test_config(dir.path());
        config.config_file = Some(file);
        let error = App::builder(config).build().await.err().expect("refused");
        assert!(error.to_string().contains(expected), "{error}");
    }
}

#[tokio::test]
async fn a_group_ignoring_sigterm_is_killed_when_the_handler_is_aborted() {
    // Ignored signals are inherited: nothing in the group stops on SIGTERM, so
    // the engine aborts the handler (cancel grace 500 ms) before its own SIGKILL.
    let (app, dir) = spawn_with_commands(
        r#"
[exec.stubborn]
argv = ["sh", "-c", 'trap "" TERM; echo $$ > "$1"; sleep 300 & echo $! >> "$1"; sleep 300 & echo $! >> "$1"; wait', "sh", "{pidfile}"]
"#,
    )
    .await;
    let pidfile = dir.path().join("pids");
    let job = app
        .submit(exec(
            "stubborn",
            json!({"pidfile": pidfile.to_str().unwrap()}),
        ))
        .await;
    let id = job["id"].as_str().unwrap();
    app.wait_for_status(id, "running", SOON).await;
    let pids = recorded_pids(&pidfile, 3).await;
    app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    app.wait_for_status(id, "cancelled", SOON).await;
    assert_all_gone(&pids).await;
}

/// The `validation_failed` problem of a refused submission, and the
/// pointers of its errors.
async fn refusal(response: reqwest::Response) -> (Value, Vec<String>) {
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "validation_failed", "{problem}");
    let pointers = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap().to_owned())
        .collect();
    (problem, pointers)
}

/// Prints its argument in brackets, so a value the program took as an
/// option would show.
const BRACKETS: &str = "[exec.say]\nargv = [\"printf\", \"[%s]\", \"{v}\"]\n";

#[tokio::test]
async fn only_values_that_start_with_a_dash_or_hold_a_dot_dot_component_are_refused_at_submission()
{
    let (app, _dir) = spawn_with_commands(&format!(
        "{BRACKETS}[exec.list]\nargv = [\"ls\", \"--\", \"in/{{dir}}\"]\n"
    ))
    .await;
    for (command, args, pointer, reason) in [
        (
            "say",
            json!({"v": "--version"}),
            "/payload/args/v",
            "allow_leading_dash",
        ),
        (
            "say",
            json!({"v": "-n"}),
            "/payload/args/v",
            "allow_leading_dash",
        ),
        (
            "say",
            json!({"v": "-"}),
            "/payload/args/v",
            "allow_leading_dash",
        ),
        (
            "say",
            json!({"v": -1}),
            "/payload/args/v",
            "allow_leading_dash",
        ),
        (
            "say",
            json!({"v": "../../../../etc"}),
            "/payload/args/v",
            "allow_dot_dot",
        ),
        (
            "say",
            json!({"v": "a/../b"}),
            "/payload/args/v",
            "allow_dot_dot",
        ),
        (
            "say",
            json!({"v": ".."}),
            "/payload/args/v",
            "allow_dot_dot",
        ),
        (
            "list",
            json!({"dir": "../../etc"}),
            "/payload/args/dir",
            "allow_dot_dot",
        ),
        ("say", json!({"v": "a\u{0}b"}), "/payload/args/v", "NUL"),
    ] {
        let response = app.post("/v1/jobs", &exec(command, args.clone())).await;
        let (problem, pointers) = refusal(response).await;
        assert_eq!(pointers, [pointer], "{args}: {problem}");
        let message = problem["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{args}: {message}");
    }
    for value in ["a-b", "a..b", "..hidden", "x/...", "./x", "/srv/x", "1.5"] {
        let job = app.submit(exec("say", json!({"v": value}))).await;
        let done = app
            .wait_for_status(job["id"].as_str().unwrap(), "succeeded", SOON)
            .await;
        assert_eq!(done["result"]["stdout"], format!("[{value}]"));
    }
}

#[tokio::test]
async fn a_batch_with_a_refused_argument_points_into_its_job() {
    let (app, _dir) = spawn_with_commands(BRACKETS).await;
    let batch = json!({"jobs": [
        exec("say", json!({"v": "fine"})),
        exec("say", json!({"v": "--version"})),
    ]});
    let (problem, pointers) = refusal(app.post("/v1/batches", &batch).await).await;
    assert_eq!(pointers, ["/jobs/1/payload/args/v"], "{problem}");
}

#[tokio::test]
async fn allow_leading_dash_lets_a_value_like_dash_n_reach_the_command_and_nothing_else() {
    let (app, _dir) = spawn_with_commands(&format!("{BRACKETS}allow_leading_dash = true\n")).await;
    for (args, printed) in [
        (json!({"v": "-n"}), "[-n]"),
        (json!({"v": "--version"}), "[--version]"),
        (json!({"v": -1}), "[-1]"),
    ] {
        let job = app.submit(exec("say", args)).await;
        let done = app
            .wait_for_status(job["id"].as_str().unwrap(), "succeeded", SOON)
            .await;
        assert_eq!(done["result"]["stdout"], printed);
    }
    let response = app
        .post("/v1/jobs", &exec("say", json!({"v": "../x"})))
        .await;
    let (_, pointers) = refusal(response).await;
    assert_eq!(pointers, ["/payload/args/v"]);
}

#[tokio::test]
async fn allow_dot_dot_lets_parent_components_reach_the_command_and_nothing_else() {
    let (app, _dir) = spawn_with_commands(&format!("{BRACKETS}allow_dot_dot = true\n")).await;
    for value in ["../../../../etc", "a/../b", ".."] {
        let job = app.submit(exec("say", json!({"v": value}))).await;
        let done = app
            .wait_for_status(job["id"].as_str().unwrap(), "succeeded", SOON)
            .await;
        assert_eq!(done["result"]["stdout"], format!("[{value}]"));
    }
    let response = app.post("/v1/jobs", &exec("say", json!({"v": "-n"}))).await;
    let (_, pointers) = refusal(response).await;
    assert_eq!(pointers, ["/payload/args/v"]);
}

#[tokio::test]
async fn a_job_accepted_before_its_command_was_restricted_fails_at_run_time_with_argument_refused()
{
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("kept.db").display());
    let file = dir.path().join("spool.toml");
    let start = |toml: &str| {
        std::fs::write(&file, toml).unwrap();
        let (file, database_url) = (file.clone(), database_url.clone());
        spawn_app_with(move |config| {
            config.config_file = Some(file);
            config.database_url = database_url;
        })
    };
    let app = start(&format!("{BRACKETS}allow_leading_dash = true\n")).await;
    app.configure_queue("held", json!({"paused": true})).await;
    let mut spec = exec("say", json!({"v": "-n"}));
    spec["queue"] = json!("held");
    let id = app.submit(spec).await["id"].as_str().unwrap().to_owned();
    app.shutdown().await;

    let app = start(BRACKETS).await;
    app.configure_queue("held", json!({"paused": false})).await;
    let done = app.wait_for_status(&id, "failed", SOON).await;
    assert_eq!(done["error"]["code"], "argument_refused", "{done}");
    assert_eq!(done["attempt"], 1);
    let message = done["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`v`") && message.contains("allow_leading_dash"),
        "{message}"
    );
}

/// Log output, for the warnings of a start-up.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[tokio::test]
async fn a_placeholder_inside_a_shell_or_interpreter_script_is_warned_about_at_start_up() {
    let toml = r#"
[exec.shell_code]
argv = ["sh", "-c", "ls {dir}"]
[exec.python_code]
argv = ["python3", "-c", "print('{x}')"]
[exec.own_element]
argv = ["sh", "-c", 'ls -- "$1"', "sh", "{dir}"]
[exec.plain]
argv = ["ls", "--", "{dir}"]
"#;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spool.toml");
    std::fs::write(&file, toml).unwrap();
    let mut config = test_config(dir.path());
    config.config_file = Some(file);
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    // The test's runtime is single-threaded: start-up runs on this thread.
    let guard = tracing::subscriber::set_default(subscriber);
    let app = App::builder(config).build().await;
    drop(guard);
    assert!(app.is_ok(), "a warning does not stop start-up");

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("placeholder inside code"))
        .collect();
    assert_eq!(warnings.len(), 2, "{text}");
    for (command, program) in [("shell_code", "sh"), ("python_code", "python3")] {
        let line = warnings
            .iter()
            .find(|line| line.contains(&format!("command={command}")))
            .unwrap_or_else(|| panic!("no warning names {command}: {text}"));
        assert!(line.contains(&format!("program={program}")), "{line}");
        assert!(line.contains("argv_index=2"), "{line}");
        assert!(line.contains("can run code"), "{line}");
    }
}

#[tokio::test]
async fn a_traced_submissions_command_gets_the_attempts_traceparent() {
    let (app, _dir) = spawn_with_commands("[exec.env]\nargv = [\"env\"]\n").await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{trace_id}-b7ad6b7169203331-01");
    let response = app
        .post_traced("/v1/jobs", &exec("env", json!({})), &traceparent, None)
        .await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.expect("a job");
    let done = app
        .wait_for_status(job["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
    let env = done["result"]["stdout"].as_str().unwrap();
    let traceparent = env
        .lines()
        .find_map(|line| line.strip_prefix("TRACEPARENT="))
        .unwrap_or_else(|| panic!("no TRACEPARENT in {env}"));
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "{traceparent}"
    );
    assert!(
        !traceparent.contains("b7ad6b7169203331"),
        "the attempt's own span"
    );
    assert!(!env.contains("TRACESTATE="), "none was submitted");

    // An untraced job's command sees neither.
    let job = app.submit(exec("env", json!({}))).await;
    let done = app
        .wait_for_status(job["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
    assert!(
        !done["result"]["stdout"]
            .as_str()
            .unwrap()
            .contains("TRACEPARENT")
    );
}

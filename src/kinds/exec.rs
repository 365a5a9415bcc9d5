//! The `exec` kind: runs commands named in the config file, never a shell.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;

use super::{JobContext, JobFailure, JobKind};
use crate::config::ConfigError;

const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Both streams at this size, JSON-escaped, still fit the 256 KiB result cap
/// in the common case.
const MAX_OUTPUT_BYTES: usize = 96 * 1024;
/// Time the group gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(1);
/// Time the leader gets to be reaped after SIGKILL; only a process stuck in
/// the kernel takes longer, and `kill_on_drop` still covers it.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Time the pipes get to reach end-of-file once the group is gone: a process
/// that left the group (setsid) could hold them open forever.
const PIPE_GRACE: Duration = Duration::from_secs(1);
const STDERR_TAIL_BYTES: usize = 500;
/// Taken from Spool's own environment; nothing else is, because it holds
/// secrets (SPOOL_WEBHOOK_SECRET, database credentials) a command must not see.
const INHERITED_ENV: [&str; 3] = ["PATH", "LANG", "HOME"];

/// One `[exec.NAME]` table of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecCommand {
    /// The program and its arguments; `{name}` in `argv[1..]` is replaced by
    /// the payload's argument `name` (`{{` and `}}` are literal braces). No
    /// shell is involved.
    pub argv: Vec<String>,
    /// Shown in the payload schema of `GET /v1/kinds`.
    #[serde(default)]
    pub description: Option<String>,
    /// Environment variables the command gets (besides `PATH`, `LANG`, `HOME`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Longest run, like `30s`; the job's own `timeout_ms` applies as well.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Bytes of stdout and of stderr kept in the result (each). Default 65536.
    #[serde(default)]
    pub max_output_bytes: Option<usize>,
    /// Exit codes that make the attempt retryable instead of final.
    #[serde(default)]
    pub retryable_exit_codes: Vec<i32>,
    /// Working directory; default Spool's own.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

/// Part of one argv element.
#[derive(Debug, PartialEq)]
enum Piece {
    Text(String),
    Arg(String),
}

/// A checked `[exec.NAME]` table.
struct Prepared {
    program: String,
    args: Vec<Vec<Piece>>,
    placeholders: BTreeSet<String>,
    description: Option<String>,
    env: BTreeMap<String, String>,
    timeout: Option<Duration>,
    max_output_bytes: usize,
    retryable_exit_codes: BTreeSet<i32>,
    cwd: Option<PathBuf>,
}

/// Runs the commands of the config file; registered only when there are any.
pub struct ExecKind {
    commands: BTreeMap<String, Prepared>,
    schema: Value,
}

fn valid_command_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn valid_placeholder(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Splits one argv element into literal text and `{placeholder}`s.
fn parse_element(element: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = element.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' | '}' if chars.peek() == Some(&c) => {
                chars.next();
                text.push(c);
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => {
                            return Err(
                                "has a `{` without its `}` (write `{{` for a literal brace)".into(),
                            );
                        }
                    }
                }
                if !valid_placeholder(&name) {
                    return Err(format!(
                        "has `{{{name}}}`, but placeholder names are 1 to 64 of A-Z a-z 0-9 _ \
                         (write `{{{{` for a literal brace)"
                    ));
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Arg(name));
            }
            _ if c == '}' => {
                return Err("has a `}` without its `{` (write `}}` for a literal brace)".into());
            }
            _ => text.push(c),
        }
    }
    if !text.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

impl Prepared {
    fn check(command: &ExecCommand) -> Result<Self, String> {
        let Some((program, rest)) = command.argv.split_first() else {
            return Err("argv must name a program".into());
        };
        if command.argv.iter().any(|a| a.contains('\0')) {
            return Err("argv cannot contain NUL bytes".into());
        }
        let program = match parse_element(program).map_err(|e| format!("argv[0] {e}"))?[..] {
            [Piece::Text(ref text)] if !text.is_empty() => text.clone(),
            [Piece::Text(_)] => return Err("argv[0] (the program) is empty".into()),
            _ => return Err("argv[0] (the program) cannot hold a placeholder".into()),
        };
        let mut args = Vec::with_capacity(rest.len());
        for (i, element) in rest.iter().enumerate() {
            args.push(parse_element(element).map_err(|e| format!("argv[{}] {e}", i + 1))?);
        }
        let placeholders = args
            .iter()
            .flatten()
            .filter_map(|piece| match piece {
                Piece::Arg(name) => Some(name.clone()),
                Piece::Text(_) => None,
            })
            .collect();
        for (name, value) in &command.env {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(format!("env name `{name}` is not a variable name"));
            }
            // The value may be a secret: name the variable, never its value.
            if value.contains('\0') {
                return Err(format!("env `{name}` cannot contain NUL bytes"));
            }
        }
        let timeout = match &command.timeout {
            None => None,
            Some(text) => match humantime::parse_duration(text) {
                Ok(timeout) if !timeout.is_zero() => Some(timeout),
                Ok(_) => return Err("timeout must be more than 0s".into()),
                Err(e) => {
                    return Err(format!(
                        "timeout `{text}` is not a duration like 30s or 5m: {e}"
                    ));
                }
            },
        };
        let max_output_bytes = command.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES);
        if max_output_bytes > MAX_OUTPUT_BYTES {
            return Err(format!(
                "max_output_bytes must be at most {MAX_OUTPUT_BYTES} (results are capped at 256 KiB)"
            ));
        }
        if let Some(cwd) = &command.cwd
            && !cwd.is_dir()
        {
            return Err(format!("cwd {} is not a directory", cwd.display()));
        }
        Ok(Self {
            program,
            args,
            placeholders,
            description: command.description.clone(),
            env: command.env.clone(),
            timeout,
            max_output_bytes,
            retryable_exit_codes: command.retryable_exit_codes.iter().copied().collect(),
            cwd: command.cwd.clone(),
        })
    }

    /// The payload schema branch of this command.
    fn schema(&self, name: &str) -> Value {
        let properties: serde_json::Map<String, Value> = self
            .placeholders
            .iter()
            .map(|p| (p.clone(), json!({"type": ["string", "number", "boolean"]})))
            .collect();
        let mut required = vec!["command"];
        if !self.placeholders.is_empty() {
            required.push("args");
        }
        let mut branch = json!({
            "type": "object",
            "properties": {
                "command": {"const": name},
                "args": {
                    "type": "object",
                    "properties": properties,
                    "required": self.placeholders,
                    "additionalProperties": false
                }
            },
            "required": required,
            "additionalProperties": false
        });
        if let Some(description) = &self.description {
            branch["description"] = json!(description);
        }
        branch
    }

    /// The argv after the program, placeholders replaced.
    fn render(&self, args: &BTreeMap<String, Value>) -> Result<Vec<String>, JobFailure> {
        self.args
            .iter()
            .map(|pieces| {
                let mut element = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(text) => element.push_str(text),
                        Piece::Arg(name) => match args.get(name) {
                            Some(Value::String(text)) => element.push_str(text),
                            Some(value @ (Value::Number(_) | Value::Bool(_))) => {
                                element.push_str(&value.to_string());
                            }
                            // The config may have changed since submission.
                            _ => {
                                return Err(JobFailure::permanent(
                                    "invalid_payload",
                                    format!("argument `{name}` is missing or not a string, number or boolean"),
                                ));
                            }
                        },
                    }
                }
                Ok(element)
            })
            .collect()
    }
}

impl ExecKind {
    /// Checks the `[exec.NAME]` tables; `None` when there are none.
    pub fn from_config(
        commands: &BTreeMap<String, ExecCommand>,
    ) -> Result<Option<Self>, ConfigError> {
        if commands.is_empty() {
            return Ok(None);
        }
        let mut prepared = BTreeMap::new();
        for (name, command) in commands {
            let invalid = |message: String| ConfigError::Exec {
                command: name.clone(),
                message,
            };
            if !valid_command_name(name) {
                return Err(invalid("names are 1 to 64 of A-Z a-z 0-9 _ - .".into()));
            }
            prepared.insert(name.clone(), Prepared::check(command).map_err(invalid)?);
        }
        let branches: Vec<Value> = prepared.iter().map(|(name, p)| p.schema(name)).collect();
        // `oneOf` alone only says "no branch matched" at `/payload`; these
        // repeat each branch's `args` rule under an `if` so a validation error
        // also points at the argument that is missing, extra or mistyped.
        let pointed: Vec<Value> = branches
            .iter()
            .map(|branch| {
                json!({
                    "if": {"properties": {"command": branch["properties"]["command"]}},
                    "then": {
                        "properties": {"args": branch["properties"]["args"]},
                        "required": branch["required"]
                    }
                })
            })
            .collect();
        let names: Vec<&String> = prepared.keys().collect();
        let schema = json!({
            "type": "object",
            "properties": {"command": {"enum": names}, "args": {"type": "object"}},
            "required": ["command"],
            "additionalProperties": false,
            "oneOf": branches,
            "allOf": pointed
        });
        Ok(Some(Self {
            commands: prepared,
            schema,
        }))
    }
}

#[derive(Deserialize)]
struct ExecPayload {
    command: String,
    #[serde(default)]
    args: BTreeMap<String, Value>,
}

#[async_trait]
impl JobKind for ExecKind {
    fn name(&self) -> &str {
        "exec"
    }

    fn description(&self) -> &str {
        "Runs a command named in the config file with the payload's arguments \
         (no shell); its whole process group is killed on cancel or timeout."
    }

    fn payload_schema(&self) -> Value {
        self.schema.clone()
    }

    async fn run(&self, ctx: JobContext) -> Result<Value, JobFailure> {
        let payload: ExecPayload = serde_json::from_value(ctx.payload.clone())
            .map_err(|e| JobFailure::permanent("invalid_payload", e.to_string()))?;
        let Some(command) = self.commands.get(&payload.command) else {
            return Err(JobFailure::permanent(
                "unknown_command",
                format!("no command `{}` is configured", payload.command),
            ));
        };
        let args = command.render(&payload.args)?;
        execute(&payload.command, command, args, &ctx).await
    }
}

/// Output of one stream: the first `max` bytes, the rest read and dropped so
/// the child never blocks on a full pipe.
struct Captured {
    bytes: Vec<u8>,
    max: usize,
    truncated: bool,
}

impl Captured {
    fn new(max: usize) -> Self {
        Self {
            bytes: Vec::new(),
            max,
            truncated: false,
        }
    }

    async fn fill(&mut self, stream: Option<impl AsyncRead + Unpin>) {
        let Some(mut stream) = stream else { return };
        let mut chunk = vec![0; 16 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let keep = n.min(self.max - self.bytes.len());
                    self.bytes.extend_from_slice(&chunk[..keep]);
                    self.truncated |= keep < n;
                }
            }
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Kills the child's process group when dropped: the engine aborts a handler
/// that outlives its cancel grace by dropping this future mid-run.
struct Group {
    pgid: libc::pid_t,
}

impl Group {
    /// `None` for ids that `killpg` would read as "our own group" or "all".
    fn of(pid: u32) -> Option<Self> {
        let pgid = libc::pid_t::try_from(pid).ok().filter(|&pgid| pgid > 1)?;
        Some(Self { pgid })
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: killpg only sends a signal. The child leads the group
        // (process_group(0)), and the group id cannot be reused while any
        // member lives, so at worst this reaches an empty group (ESRCH).
        unsafe {
            libc::killpg(self.pgid, signal);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

enum Ending {
    Exited(std::io::Result<ExitStatus>),
    Cancelled,
    TimedOut,
}

/// Waits up to `limit` for the leader's exit, reading its output meanwhile.
async fn wait_exit(
    child: &mut Child,
    mut reading: Pin<&mut impl Future<Output = ((), ())>>,
    read_all: &mut bool,
    limit: Duration,
) -> Option<std::io::Result<ExitStatus>> {
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            status = child.wait() => return Some(status),
            _ = &mut deadline => return None,
            _ = &mut reading, if !*read_all => *read_all = true,
        }
    }
}

async fn execute(
    name: &str,
    command: &Prepared,
    args: Vec<String>,
    ctx: &JobContext,
) -> Result<Value, JobFailure> {
    let started = Instant::now();
    let mut process = tokio::process::Command::new(&command.program);
    process.args(args).env_clear();
    for key in INHERITED_ENV {
        if let Some(value) = std::env::var_os(key) {
            process.env(key, value);
        }
    }
    process
        .envs(&command.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &command.cwd {
        process.current_dir(cwd);
    }
    let spawn_failed = |why: String| {
        JobFailure::permanent("spawn_failed", format!("`{name}` did not start: {why}"))
    };
    let mut child = process.spawn().map_err(|e| spawn_failed(e.to_string()))?;
    let pid = child.id().unwrap_or(0);
    let Some(group) = Group::of(pid) else {
        return Err(spawn_failed(format!("unusable process id {pid}")));
    };
    tracing::info!(job_id = %ctx.job_id, command = name, pid, "exec command started");

    let mut stdout = Captured::new(command.max_output_bytes);
    let mut stderr = Captured::new(command.max_output_bytes);
    let (out_pipe, err_pipe) = (child.stdout.take(), child.stderr.take());
    let ending = {
        let reading = async { tokio::join!(stdout.fill(out_pipe), stderr.fill(err_pipe)) };
        tokio::pin!(reading);
        let mut read_all = false;
        let timeout = async {
            match command.timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timeout);
        let ending = loop {
            tokio::select! {
                status = child.wait() => break Ending::Exited(status),
                _ = ctx.cancel.cancelled() => break Ending::Cancelled,
                _ = &mut timeout => break Ending::TimedOut,
                _ = &mut reading, if !read_all => read_all = true,
            }
        };
        if !matches!(ending, Ending::Exited(_)) {
            group.signal(libc::SIGTERM);
            if wait_exit(&mut child, reading.as_mut(), &mut read_all, TERM_GRACE)
                .await
                .is_none()
            {
                group.signal(libc::SIGKILL);
                let _ = wait_exit(&mut child, reading.as_mut(), &mut read_all, KILL_WAIT).await;
            }
        }
        // Background children of a command that exited must not outlive it.
        group.signal(libc::SIGKILL);
        if !read_all {
            let _ = tokio::time::timeout(PIPE_GRACE, reading).await;
        }
        ending
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    let status = match ending {
        Ending::Exited(Ok(status)) => status,
        Ending::Exited(Err(e)) => {
            return Err(JobFailure::permanent(
                "exec_failed",
                format!("waiting for `{name}` failed: {e}"),
            ));
        }
        Ending::Cancelled => {
            tracing::info!(job_id = %ctx.job_id, command = name, pid, "exec command cancelled");
            return Err(JobFailure::permanent("cancelled", "stopped on request"));
        }
        Ending::TimedOut => {
            tracing::info!(job_id = %ctx.job_id, command = name, pid, "exec command timed out");
            let limit = command.timeout.map_or(0, |t| t.as_millis());
            return Err(JobFailure::retryable(
                "timeout",
                format!("`{name}` exceeded its timeout of {limit} ms"),
            ));
        }
    };
    let exit_code = status.code();
    tracing::info!(job_id = %ctx.job_id, command = name, pid, exit_code, duration_ms, "exec command exited");
    if exit_code == Some(0) {
        return Ok(json!({
            "exit_code": 0,
            "stdout": stdout.text(),
            "stderr": stderr.text(),
            "stdout_truncated": stdout.truncated,
            "stderr_truncated": stderr.truncated,
            "duration_ms": duration_ms,
        }));
    }
    Err(exit_failure(name, command, status, &stderr))
}

fn exit_failure(
    name: &str,
    command: &Prepared,
    status: ExitStatus,
    stderr: &Captured,
) -> JobFailure {
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended without a status".to_owned(),
    };
    let text = stderr.text();
    let mut from = text.len().saturating_sub(STDERR_TAIL_BYTES);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let tail = text[from..].trim();
    let message = if tail.is_empty() {
        format!("`{name}` {how}")
    } else {
        format!("`{name}` {how}; stderr: {tail}")
    };
    match status.code() {
        Some(code) if command.retryable_exit_codes.contains(&code) => {
            JobFailure::retryable("exit_status", message)
        }
        _ => JobFailure::permanent("exit_status", message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(argv: &[&str]) -> ExecCommand {
        ExecCommand {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            description: None,
            env: BTreeMap::new(),
            timeout: None,
            max_output_bytes: None,
            retryable_exit_codes: Vec::new(),
            cwd: None,
        }
    }

    #[test]
    fn placeholders_may_be_whole_elements_or_parts_and_braces_escape() {
        use Piece::{Arg, Text};
        assert_eq!(parse_element("{file}").unwrap(), [Arg("file".into())]);
        assert_eq!(
            parse_element("--out={dir}/x").unwrap(),
            [Text("--out=".into()), Arg("dir".into()), Text("/x".into())]
        );
        assert_eq!(parse_element("{{a}}").unwrap(), [Text("{a}".into())]);
        assert_eq!(parse_element("").unwrap(), [Text(String::new())]);
        for bad in ["{", "}", "{}", "{a b}", "x{y", "a}b", "{a-b}"] {
            assert!(parse_element(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arguments_render_as_text_and_json_for_numbers_and_booleans() {
        let prepared = Prepared::check(&command(&["p", "{a}", "n={n}", "{b}{{"])).unwrap();
        let args = serde_json::from_value(json!({"a": "x y", "n": 1.5, "b": true})).unwrap();
        assert_eq!(prepared.render(&args).unwrap(), ["x y", "n=1.5", "true{"]);
        assert!(prepared.render(&BTreeMap::new()).is_err());
    }

    #[test]
    fn bad_tables_are_refused_naming_the_command() {
        let check = |name: &str, c: ExecCommand| {
            ExecKind::from_config(&BTreeMap::from([(name.to_owned(), c)]))
                .err()
                .map(|e| e.to_string())
        };
        assert!(check("ok", command(&["true"])).is_none());
        for bad in [
            command(&[]),
            command(&["{p}"]),
            command(&[""]),
            command(&["x", "{"]),
        ] {
            let message = check("job", bad).unwrap();
            assert!(message.contains("exec.job"), "{message}");
        }
        assert!(check("bad name", command(&["true"])).is_some());
        let mut slow = command(&["true"]);
        slow.timeout = Some("soon".into());
        assert!(check("slow", slow).unwrap().contains("timeout"));
        let mut env = command(&["true"]);
        env.env.insert("A=B".into(), "secret".into());
        assert!(!check("env", env).unwrap().contains("secret"));
    }

    #[test]
    fn no_commands_means_no_kind() {
        assert!(ExecKind::from_config(&BTreeMap::new()).unwrap().is_none());
    }
}

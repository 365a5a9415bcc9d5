//! Running one configured command: its own process group, captured output,
//! and the group killed on cancel, timeout or abort.

use std::future::Future;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;

use super::Prepared;
use crate::kinds::{JobContext, JobFailure};

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

pub(super) async fn execute(
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
    // The attempt's trace context, as OpenTelemetry's environment carriers
    // name it.
    if let Some(trace) = &ctx.trace {
        process.env("TRACEPARENT", &trace.traceparent);
        if let Some(state) = &trace.tracestate {
            process.env("TRACESTATE", state);
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

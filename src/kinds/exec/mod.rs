//! The `exec` kind: runs commands named in the config file, never a shell.

mod interpreter;
mod process;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{JobContext, JobFailure, JobKind, MASK};
use crate::domain::FieldError;

const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Both streams at this size, JSON-escaped, still fit the 256 KiB result cap
/// in the common case.
const MAX_OUTPUT_BYTES: usize = 96 * 1024;

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
    /// Lets argument values start with `-` (negative numbers included).
    /// Off by default: the program would read such a value as an option
    /// (`{"dir": "--version"}` makes `ls {dir}` print its version).
    #[serde(default)]
    pub allow_leading_dash: bool,
    /// Lets argument values hold a `..` path component (`../../etc`,
    /// `a/../b`). Off by default: a path argument could then leave the
    /// directory the command means it to stay in.
    #[serde(default)]
    pub allow_dot_dot: bool,
    /// Placeholders whose values are secret (a token, a password): the
    /// command gets them, but the job is shown with `***` in their place,
    /// and so is its output wherever it repeats them.
    #[serde(default)]
    pub secret_args: Vec<String>,
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
    allow_leading_dash: bool,
    allow_dot_dot: bool,
    secret_args: BTreeSet<String>,
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

/// An argument as it goes into argv: strings as they are, numbers and
/// booleans as JSON writes them; `None` for any other JSON.
fn argument_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(text) => Some(Cow::Borrowed(text)),
        Value::Number(_) | Value::Bool(_) => Some(Cow::Owned(value.to_string())),
        _ => None,
    }
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
            .collect::<BTreeSet<String>>();
        if let Some(unknown) = command
            .secret_args
            .iter()
            .find(|name| !placeholders.contains(*name))
        {
            return Err(format!(
                "secret_args names `{unknown}`, which is not a placeholder of argv"
            ));
        }
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
            allow_leading_dash: command.allow_leading_dash,
            allow_dot_dot: command.allow_dot_dot,
            secret_args: command.secret_args.iter().cloned().collect(),
        })
    }

    /// Why an argument's text may not reach this command, if it may not.
    fn refusal(&self, text: &str) -> Option<&'static str> {
        if text.contains('\0') {
            return Some("contains a NUL byte, which no argument can carry");
        }
        if text.starts_with('-') && !self.allow_leading_dash {
            return Some(
                "starts with `-`, so the program could read it as an option \
                 (the command's `allow_leading_dash` setting allows it)",
            );
        }
        if !self.allow_dot_dot && text.split('/').any(|component| component == "..") {
            return Some(
                "has a `..` path component, which could lead outside the intended directory \
                 (the command's `allow_dot_dot` setting allows it)",
            );
        }
        None
    }

    /// The payload schema branch of this command.
    fn schema(&self, name: &str) -> Value {
        let properties: serde_json::Map<String, Value> = self
            .placeholders
            .iter()
            .map(|p| {
                let mut property = json!({"type": ["string", "number", "boolean"]});
                if self.secret_args.contains(p) {
                    property["description"] =
                        json!("Secret: the command gets it; the job shows \"***\".");
                }
                (p.clone(), property)
            })
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
                        Piece::Arg(name) => match args.get(name).and_then(argument_text) {
                            // The config may have changed since submission.
                            Some(text) => match self.refusal(&text) {
                                None => element.push_str(&text),
                                Some(why) => {
                                    return Err(JobFailure::permanent(
                                        "argument_refused",
                                        format!("argument `{name}` {why}"),
                                    ));
                                }
                            },
                            None => {
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

/// An `[exec.NAME]` table that cannot run: its own error, so that the kind
/// depends on no configuration module (which wraps it).
#[derive(Debug, thiserror::Error)]
#[error("exec.{command}: {message}")]
pub struct ExecConfigError {
    pub command: String,
    pub message: String,
}

impl ExecKind {
    /// Checks the `[exec.NAME]` tables; `None` when there are none.
    pub fn from_config(
        commands: &BTreeMap<String, ExecCommand>,
    ) -> Result<Option<Self>, ExecConfigError> {
        if commands.is_empty() {
            return Ok(None);
        }
        let mut prepared = BTreeMap::new();
        for (name, command) in commands {
            let invalid = |message: String| ExecConfigError {
                command: name.clone(),
                message,
            };
            if !valid_command_name(name) {
                return Err(invalid("names are 1 to 64 of A-Z a-z 0-9 _ - .".into()));
            }
            let checked = Prepared::check(command).map_err(invalid)?;
            if let Some(argv_index) = interpreter::placeholder_in_code(&checked) {
                tracing::warn!(
                    command = %name,
                    program = %checked.program,
                    argv_index,
                    safe_form = r#"["sh", "-c", "ls -- \"$1\"", "sh", "{dir}"]"#,
                    "exec command puts a placeholder inside code that a shell or interpreter \
                     runs (a `sh -c` script, `python -c`, `perl -e`, ...), so an argument \
                     value can run code of its choosing; pass the value as an argv element \
                     of its own instead, as in safe_form"
                );
            }
            prepared.insert(name.clone(), checked);
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

    fn check_payload(&self, payload: &Value) -> Vec<FieldError> {
        let command = payload.get("command").and_then(Value::as_str);
        let Some(command) = command.and_then(|name| self.commands.get(name)) else {
            return Vec::new();
        };
        let Some(args) = payload.get("args").and_then(Value::as_object) else {
            return Vec::new();
        };
        args.iter()
            .filter_map(|(name, value)| {
                let why = command.refusal(&argument_text(value)?)?;
                // Placeholder names need no JSON Pointer escaping.
                Some(FieldError::new(format!("/args/{name}"), why))
            })
            .collect()
    }

    fn redact(&self, payload: &mut Value) {
        let command = payload.get("command").and_then(Value::as_str);
        let Some(command) = command.and_then(|name| self.commands.get(name)) else {
            return;
        };
        if command.secret_args.is_empty() {
            return;
        }
        let Some(args) = payload.get_mut("args").and_then(Value::as_object_mut) else {
            return;
        };
        for (name, value) in args {
            if command.secret_args.contains(name) {
                *value = Value::String(MASK.to_owned());
            }
        }
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
        process::execute(&payload.command, command, args, &ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn command(argv: &[&str]) -> ExecCommand {
        ExecCommand {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            description: None,
            env: BTreeMap::new(),
            timeout: None,
            max_output_bytes: None,
            retryable_exit_codes: Vec::new(),
            cwd: None,
            allow_leading_dash: false,
            allow_dot_dot: false,
            secret_args: Vec::new(),
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
    fn leading_dashes_and_dot_dot_components_are_refused_unless_allowed() {
        let strict = Prepared::check(&command(&["p", "{a}"])).unwrap();
        let mut loose = command(&["p", "{a}"]);
        loose.allow_leading_dash = true;
        loose.allow_dot_dot = true;
        let loose = Prepared::check(&loose).unwrap();
        for refused in [
            "-n",
            "--version",
            "-",
            "..",
            "../../etc",
            "a/../b",
            "x/..",
            "../",
        ] {
            assert!(strict.refusal(refused).is_some(), "{refused}");
            assert!(loose.refusal(refused).is_none(), "{refused}");
        }
        for passed in [
            "a-b", "a..b", "..hidden", "x/...", ".", "./x", "/etc/x", "", "1",
        ] {
            assert!(strict.refusal(passed).is_none(), "{passed}");
        }
        assert!(loose.refusal("a\0b").is_some());

        let args = |value: Value| serde_json::from_value(json!({ "a": value })).unwrap();
        let refused = strict.render(&args(json!(-1))).unwrap_err();
        assert_eq!(refused.code(), "argument_refused");
        assert!(!refused.is_retryable());
        assert_eq!(loose.render(&args(json!(-1))).unwrap(), ["-1"]);
    }

    #[test]
    fn secret_args_are_masked_and_must_name_placeholders() {
        let mut login = command(&["login", "--user={user}", "{token}"]);
        login.secret_args = vec!["token".into()];
        let kind = ExecKind::from_config(&BTreeMap::from([
            ("login".to_owned(), login),
            ("plain".to_owned(), command(&["echo", "{token}"])),
        ]))
        .unwrap()
        .unwrap();
        let mut payload = json!({"command": "login", "args": {"user": "ann", "token": 1234}});
        kind.redact(&mut payload);
        assert_eq!(payload["args"], json!({"user": "ann", "token": "***"}));
        // Another command's argument of the same name is not secret.
        let mut payload = json!({"command": "plain", "args": {"token": "t"}});
        kind.redact(&mut payload);
        assert_eq!(payload["args"]["token"], "t");
        for mut odd in [json!(null), json!({"command": "login", "args": [1]})] {
            kind.redact(&mut odd);
        }

        let mut unknown = command(&["login", "{user}"]);
        unknown.secret_args = vec!["token".into()];
        let message = ExecKind::from_config(&BTreeMap::from([("login".to_owned(), unknown)]))
            .err()
            .unwrap()
            .to_string();
        assert!(
            message.contains("secret_args") && message.contains("token"),
            "{message}"
        );
    }

    #[test]
    fn no_commands_means_no_kind() {
        assert!(ExecKind::from_config(&BTreeMap::new()).unwrap().is_none());
    }
}

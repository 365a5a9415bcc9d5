//! Printing: aligned tables and `key: value` lines for people, the API's
//! JSON for scripts.

use serde_json::Value;

/// One object, pretty (`--json`).
pub fn json(value: &Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        // A `Value` always serializes; print something rather than nothing.
        Err(_) => println!("{value}"),
    }
}

/// A field as a cell: strings bare, absent or null as `-`, anything else
/// as compact JSON.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A column per header, each as wide as its widest cell; the last column
/// is not padded (no trailing blanks).
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, &width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `key: value` lines, values aligned; empty values are left out.
pub fn fields(pairs: &[(&str, String)]) {
    let shown: Vec<&(&str, String)> = pairs
        .iter()
        .filter(|(_, value)| !value.is_empty() && value != "-")
        .collect();
    let width = shown
        .iter()
        .map(|(key, _)| key.len() + 1)
        .max()
        .unwrap_or(0);
    for (key, value) in shown {
        let label = format!("{key}:");
        println!("{label:<width$} {value}");
    }
}

/// `K=V, K=V` of a metadata object.
pub fn metadata(value: &Value) -> String {
    value
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .map(|(key, value)| format!("{key}={}", text(value)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// `code: message` of an ErrorInfo.
pub fn error(value: &Value) -> String {
    if value.is_null() {
        return String::new();
    }
    format!("{}: {}", text(&value["code"]), text(&value["message"]))
}

/// `current/total message` of a Progress.
pub fn progress(value: &Value) -> String {
    if value.is_null() {
        return String::new();
    }
    let mut out = text(&value["current"]);
    if !value["total"].is_null() {
        out.push_str(&format!("/{}", text(&value["total"])));
    }
    if let Some(message) = value["message"].as_str() {
        out.push(' ');
        out.push_str(message);
    }
    out
}

/// A job as `key: value` lines.
pub fn job(job: &Value) {
    let present = |key: &str| match &job[key] {
        Value::Null => String::new(),
        value => text(value),
    };
    let depends_on = job["depends_on"]
        .as_array()
        .map(|ids| ids.iter().map(text).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    fields(&[
        ("id", present("id")),
        ("status", present("status")),
        ("kind", present("kind")),
        ("queue", present("queue")),
        ("priority", present("priority")),
        (
            "attempt",
            format!(
                "{} of {}",
                text(&job["attempt"]),
                text(&job["max_attempts"])
            ),
        ),
        ("key", present("key")),
        ("batch_id", present("batch_id")),
        ("position", present("position")),
        ("depends_on", depends_on),
        ("metadata", metadata(&job["metadata"])),
        ("created_at", present("created_at")),
        ("run_at", present("run_at")),
        ("started_at", present("started_at")),
        ("finished_at", present("finished_at")),
        (
            "cancel_requested",
            if job["cancel_requested"] == true {
                "yes".into()
            } else {
                String::new()
            },
        ),
        ("progress", progress(&job["progress"])),
        ("payload", present("payload")),
        ("result", present("result")),
        ("error", error(&job["error"])),
    ]);
}

/// The ATTEMPT cell: `1/3`.
pub fn attempt(job: &Value) -> String {
    format!("{}/{}", text(&job["attempt"]), text(&job["max_attempts"]))
}

/// Jobs as a table.
pub fn jobs(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|job| {
            vec![
                text(&job["id"]),
                text(&job["status"]),
                text(&job["kind"]),
                text(&job["queue"]),
                attempt(job),
                text(&job["created_at"]),
            ]
        })
        .collect();
    table(
        &["ID", "STATUS", "KIND", "QUEUE", "ATTEMPT", "CREATED"],
        &rows,
    );
}

/// `succeeded=3 failed=1 …` of a batch's counts, zeros left out.
pub fn counts(counts: &Value) -> String {
    [
        "scheduled",
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]
    .iter()
    .filter(|state| counts[**state].as_u64().unwrap_or(0) > 0)
    .map(|state| format!("{state}={}", text(&counts[*state])))
    .collect::<Vec<_>>()
    .join(" ")
}

/// A batch as `key: value` lines (its job ids: `spool job list --batch`).
pub fn batch(batch: &Value) {
    let present = |key: &str| match &batch[key] {
        Value::Null => String::new(),
        value => text(value),
    };
    fields(&[
        ("id", present("id")),
        ("status", present("status")),
        ("total", present("total")),
        ("counts", counts(&batch["counts"])),
        ("success_threshold", present("success_threshold")),
        ("metadata", metadata(&batch["metadata"])),
        ("created_at", present("created_at")),
        ("finished_at", present("finished_at")),
        (
            "cancel_requested",
            if batch["cancel_requested"] == true {
                "yes".into()
            } else {
                String::new()
            },
        ),
    ]);
}

/// A queue as `key: value` lines.
pub fn queue(queue: &Value) {
    let present = |value: &Value| match value {
        Value::Null => String::new(),
        value => text(value),
    };
    fields(&[
        ("name", present(&queue["name"])),
        ("concurrency", present(&queue["concurrency"])),
        ("capacity", present(&queue["capacity"])),
        ("paused", present(&queue["paused"])),
        ("scheduled", present(&queue["counts"]["scheduled"])),
        ("queued", present(&queue["counts"]["queued"])),
        ("running", present(&queue["counts"]["running"])),
        ("oldest_ready_at", present(&queue["oldest_ready_at"])),
        ("max_attempts", present(&queue["defaults"]["max_attempts"])),
        ("timeout_ms", present(&queue["defaults"]["timeout_ms"])),
        ("backoff", present(&queue["defaults"]["backoff"])),
    ]);
}

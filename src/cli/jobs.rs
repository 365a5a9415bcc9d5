//! `spool job submit|get|wait|cancel|retry|list`.

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::args::{JobArgs, JobCommand, ListArgs, SubmitArgs};
use super::client::{CliError, Client, parse_json, read_json, segment};
use super::{Exit, exit_for_status, output};

pub async fn run(args: JobArgs) -> Result<Exit, CliError> {
    let client = Client::new(&args.client)?;
    let json = args.client.json;
    match args.command {
        JobCommand::Submit(submit) => {
            let wait = submit.wait.then_some(submit.timeout);
            let job = submit_job(&client, submit).await?;
            match wait {
                None => {
                    show(&job, json);
                    Ok(Exit::Success)
                }
                Some(timeout) => {
                    let id = output::text(&job["id"]);
                    finish(wait_job(&client, &id, timeout).await?, json)
                }
            }
        }
        JobCommand::Get { id } => {
            let job = client.get(&job_path(&id), &[]).await?;
            show(&job, json);
            Ok(Exit::Success)
        }
        JobCommand::Wait { id, timeout } => {
            finish(wait_job(&client, &id, timeout.timeout).await?, json)
        }
        JobCommand::Cancel { id } => {
            // 202: a running job was asked to stop; it ends `cancelled` later.
            let job = client
                .post(&format!("{}/cancel", job_path(&id)), None)
                .await?;
            show(&job, json);
            Ok(Exit::Success)
        }
        JobCommand::Retry { id } => {
            let job = client
                .post(&format!("{}/retry", job_path(&id)), None)
                .await?;
            show(&job, json);
            Ok(Exit::Success)
        }
        JobCommand::List(list) => list_jobs(&client, list, json).await,
    }
}

fn job_path(id: &str) -> String {
    format!("/v1/jobs/{}", segment(id))
}

fn show(job: &Value, json: bool) {
    if json {
        output::json(job);
    } else {
        output::job(job);
    }
}

/// Prints the job a wait ended on; its status is the exit code. A job that
/// did not succeed is also named on stderr, where a script's log looks.
fn finish(job: Value, json: bool) -> Result<Exit, CliError> {
    show(&job, json);
    let status = output::text(&job["status"]);
    let exit = exit_for_status(&status);
    let id = output::text(&job["id"]);
    match exit {
        Exit::Failed => eprintln!("spool: job {id} failed: {}", output::error(&job["error"])),
        Exit::Cancelled => eprintln!("spool: job {id} was cancelled"),
        Exit::TimedOut => eprintln!("spool: job {id} is still {status}: gave up waiting"),
        _ => {}
    }
    Ok(exit)
}

/// The JSON body of `POST /v1/jobs` from the flags: only what was given,
/// so that the service's defaults (and the queue's) apply to the rest.
fn spec(submit: &SubmitArgs) -> Result<Value, CliError> {
    let mut spec = Map::new();
    spec.insert("kind".into(), json!(submit.kind));
    let payload = match (&submit.payload, &submit.payload_file) {
        (Some(text), _) => Some(parse_json(text, "--payload")?),
        (None, Some(path)) => Some(read_json(path, "the payload")?),
        (None, None) => None,
    };
    if let Some(payload) = payload {
        spec.insert("payload".into(), payload);
    }
    let optional = [
        ("queue", submit.queue.as_ref().map(|q| json!(q))),
        ("priority", submit.priority.map(|p| json!(p))),
        ("key", submit.key.as_ref().map(|k| json!(k))),
        ("on_conflict", submit.on_conflict.as_ref().map(|c| json!(c))),
        ("delay_ms", submit.delay_ms.map(|d| json!(d))),
        ("run_at", submit.run_at.as_ref().map(|r| json!(r))),
        ("max_attempts", submit.max_attempts.map(|m| json!(m))),
        ("timeout_ms", submit.timeout_ms.map(|t| json!(t))),
        (
            "callback_url",
            submit.callback_url.as_ref().map(|u| json!(u)),
        ),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            spec.insert(name.into(), value);
        }
    }
    if !submit.meta.is_empty() {
        let labels: Map<String, Value> = submit
            .meta
            .iter()
            .map(|(key, value)| (key.clone(), json!(value)))
            .collect();
        spec.insert("metadata".into(), Value::Object(labels));
    }
    if !submit.depends_on.is_empty() {
        spec.insert("depends_on".into(), json!(submit.depends_on));
    }
    Ok(Value::Object(spec))
}

async fn submit_job(client: &Client, submit: SubmitArgs) -> Result<Value, CliError> {
    let body = spec(&submit)?;
    let mut request = client.request(Method::POST, "/v1/jobs").json(&body);
    if let Some(key) = &submit.idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    client.call(request).await
}

/// Long-polls the job until it is terminal or `timeout` seconds passed,
/// and returns it as it is then.
pub async fn wait_job(client: &Client, id: &str, timeout: Option<u64>) -> Result<Value, CliError> {
    client
        .long_poll(&job_path(id), timeout, |job| {
            exit_for_status(&output::text(&job["status"])) != Exit::TimedOut
        })
        .await
}

async fn list_jobs(client: &Client, list: ListArgs, json: bool) -> Result<Exit, CliError> {
    let mut query: Vec<(String, String)> = Vec::new();
    let filters = [
        ("status", &list.status),
        ("queue", &list.queue),
        ("kind", &list.kind),
        ("key", &list.key),
        ("batch_id", &list.batch),
    ];
    for (name, value) in filters {
        if let Some(value) = value {
            query.push((name.into(), value.clone()));
        }
    }
    for (key, value) in &list.meta {
        query.push((format!("metadata.{key}"), value.clone()));
    }
    if let Some(limit) = list.limit {
        query.push(("limit".into(), limit.to_string()));
    }
    let mut cursor = list.cursor.clone();
    let mut items = Vec::new();
    let next = loop {
        let mut page_query = query.clone();
        if let Some(cursor) = &cursor {
            page_query.push(("cursor".into(), cursor.clone()));
        }
        let page = client.get("/v1/jobs", &page_query).await?;
        if !list.all {
            // One page: the answer as it is, next_cursor and all.
            if json {
                output::json(&page);
                return Ok(Exit::Success);
            }
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            break page["next_cursor"].as_str().map(str::to_owned);
        }
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) if !next.is_empty() => cursor = Some(next.to_owned()),
            _ => break None,
        }
    };
    if json {
        // Every page as one page of the same shape, read to its end.
        output::json(&json!({"items": items, "next_cursor": null}));
    } else {
        output::jobs(&items);
        if let Some(next) = next {
            eprintln!("more: --cursor {next} (or --all)");
        }
    }
    Ok(Exit::Success)
}

//! `spool batch submit|get|wait|results|cancel|retry`.

use std::path::Path;

use serde_json::{Value, json};

use super::args::{BatchArgs, BatchCommand};
use super::client::{CliError, Client, MAX_WAIT_S, read_json, segment};
use super::{Exit, exit_for_status, output};

pub async fn run(args: BatchArgs) -> Result<Exit, CliError> {
    let client = Client::new(&args.client)?;
    let json = args.client.json;
    match args.command {
        BatchCommand::Submit {
            file,
            wait,
            timeout,
        } => {
            let batch = client.post("/v1/batches", Some(&spec(&file)?)).await?;
            if !wait {
                show(&batch, json);
                return Ok(Exit::Success);
            }
            let id = output::text(&batch["id"]);
            finish(wait_batch(&client, &id, timeout).await?, json)
        }
        BatchCommand::Get { id } => {
            show(&client.get(&batch_path(&id), &[]).await?, json);
            Ok(Exit::Success)
        }
        BatchCommand::Wait { id, timeout } => {
            finish(wait_batch(&client, &id, timeout.timeout).await?, json)
        }
        BatchCommand::Results {
            id,
            limit,
            cursor,
            all,
            follow,
        } => {
            let read = Reading {
                limit,
                cursor,
                all,
                follow,
            };
            results(&client, &id, read, json).await
        }
        BatchCommand::Cancel { id } => {
            let batch = client
                .post(&format!("{}/cancel", batch_path(&id)), None)
                .await?;
            show(&batch, json);
            Ok(Exit::Success)
        }
        BatchCommand::Retry {
            id,
            all,
            wait,
            timeout,
        } => {
            let scope = if all { "all" } else { "failed" };
            let batch = client
                .post(
                    &format!("{}/retry", batch_path(&id)),
                    Some(&json!({ "scope": scope })),
                )
                .await?;
            if !wait {
                show(&batch, json);
                return Ok(Exit::Success);
            }
            finish(wait_batch(&client, &id, timeout).await?, json)
        }
    }
}

fn batch_path(id: &str) -> String {
    format!("/v1/batches/{}", segment(id))
}

fn show(batch: &Value, json: bool) {
    if json {
        output::json(batch);
    } else {
        output::batch(batch);
    }
}

/// A `BatchSpec` from the file; a bare array is taken as its `jobs`, the
/// form a script most easily produces.
fn spec(file: &Path) -> Result<Value, CliError> {
    match read_json(file, "the batch")? {
        Value::Array(jobs) => Ok(json!({ "jobs": jobs })),
        spec => Ok(spec),
    }
}

fn finish(batch: Value, json: bool) -> Result<Exit, CliError> {
    show(&batch, json);
    let status = output::text(&batch["status"]);
    let exit = exit_for_status(&status);
    let id = output::text(&batch["id"]);
    match exit {
        Exit::Failed => eprintln!(
            "spool: batch {id} failed: {}",
            output::counts(&batch["counts"])
        ),
        Exit::Cancelled => eprintln!("spool: batch {id} was cancelled"),
        Exit::TimedOut => eprintln!("spool: batch {id} is still {status}: gave up waiting"),
        _ => {}
    }
    Ok(exit)
}

/// Long-polls the batch until it finished or `timeout` seconds passed.
async fn wait_batch(client: &Client, id: &str, timeout: Option<u64>) -> Result<Value, CliError> {
    client
        .long_poll(&batch_path(id), timeout, |batch| {
            batch["status"].as_str().is_some_and(|s| s != "running")
        })
        .await
}

/// How `batch results` reads.
struct Reading {
    limit: Option<u32>,
    cursor: Option<String>,
    /// Pages while they come full: what is there now.
    all: bool,
    /// Pages until the batch finished and was read to the end.
    follow: bool,
}

async fn results(client: &Client, id: &str, read: Reading, json: bool) -> Result<Exit, CliError> {
    let path = format!("{}/results", batch_path(id));
    let mut cursor = read.cursor.clone();
    let mut items: Vec<Value> = Vec::new();
    let last_page = loop {
        let mut query: Vec<(String, String)> = Vec::new();
        if let Some(limit) = read.limit {
            query.push(("limit".into(), limit.to_string()));
        }
        if let Some(cursor) = &cursor {
            query.push(("cursor".into(), cursor.clone()));
        }
        if read.follow {
            // An empty page then comes as soon as there is a result.
            query.push(("wait".into(), MAX_WAIT_S.to_string()));
        }
        let page = client.get(&path, &query).await?;
        let got = page["items"].as_array().cloned().unwrap_or_default();
        let next = page["next_cursor"].as_str().map(str::to_owned);
        let more = match (&next, read.all, read.follow) {
            (None, ..) => false,
            (Some(_), _, true) => true,
            // An empty page: everything there is now was read.
            (Some(_), true, false) => !got.is_empty(),
            (Some(_), false, false) => false,
        };
        items.extend(got);
        if !more {
            break page;
        }
        cursor = next;
    };
    if json {
        let mut page = last_page;
        if let Some(page) = page.as_object_mut() {
            page.insert("items".into(), Value::Array(items));
        }
        output::json(&page);
    } else {
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|item| {
                let outcome = match &item["error"] {
                    Value::Null => output::text(&item["result"]),
                    error => output::error(error),
                };
                vec![
                    output::text(&item["index"]),
                    output::text(&item["job_id"]),
                    output::text(&item["status"]),
                    output::text(&item["finished_at"]),
                    outcome,
                ]
            })
            .collect();
        output::table(
            &["INDEX", "JOB", "STATUS", "FINISHED", "RESULT / ERROR"],
            &rows,
        );
        match last_page["next_cursor"].as_str() {
            Some(next) => eprintln!(
                "batch {}: more to come: --cursor {next}",
                output::text(&last_page["batch_status"])
            ),
            None => eprintln!("batch {}", output::text(&last_page["batch_status"])),
        }
    }
    Ok(Exit::Success)
}

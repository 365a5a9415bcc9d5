//! `spool queue list|get|set|pause|resume|delete`.

use serde_json::{Map, Value, json};

use super::args::{QueueArgs, QueueCommand};
use super::client::{CliError, Client, segment};
use super::{Exit, output};

pub async fn run(args: QueueArgs) -> Result<Exit, CliError> {
    let client = Client::new(&args.client)?;
    let json = args.client.json;
    let queue = match args.command {
        QueueCommand::List => {
            let list = client.get("/v1/queues", &[]).await?;
            if json {
                output::json(&list);
            } else {
                table(list["items"].as_array().map_or(&[][..], Vec::as_slice));
            }
            return Ok(Exit::Success);
        }
        QueueCommand::Get { name } => client.get(&queue_path(&name), &[]).await?,
        QueueCommand::Delete { name } => {
            client.delete(&queue_path(&name)).await?;
            if json {
                output::json(&json!({"deleted": name}));
            } else {
                println!("deleted queue {name}");
            }
            return Ok(Exit::Success);
        }
        QueueCommand::Set {
            name,
            concurrency,
            capacity,
        } => {
            // Only what was given: the service keeps the rest as it is.
            let mut settings = Map::new();
            if let Some(concurrency) = concurrency {
                settings.insert("concurrency".into(), json!(concurrency));
            }
            if let Some(capacity) = capacity {
                settings.insert("capacity".into(), json!(capacity));
            }
            client
                .put(&queue_path(&name), &Value::Object(settings))
                .await?
        }
        QueueCommand::Pause { name } => {
            client
                .put(&queue_path(&name), &json!({"paused": true}))
                .await?
        }
        QueueCommand::Resume { name } => {
            client
                .put(&queue_path(&name), &json!({"paused": false}))
                .await?
        }
    };
    if json {
        output::json(&queue);
    } else {
        output::queue(&queue);
    }
    Ok(Exit::Success)
}

fn queue_path(name: &str) -> String {
    format!("/v1/queues/{}", segment(name))
}

fn table(queues: &[Value]) {
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|queue| {
            vec![
                output::text(&queue["name"]),
                output::text(&queue["concurrency"]),
                output::text(&queue["capacity"]),
                if queue["paused"] == true { "yes" } else { "no" }.into(),
                output::text(&queue["counts"]["scheduled"]),
                output::text(&queue["counts"]["queued"]),
                output::text(&queue["counts"]["running"]),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "CONCURRENCY",
            "CAPACITY",
            "PAUSED",
            "SCHEDULED",
            "QUEUED",
            "RUNNING",
        ],
        &rows,
    );
}

//! `spool events`: follows `GET /v1/events` (Server-Sent Events), one line
//! per event, until interrupted.

use reqwest::Method;
use serde_json::Value;

use super::args::EventsArgs;
use super::client::{CliError, Client};
use super::{Exit, output};

pub async fn run(args: EventsArgs) -> Result<Exit, CliError> {
    let client = Client::new(&args.client)?;
    let json = args.client.json;
    let mut query: Vec<(String, String)> = Vec::new();
    let filters = [
        ("job_id", &args.job),
        ("batch_id", &args.batch),
        ("queue", &args.queue),
        ("types", &args.types),
    ];
    for (name, value) in filters {
        if let Some(value) = value {
            query.push((name.into(), value.clone()));
        }
    }
    let mut request = client
        .request_with(Method::GET, "/v1/events", &query)
        .header("Accept", "text/event-stream");
    if let Some(id) = &args.last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    // No overall timeout: the stream is meant to last.
    let mut response = client.send(request).await?;
    let mut parser = SseParser::default();
    // Ctrl-C is how one stops following: not a failure. One listener for
    // the whole stream, so that no signal falls between two chunks.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk,
            _ = &mut interrupted => return Ok(Exit::Success),
        };
        let chunk = match chunk {
            Ok(Some(chunk)) => chunk,
            Ok(None) => {
                return Err(CliError::Unreachable(
                    "the service closed the event stream".into(),
                ));
            }
            Err(error) => {
                return Err(CliError::Unreachable(format!(
                    "the event stream broke: {error}"
                )));
            }
        };
        for message in parser.push(&chunk) {
            print_message(&message, json);
            if message.event == "stream.end" {
                return Err(CliError::Unreachable(
                    "the event stream ended: the service is shutting down".into(),
                ));
            }
        }
    }
}

fn print_message(message: &SseMessage, json: bool) {
    let data: Option<Value> = serde_json::from_str(&message.data).ok();
    if json {
        match data {
            // Notices about the stream carry no `type` of their own; add it
            // so every line says what it is.
            Some(Value::Object(mut notice)) if !notice.contains_key("type") => {
                notice.insert("type".into(), Value::String(message.event.clone()));
                println!("{}", Value::Object(notice));
            }
            // One line per event: the service's `data:` as it came.
            _ if !message.data.contains('\n') => println!("{}", message.data),
            Some(value) => println!("{value}"),
            None => println!("{}", Value::String(message.data.clone())),
        }
        return;
    }
    let Some(data) = data else {
        println!("{} {}", message.event, message.data);
        return;
    };
    println!("{}", human(&message.event, &data));
}

/// `AT TYPE job=ID kind=K queue=Q status=S attempt=1/3 …`.
fn human(event: &str, data: &Value) -> String {
    let mut line = match data["at"].as_str() {
        Some(at) => format!("{at} {event}"),
        None => event.to_owned(),
    };
    let job = &data["job"];
    let batch = &data["batch"];
    if job.is_object() {
        line.push_str(&format!(
            " job={} kind={} queue={} status={} attempt={}",
            output::text(&job["id"]),
            output::text(&job["kind"]),
            output::text(&job["queue"]),
            output::text(&job["status"]),
            output::attempt(job),
        ));
        if !job["progress"].is_null() {
            line.push_str(&format!(" progress={}", output::progress(&job["progress"])));
        }
        if !job["error"].is_null() {
            line.push_str(&format!(" error={}", output::error(&job["error"])));
        }
    } else if batch.is_object() {
        line.push_str(&format!(
            " batch={} status={} {}",
            output::text(&batch["id"]),
            output::text(&batch["status"]),
            output::counts(&batch["counts"]),
        ));
    } else if let Some(notice) = data.as_object() {
        // stream.gap and stream.end: their fields as they are.
        for (key, value) in notice {
            line.push_str(&format!(" {key}={}", output::text(value)));
        }
    }
    line
}

/// One dispatched SSE message.
#[derive(Debug, Default, PartialEq)]
pub struct SseMessage {
    /// `event:`, or `message` when there was none (the SSE default).
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// The `text/event-stream` format, fed bytes as they arrive: a line is
/// `field: value`, a blank line ends a message, `:` starts a comment.
#[derive(Default)]
pub struct SseParser {
    /// Bytes of a line not yet ended.
    partial: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseMessage> {
        let mut messages = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                self.partial.push(byte);
                continue;
            }
            let mut line = std::mem::take(&mut self.partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(message) = self.line(&String::from_utf8_lossy(&line)) {
                messages.push(message);
            }
        }
        messages
    }

    fn line(&mut self, line: &str) -> Option<SseMessage> {
        if line.is_empty() {
            // A message without data is dispatched as nothing (the SSE rule).
            let event = self.event.take();
            let id = self.id.take();
            let data = self.data.take()?;
            return Some(SseMessage {
                event: event.unwrap_or_else(|| "message".into()),
                data,
                id,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
        match field {
            "event" => self.event = Some(value),
            "id" => self.id = Some(value),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(&value);
                }
                None => self.data = Some(value),
            },
            // `retry:` and unknown fields: nothing to do for a follower.
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_split_on_blank_lines_whatever_the_chunks() {
        let stream = b": keep-alive\n\nid: 1-1\nevent: job.queued\ndata: {\"a\":1}\n\r\nevent: stream.end\ndata: {}\n\n";
        for size in [1, 3, stream.len()] {
            let mut parser = SseParser::default();
            let messages: Vec<SseMessage> = stream
                .chunks(size)
                .flat_map(|chunk| parser.push(chunk))
                .collect();
            assert_eq!(
                messages,
                vec![
                    SseMessage {
                        event: "job.queued".into(),
                        data: "{\"a\":1}".into(),
                        id: Some("1-1".into()),
                    },
                    SseMessage {
                        event: "stream.end".into(),
                        data: "{}".into(),
                        id: None,
                    },
                ],
                "in chunks of {size}"
            );
        }
    }

    #[test]
    fn data_lines_join_and_an_unnamed_message_is_a_message() {
        let mut parser = SseParser::default();
        let messages = parser.push(b"data:one\ndata: two\n\n");
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].event, "message");
        assert_eq!(messages[0].data, "one\ntwo");
    }
}

//! The checked-in `openapi.yaml` is what the code describes, and what the
//! server serves.

use serde_json::{Value, json};

use crate::helpers::spawn_app;

#[test]
fn the_checked_in_openapi_yaml_matches_the_code() {
    let generated = spool::http::openapi_document();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).expect("openapi.yaml written");
    }
    let checked_in = std::fs::read_to_string(path).expect("openapi.yaml exists");
    assert!(
        checked_in == generated,
        "openapi.yaml is stale: run `UPDATE_OPENAPI=1 cargo test --test api openapi` \
         (or `cargo run -- openapi > openapi.yaml`) and commit it"
    );
}

#[tokio::test]
async fn the_server_serves_the_checked_in_document() {
    let app = spawn_app().await;
    let response = app.get("/openapi.yaml").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/yaml");
    let served = response.text().await.unwrap();
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    assert_eq!(served, checked_in);
    assert!(served.starts_with("openapi: 3.1"));
}

#[tokio::test]
async fn the_document_is_served_as_text_to_a_client_that_asks_for_text() {
    let app = spawn_app().await;
    let response = reqwest::Client::new()
        .get(app.url("/openapi.yaml"))
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert!(response.text().await.unwrap().starts_with("openapi: 3.1"));
}

/// The document as JSON, for walking it.
fn document() -> Value {
    serde_json::to_value(spool::http::openapi()).expect("the document as JSON")
}

/// Each operation of the document: (method, path, operation).
fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            found.push((method.clone(), path.clone(), operation.clone()));
        }
    }
    found
}

/// A validator for the component schema `name`, resolving `$ref`s against
/// the whole document.
fn validator_for(document: &Value, reference: &str) -> jsonschema::Validator {
    let mut root = document.clone();
    root["$ref"] = json!(reference);
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&root)
        .unwrap_or_else(|error| panic!("{reference} compiles: {error}"))
}

#[test]
fn every_schema_has_an_example_that_its_schema_accepts() {
    let document = document();
    let schemas = document["components"]["schemas"].as_object().unwrap();
    assert!(schemas.len() > 30, "{}", schemas.len());
    for (name, schema) in schemas {
        let reference = format!("#/components/schemas/{name}");
        let examples = schema["examples"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no examples"));
        assert!(!examples.is_empty(), "{name}");
        let validator = validator_for(&document, &reference);
        for example in examples {
            let errors: Vec<String> = validator
                .iter_errors(example)
                .map(|error| format!("{} at {}", error, error.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{name}'s example is refused: {errors:?}");
        }
    }
}

#[test]
fn every_operation_has_an_example_its_schema_accepts() {
    let document = document();
    for (method, path, operation) in operations(&document) {
        let mut examples = Vec::new();
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            if parameter["in"] == "path" {
                assert!(
                    parameter.get("example").is_some(),
                    "{method} {path}: path parameter {} has no example",
                    parameter["name"]
                );
            }
        }
        let bodies = operation["requestBody"]["content"].as_object().into_iter();
        let responses = operation["responses"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(status, _)| status.starts_with('2'))
            .filter_map(|(_, response)| response["content"].as_object());
        for content in bodies.chain(responses) {
            for (media_type, media) in content {
                let example = media
                    .get("example")
                    .unwrap_or_else(|| panic!("{method} {path}: {media_type} has no example"));
                examples.push((media_type.clone(), media["schema"].clone(), example.clone()));
            }
        }
        let has_path_example = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|parameter| parameter.get("example").is_some());
        assert!(
            !examples.is_empty() || has_path_example,
            "{method} {path} has no example"
        );
        for (media_type, schema, example) in examples {
            let validator = match schema["$ref"].as_str() {
                Some(reference) => validator_for(&document, reference),
                None => jsonschema::validator_for(&schema).unwrap(),
            };
            assert!(
                validator.is_valid(&example),
                "{method} {path} {media_type}: the example does not fit its schema"
            );
        }
    }
}

#[test]
fn fields_every_answer_carries_are_required_so_clients_need_not_check_for_absence() {
    let document = document();
    let job = &document["components"]["schemas"]["Job"];
    let required: Vec<&str> = job["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    for field in [
        "batch_id",
        "key",
        "error",
        "finished_at",
        "position",
        "progress",
        "webhook",
        "result",
    ] {
        assert!(required.contains(&field), "Job.{field} is not required");
    }
    // Nullable where it can be null, so a client types it `X | None`.
    assert_eq!(
        job["properties"]["finished_at"]["type"],
        json!(["string", "null"])
    );
    // Request bodies keep their optional fields optional.
    let spec_required = &document["components"]["schemas"]["JobSpec"]["required"];
    assert_eq!(spec_required, &json!(["kind"]));
}

#[test]
fn each_creating_operation_links_to_the_reads_of_what_it_created() {
    let document = document();
    let all = operations(&document);
    let find = |id: &str| {
        all.iter()
            .find(|(_, _, operation)| operation["operationId"] == id)
            .unwrap_or_else(|| panic!("no operation {id}"))
    };
    for (creator, status, expected) in [
        (
            "create_job",
            "202",
            vec!["get_job", "cancel_job", "stream_events"],
        ),
        (
            "create_batch",
            "202",
            vec!["get_batch", "batch_results", "cancel_batch", "list_jobs"],
        ),
        ("create_key", "201", vec!["revoke_key"]),
        ("put_queue", "201", vec!["get_queue"]),
    ] {
        let links = find(creator).2["responses"][status]["links"]
            .as_object()
            .unwrap_or_else(|| panic!("{creator} {status} has no links"))
            .clone();
        let targets: Vec<&str> = links
            .values()
            .map(|link| link["operationId"].as_str().unwrap())
            .collect();
        for target in expected {
            assert!(
                targets.contains(&target),
                "{creator} does not link {target}"
            );
        }
        // Every link names a real operation and one of its parameters.
        for (name, link) in &links {
            let (_, _, target) = find(link["operationId"].as_str().unwrap());
            for parameter in link["parameters"].as_object().unwrap().keys() {
                let known = target["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == parameter.as_str());
                assert!(known, "{creator}'s link {name}: no parameter {parameter}");
            }
        }
    }
}

#[test]
fn the_event_stream_and_the_document_are_strings_to_a_generated_client() {
    let document = document();
    let stream = &document["paths"]["/v1/events"]["get"]["responses"]["200"]["content"];
    assert_eq!(stream["text/event-stream"]["schema"]["type"], "string");
    let description = stream["text/event-stream"]["schema"]["description"]
        .as_str()
        .unwrap();
    assert!(
        description.contains("#/components/schemas/Event"),
        "{description}"
    );
    assert!(document["components"]["schemas"]["Event"].is_object());
    let yaml = &document["paths"]["/openapi.yaml"]["get"]["responses"]["200"]["content"];
    assert_eq!(yaml["text/plain"]["schema"]["type"], "string");
}

#[tokio::test]
async fn jobs_are_filtered_by_repeated_metadata_labels_as_a_generated_client_sends_them() {
    let app = spawn_app().await;
    for (user, report) in [("1", "a"), ("1", "b"), ("2", "a")] {
        app.submit(json!({"kind": "noop", "metadata": {"user": user, "report": report}}))
            .await;
    }
    let page: Value = app
        .get("/v1/jobs?metadata=user%3D1&metadata=report%3Da")
        .await
        .json()
        .await
        .unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(items[0]["metadata"], json!({"user": "1", "report": "a"}));

    let refused = app.get("/v1/jobs?metadata=user").await;
    assert_eq!(refused.status(), 422);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["errors"][0]["parameter"], "metadata", "{problem}");
}

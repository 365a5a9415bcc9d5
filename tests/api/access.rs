//! API keys and roles: the authorization matrix, driven from the OpenAPI
//! document, and tenants kept apart on every operation that takes an id.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use spool::config::{ApiKeysSetting, Config};

use crate::helpers::{PgSchema, TestApp, spawn_app_with};

pub const ADMIN: &str = "admin-secret-for-the-tests";
pub const WRITE_A: &str = "acme-write-secret-for-tests";
pub const READ_A: &str = "acme-read-secret-for-tests";
pub const WRITE_B: &str = "bolt-write-secret-for-tests";

/// Keys of three tenants: `ops` (admin), `acme` (write, read), `bolt` (write).
pub fn with_keys(config: &mut Config) {
    let keys = spool::access::parse_api_keys(&format!(
        "ops:admin:{ADMIN},acme:write:{WRITE_A},acme:read:{READ_A},bolt:write:{WRITE_B}"
    ))
    .expect("valid keys");
    config.api_keys = Some(ApiKeysSetting(keys));
}

/// A request with `key` as its bearer token (none for `None`).
pub async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> reqwest::Response {
    let mut request = app.client.request(method, app.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    request
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("request sent")
}

async fn json_of(response: reqwest::Response, expected: u16, what: &str) -> Value {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status.as_u16(), expected, "{what}: {body}");
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// Makes a key through the API and returns (id, secret).
async fn make_key(app: &TestApp, spec: Value) -> (String, String) {
    let key = json_of(
        call(app, Method::POST, "/v1/keys", Some(ADMIN), Some(&spec)).await,
        201,
        "POST /v1/keys",
    )
    .await;
    (
        key["id"].as_str().expect("an id").to_owned(),
        key["secret"].as_str().expect("a secret").to_owned(),
    )
}

/// The objects of tenant `acme` the matrix's paths point at.
struct Objects {
    job: String,
    batch: String,
}

async fn acme_objects(app: &TestApp) -> Objects {
    let job = json_of(
        call(
            app,
            Method::POST,
            "/v1/jobs",
            Some(WRITE_A),
            Some(&json!({"kind": "noop", "delay_ms": 60000})),
        )
        .await,
        202,
        "acme's job",
    )
    .await;
    let batch = json_of(
        call(
            app,
            Method::POST,
            "/v1/batches",
            Some(WRITE_A),
            Some(&json!({"jobs": [{"kind": "noop", "delay_ms": 60000}]})),
        )
        .await,
        202,
        "acme's batch",
    )
    .await;
    Objects {
        job: job["id"].as_str().expect("an id").to_owned(),
        batch: batch["id"].as_str().expect("an id").to_owned(),
    }
}

/// Every operation of the document: (method, path template, role needed
/// or `None` for a public one, tags).
fn operations() -> Vec<(Method, String, Option<String>, Vec<String>)> {
    let document = serde_json::to_value(spool::http::openapi()).expect("the document as JSON");
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let role = operation["security"].as_array().map(|requirements| {
                requirements[0]["bearer"][0]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path}: security without a bearer role"))
                    .to_owned()
            });
            let tags = operation["tags"]
                .as_array()
                .map(|tags| {
                    tags.iter()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            operations.push((method, path.clone(), role, tags));
        }
    }
    operations
}

/// A request for the operation whose own checks pass when access does: an
/// id of `acme`'s, a valid body.
async fn concrete(
    app: &TestApp,
    objects: &Objects,
    method: &Method,
    template: &str,
) -> (String, Option<Value>) {
    let id = if template.starts_with("/v1/jobs/") {
        objects.job.clone()
    } else if template.starts_with("/v1/batches/") {
        objects.batch.clone()
    } else if template.starts_with("/v1/keys/") {
        // Revoking must find a key to revoke, made for this one call.
        make_key(
            app,
            json!({"name": "doomed", "tenant": "acme", "role": "read"}),
        )
        .await
        .0
    } else if template.starts_with("/v1/schedules/") {
        // Deleting must find a schedule to delete: one of acme's, (re)made
        // for this one call.
        let response = call(
            app,
            Method::PUT,
            "/v1/schedules/acme-nightly",
            Some(ADMIN),
            Some(&acme_schedule()),
        )
        .await;
        assert!(response.status().is_success(), "{}", response.status());
        "acme-nightly".to_owned()
    } else {
        String::new()
    };
    if template.starts_with("/v1/limits/") {
        // Made again for each call: a call before may have deleted it.
        let response = call(
            app,
            Method::PUT,
            "/v1/limits/default",
            Some(ADMIN),
            Some(&json!({"rate": 10})),
        )
        .await;
        assert!(response.status().is_success(), "the limit is made");
    }
    let path = template
        .replace("{id}", &id)
        .replace("{name}", "default")
        .replace("{key}", "customer-1")
        .replace("{tenant}", "acme");
    let body = match (method.as_str(), template) {
        ("PUT", "/v1/limits/{name}") => Some(json!({"rate": 10})),
        ("POST", "/v1/jobs") => Some(json!({"kind": "noop"})),
        ("POST", "/v1/batches") => Some(json!({"jobs": [{"kind": "noop"}]})),
        ("POST", "/v1/keys") => Some(json!({"name": "m", "tenant": "acme", "role": "read"})),
        ("PUT", "/v1/schedules/{id}") => Some(acme_schedule()),
        ("PUT", _) => Some(json!({})),
        _ => None,
    };
    (path, body)
}

/// A schedule whose jobs are acme's.
fn acme_schedule() -> Value {
    json!({"every_ms": 3_600_000, "tenant": "acme", "job": {"kind": "noop"}})
}

/// Whether `status` is an answer past access control (the operation ran and
/// may have refused on its own terms: a finished job's retry is a 409).
fn let_in(status: StatusCode) -> bool {
    status.is_success() || status == StatusCode::CONFLICT
}

async fn run_matrix(app: &TestApp) {
    let objects = acme_objects(app).await;
    let (revoked_id, revoked) =
        make_key(app, json!({"name": "r", "tenant": "acme", "role": "admin"})).await;
    let response = call(
        app,
        Method::DELETE,
        &format!("/v1/keys/{revoked_id}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(response.status(), 204);
    let soon =
        spool::domain::Timestamp::from_millis(spool::domain::Timestamp::now().as_millis() + 1_000);
    let (_, expired) = make_key(
        app,
        json!({"name": "e", "tenant": "acme", "role": "admin", "expires_at": soon.to_string()}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let operations = operations();
    assert!(operations.len() >= 19, "the document lists {operations:?}");
    let mut failures = Vec::new();
    for (method, template, role, tags) in &operations {
        if template.starts_with("/v1/") && role.is_none() {
            failures.push(format!(
                "{method} {template}: no role decided in `security`"
            ));
            continue;
        }
        let on_tenant_objects = tags
            .iter()
            .any(|t| ["jobs", "batches", "events", "schedules"].contains(&t.as_str()));
        let takes_id = template.contains("{id}") && on_tenant_objects;
        let needs = role.as_deref();
        let cases: [(&str, Option<&str>, &str); 8] = [
            ("no key", None, ""),
            ("unknown key", Some("spool_acme_not-a-key-at-all-000"), ""),
            ("revoked key", Some(&revoked), ""),
            ("expired key", Some(&expired), ""),
            ("read", Some(READ_A), ""),
            ("write", Some(WRITE_A), ""),
            ("other tenant's write", Some(WRITE_B), ""),
            ("admin", Some(ADMIN), "tenant=acme"),
        ];
        for (who, key, query) in cases {
            let (mut path, body) = concrete(app, &objects, method, template).await;
            if !query.is_empty() && on_tenant_objects {
                path.push(if path.contains('?') { '&' } else { '?' });
                path.push_str(query);
            }
            let status = call(app, method.clone(), &path, key, body.as_ref())
                .await
                .status();
            let expected_ok = match (needs, who) {
                (None, _) => true,
                (Some(_), "no key" | "unknown key" | "revoked key" | "expired key") => false,
                (Some("read"), _) => true,
                (Some("write"), "read") => false,
                (Some("write"), _) => true,
                (Some("admin"), "admin") => true,
                (Some("admin"), _) => false,
                (Some(other), _) => panic!("{method} {template}: unknown role `{other}`"),
            };
            let expected: &[StatusCode] = match (expected_ok, who) {
                (false, "no key" | "unknown key" | "revoked key" | "expired key") => {
                    &[StatusCode::UNAUTHORIZED]
                }
                (false, _) => &[StatusCode::FORBIDDEN],
                (true, "other tenant's write") if takes_id => &[StatusCode::NOT_FOUND],
                // A key reads its own tenant's quotas, not another's.
                (true, "other tenant's write") if template == "/v1/tenants/{tenant}" => {
                    &[StatusCode::FORBIDDEN]
                }
                (true, _) => &[],
            };
            let right = if expected.is_empty() {
                let_in(status)
            } else {
                expected.contains(&status)
            };
            if !right {
                failures.push(format!(
                    "{method} {template} with {who}: {status}, expected {}",
                    if expected.is_empty() {
                        "to be let in".to_owned()
                    } else {
                        format!("{expected:?}")
                    }
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn every_operation_answers_each_kind_of_caller_as_its_documented_role_says() {
    let app = spawn_app_with(with_keys).await;
    run_matrix(&app).await;
}

#[tokio::test]
async fn every_operation_answers_each_kind_of_caller_as_its_documented_role_says_on_postgres() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let app = spawn_app_with(|config| {
        with_keys(config);
        config.database_url = schema.url.clone();
    })
    .await;
    run_matrix(&app).await;
}

#[tokio::test]
async fn a_missing_key_is_answered_401_with_a_bearer_challenge_and_no_echo_of_the_key() {
    let app = spawn_app_with(with_keys).await;
    let response = call(&app, Method::GET, "/v1/jobs", None, None).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "unauthorized");
    let guess = "spool_acme_guessed-secret-value-123";
    let response = call(&app, Method::GET, "/v1/jobs", Some(guess), None).await;
    assert_eq!(response.status(), 401);
    let body = response.text().await.unwrap();
    assert!(!body.contains(guess), "the error echoes the key: {body}");
    let response = app
        .client
        .get(app.url("/v1/jobs"))
        .header("authorization", format!("Basic {WRITE_A}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn health_and_the_api_description_need_no_key() {
    let app = spawn_app_with(with_keys).await;
    for path in ["/healthz", "/readyz", "/openapi.yaml"] {
        let response = call(&app, Method::GET, path, None, None).await;
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn a_made_key_shows_its_secret_once_and_works_at_once() {
    let app = spawn_app_with(with_keys).await;
    let (id, secret) = make_key(
        &app,
        json!({"name": "ci", "tenant": "zed", "role": "write"}),
    )
    .await;
    assert!(secret.starts_with("spool_zed_"), "{secret}");
    let job = json_of(
        call(
            &app,
            Method::POST,
            "/v1/jobs",
            Some(&secret),
            Some(&json!({"kind": "noop"})),
        )
        .await,
        202,
        "a job with the new key",
    )
    .await;
    assert!(job["id"].is_string());
    let keys = call(&app, Method::GET, "/v1/keys", Some(ADMIN), None)
        .await
        .text()
        .await
        .unwrap();
    assert!(!keys.contains(&secret), "the list shows a secret");
    assert!(!keys.contains(ADMIN), "the list shows a declared secret");
    let keys: Value = serde_json::from_str(&keys).unwrap();
    let made = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["id"] == id.as_str())
        .expect("the made key is listed");
    assert_eq!(made["tenant"], "zed");
    assert_eq!(made["role"], "write");
    assert_eq!(made["source"], "api");
    assert!(made["last_used_at"].is_string(), "{made}");
    assert!(made.get("secret").is_none());
    let declared = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["tenant"] == "ops")
        .expect("the declared admin key is listed");
    assert_eq!(declared["source"], "config");
    // A declared key is removed from the configuration, not through the API.
    let response = call(
        &app,
        Method::DELETE,
        &format!("/v1/keys/{}", declared["id"].as_str().unwrap()),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(response.status(), 409);
    let response = call(
        &app,
        Method::DELETE,
        &format!("/v1/keys/{id}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(response.status(), 204);
    let response = call(&app, Method::GET, "/v1/jobs", Some(&secret), None).await;
    assert_eq!(response.status(), 401);
    let response = call(
        &app,
        Method::DELETE,
        &format!("/v1/keys/{id}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn a_key_spec_is_checked_field_by_field() {
    let app = spawn_app_with(with_keys).await;
    let response = call(
        &app,
        Method::POST,
        "/v1/keys",
        Some(ADMIN),
        Some(&json!({"name": "", "tenant": "no spaces", "role": "read",
                     "expires_at": "2001-01-01T00:00:00Z"})),
    )
    .await;
    let problem = json_of(response, 422, "a bad key spec").await;
    let pointers: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["pointer"].as_str())
        .collect();
    assert_eq!(pointers, ["/name", "/tenant", "/expires_at"]);
    let response = call(
        &app,
        Method::POST,
        "/v1/keys",
        Some(ADMIN),
        Some(&json!({"name": "x", "tenant": "acme", "role": "owner"})),
    )
    .await;
    assert_eq!(response.status(), 422);
}

#[tokio::test]
async fn only_an_admin_may_name_another_tenant() {
    let app = spawn_app_with(with_keys).await;
    let objects = acme_objects(&app).await;
    let path = format!("/v1/jobs/{}?tenant=acme", objects.job);
    assert_eq!(
        call(&app, Method::GET, &path, Some(WRITE_B), None)
            .await
            .status(),
        403
    );
    assert_eq!(
        call(&app, Method::GET, &path, Some(READ_A), None)
            .await
            .status(),
        200
    );
    assert_eq!(
        call(&app, Method::GET, &path, Some(ADMIN), None)
            .await
            .status(),
        200
    );
    // Without ?tenant= an admin acts in its own tenant, where the job is not.
    let own = format!("/v1/jobs/{}", objects.job);
    assert_eq!(
        call(&app, Method::GET, &own, Some(ADMIN), None)
            .await
            .status(),
        404
    );
    let bad = format!("/v1/jobs/{}?tenant=a%20b", objects.job);
    assert_eq!(
        call(&app, Method::GET, &bad, Some(ADMIN), None)
            .await
            .status(),
        422
    );
}

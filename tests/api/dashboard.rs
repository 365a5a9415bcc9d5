//! The dashboard: its page and files served from the binary without a key,
//! and `/v1/whoami`, which tells it what the key may do.

use reqwest::Method;
use serde_json::Value;

use crate::access::{ADMIN, READ_A, WRITE_A, call, with_keys};
use crate::helpers::{spawn_app, spawn_app_with};

const ASSETS: [(&str, &str); 8] = [
    ("style.css", "text/css; charset=utf-8"),
    ("app.js", "text/javascript; charset=utf-8"),
    ("api.js", "text/javascript; charset=utf-8"),
    ("view.js", "text/javascript; charset=utf-8"),
    ("queues.js", "text/javascript; charset=utf-8"),
    ("jobs.js", "text/javascript; charset=utf-8"),
    ("batches.js", "text/javascript; charset=utf-8"),
    ("favicon.svg", "image/svg+xml"),
];

#[tokio::test]
async fn the_page_is_served_without_a_key_with_a_strict_content_security_policy() {
    let app = spawn_app_with(with_keys).await;
    let response = call(&app, Method::GET, "/", None, None).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'self'"), "{policy}");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-cache");
    let page = response.text().await.unwrap();
    assert!(page.contains(r#"<script type="module" src="/dashboard/app.js">"#));
    // No inline script: every <script> names its source.
    assert_eq!(
        page.matches("<script").count(),
        page.matches("<script type=\"module\" src=").count()
    );
}

#[tokio::test]
async fn every_dashboard_file_is_served_with_its_content_type() {
    let app = spawn_app_with(with_keys).await;
    for (name, content_type) in ASSETS {
        let response = call(&app, Method::GET, &format!("/dashboard/{name}"), None, None).await;
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(response.headers()["content-type"], content_type, "{name}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert!(response.headers().contains_key("etag"), "{name}");
        let served = response.text().await.unwrap();
        let source =
            std::fs::read_to_string(format!("{}/dashboard/{name}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        assert_eq!(served, source, "{name} is served as written");
    }
}

#[tokio::test]
async fn a_file_asked_for_again_with_its_etag_is_not_sent_again() {
    let app = spawn_app().await;
    let response = app.get("/dashboard/app.js").await;
    let etag = response.headers()["etag"].clone();
    let again = app
        .client
        .get(app.url("/dashboard/app.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
}

#[tokio::test]
async fn an_unknown_dashboard_file_is_a_404_problem() {
    let app = spawn_app().await;
    for path in [
        "/dashboard/nope.js",
        "/dashboard/..%2FCargo.toml",
        "/dashboard/",
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "not_found", "{path}");
    }
}

#[test]
fn the_dashboard_is_not_part_of_the_api_description() {
    let document = serde_json::to_value(spool::http::openapi()).unwrap();
    let paths = document["paths"].as_object().unwrap();
    assert!(!paths.contains_key("/"));
    assert!(paths.keys().all(|path| !path.starts_with("/dashboard")));
    assert!(paths.contains_key("/v1/whoami"));
}

#[tokio::test]
async fn whoami_answers_the_tenant_and_role_of_each_key() {
    let app = spawn_app_with(with_keys).await;
    for (key, tenant, role) in [
        (ADMIN, "ops", "admin"),
        (WRITE_A, "acme", "write"),
        (READ_A, "acme", "read"),
    ] {
        let response = call(&app, Method::GET, "/v1/whoami", Some(key), None).await;
        assert_eq!(response.status(), 200, "{role}");
        let caller: Value = response.json().await.unwrap();
        assert_eq!(caller["tenant"], tenant);
        assert_eq!(caller["role"], role);
    }
    // An admin acting in another tenant is told so.
    let response = call(
        &app,
        Method::GET,
        "/v1/whoami?tenant=acme",
        Some(ADMIN),
        None,
    )
    .await;
    let caller: Value = response.json().await.unwrap();
    assert_eq!(caller["tenant"], "acme");
    assert_eq!(caller["role"], "admin");
}

#[tokio::test]
async fn whoami_without_a_key_is_refused_when_the_service_has_keys() {
    let app = spawn_app_with(with_keys).await;
    let response = call(&app, Method::GET, "/v1/whoami", None, None).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn whoami_in_open_mode_is_the_admin_of_the_default_tenant() {
    let app = spawn_app().await;
    let caller: Value = app.get("/v1/whoami").await.json().await.unwrap();
    assert_eq!(caller["tenant"], "default");
    assert_eq!(caller["role"], "admin");
}

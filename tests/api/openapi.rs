//! The checked-in `openapi.yaml` is what the code describes, and what the
//! server serves.

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

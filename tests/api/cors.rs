//! Browsers calling the API from other origins: off by default, allowed
//! for the origins `SPOOL_CORS_ORIGINS` names.

use reqwest::Method;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

const PAGE: &str = "https://app.example.com";

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, app.url("/v1/jobs"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, idempotency-key",
        )
        .send()
        .await
        .unwrap()
}

async fn get_from(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .get(app.url("/v1/queues"))
        .header("origin", origin)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn without_cors_origins_no_page_of_another_origin_is_let_in() {
    let app = spawn_app().await;
    let response = get_from(&app, PAGE).await;
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let response = preflight(&app, PAGE).await;
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "{:?}",
        response.headers()
    );
}

#[tokio::test]
async fn a_named_origin_gets_its_preflight_answered_without_a_key_and_its_responses_marked() {
    let app = spawn_app_with(|config| {
        config.cors_origins = Some(format!("{PAGE}, http://localhost:3000"));
        crate::access::with_keys(config);
    })
    .await;
    let response = preflight(&app, PAGE).await;
    assert!(response.status().is_success(), "{}", response.status());
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], PAGE);
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in ["authorization", "content-type", "idempotency-key"] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );

    // The key is still needed for the call itself; the refusal is readable.
    let response = get_from(&app, PAGE).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["access-control-allow-origin"], PAGE);
    let response = app
        .client
        .get(app.url("/v1/queues"))
        .header("origin", PAGE)
        .bearer_auth(crate::access::ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], PAGE);
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("location") && exposed.contains("retry-after"),
        "{exposed}"
    );

    let other = get_from(&app, "https://evil.example").await;
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

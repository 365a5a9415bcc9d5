//! Cross-origin calls from browsers (`SPOOL_CORS_ORIGINS`): off unless
//! origins are named, since a key in a browser is the page's to guard.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The origins allowed to call the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*`: any page (keys still decide what it may do).
    Any,
    /// Exact origins, `scheme://host[:port]`.
    List(Vec<HeaderValue>),
}

impl CorsOrigins {
    /// `*`, or comma-separated origins; an empty setting means none.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if text == "*" {
            return Ok(Some(Self::Any));
        }
        let mut origins = Vec::new();
        for origin in text.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let url = url::Url::parse(origin)
                .map_err(|error| format!("`{origin}` is not an origin: {error}"))?;
            let exact = url.origin().ascii_serialization();
            if !matches!(url.scheme(), "http" | "https") || exact != origin.trim_end_matches('/') {
                return Err(format!(
                    "`{origin}` is not an origin; write scheme://host[:port], e.g. https://app.example.com"
                ));
            }
            let value = HeaderValue::from_str(&exact)
                .map_err(|_| format!("`{origin}` cannot be sent in a header"))?;
            origins.push(value);
        }
        Ok(Some(Self::List(origins)))
    }
}

/// The layer answering preflights and marking responses for `origins`.
/// Requests carry keys in `Authorization`, never cookies: no credentials
/// mode, so `*` stays usable.
pub fn layer(origins: &CorsOrigins) -> CorsLayer {
    let allow = match origins {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.clone()),
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("tracestate"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("ratelimit"),
            HeaderName::from_static("ratelimit-policy"),
            HeaderName::from_static("idempotent-replayed"),
        ])
        .max_age(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_parsed_exactly_and_anything_else_is_refused() {
        assert_eq!(CorsOrigins::parse(""), Ok(None));
        assert_eq!(CorsOrigins::parse("*"), Ok(Some(CorsOrigins::Any)));
        assert_eq!(
            CorsOrigins::parse("https://app.example.com, http://localhost:3000"),
            Ok(Some(CorsOrigins::List(vec![
                HeaderValue::from_static("https://app.example.com"),
                HeaderValue::from_static("http://localhost:3000"),
            ])))
        );
        for bad in [
            "app.example.com",
            "https://app.example.com/path",
            "ftp://x.example",
        ] {
            assert!(CorsOrigins::parse(bad).is_err(), "{bad}");
        }
    }
}

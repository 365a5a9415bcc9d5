//! Limits every request meets before a handler runs: Spool's own URI and
//! header-section limits, the request-body deadline and the request timeout,
//! each answered with a problem.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};
use tower_http::timeout::DeadlineBody;

use super::error::ApiError;

/// Longest request target (path and query) Spool accepts, in bytes.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest header section Spool accepts, in bytes: each field's name and
/// value plus the 4 bytes of `": "` and CRLF.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Most header fields Spool accepts.
pub const MAX_HEADER_FIELDS: usize = 100;

/// The body deadline a request got, for the message of its 408.
#[derive(Clone, Copy, Debug)]
pub struct BodyReadTimeout(pub Duration);

/// See the module documentation.
#[derive(Clone, Copy, Debug)]
pub struct GuardsLayer {
    pub request_timeout: Duration,
    pub body_read_timeout: Duration,
}

impl<S> Layer<S> for GuardsLayer {
    type Service = Guards<S>;

    fn layer(&self, inner: S) -> Guards<S> {
        Guards {
            inner,
            settings: *self,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Guards<S> {
    inner: S,
    settings: GuardsLayer,
}

impl<S> Service<Request> for Guards<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        if let Some(refusal) = head_over_limits(&request) {
            return GuardFuture::Refused(Some(refusal.into_response()));
        }
        let body_read_timeout = self.settings.body_read_timeout;
        // A deadline for the whole body, not for each read: a body that
        // trickles a byte at a time must not hold its connection either.
        // Bodies known to be empty (most GETs) need no timer.
        if !request.body().is_end_stream() {
            request = request.map(|body| Body::new(DeadlineBody::new(body_read_timeout, body)));
            request
                .extensions_mut()
                .insert(BodyReadTimeout(body_read_timeout));
        }
        GuardFuture::Running {
            inner: self.inner.call(request),
            deadline: Instant::now() + self.settings.request_timeout,
            timer: None,
            limit: self.settings.request_timeout,
        }
    }
}

/// The answer to a request whose head exceeds Spool's limits. These sit
/// below hyper's own (see `serve`), which answer without a body.
fn head_over_limits(request: &Request) -> Option<ApiError> {
    let uri = request.uri();
    let target = uri.scheme_str().map_or(0, |scheme| scheme.len() + 3)
        + uri
            .authority()
            .map_or(0, |authority| authority.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request URI is {target} bytes; at most {MAX_URI_BYTES} are accepted"),
        ));
    }
    let headers = request.headers();
    if headers.len() > MAX_HEADER_FIELDS {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request has {} header fields; at most {MAX_HEADER_FIELDS} are accepted",
                headers.len()
            ),
        ));
    }
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request's header fields are {bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"
            ),
        ));
    }
    None
}

pub enum GuardFuture<F> {
    Refused(Option<Response>),
    Running {
        inner: F,
        deadline: Instant,
        /// Made on the first poll that has to wait: a request answered at
        /// once costs no timer.
        timer: Option<Pin<Box<Sleep>>>,
        limit: Duration,
    },
}

impl<F> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            GuardFuture::Refused(response) => Poll::Ready(Ok(response.take().unwrap_or_default())),
            GuardFuture::Running {
                inner,
                deadline,
                timer,
                limit,
            } => {
                if let Poll::Ready(answer) = Pin::new(inner).poll(cx) {
                    return Poll::Ready(answer);
                }
                let timer =
                    timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(*deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(ApiError::request_timeout(*limit).into_response()));
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;
    use crate::http::ServerErrorCause;

    #[tokio::test(start_paused = true)]
    async fn a_request_over_the_request_timeout_gets_503_problem_with_its_cause_for_the_log() {
        let never_answers =
            tower::service_fn(|_: Request| std::future::pending::<Result<Response, Infallible>>());
        let service = GuardsLayer {
            request_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(30),
        }
        .layer(never_answers);
        let Ok(response) = service.oneshot(Request::new(Body::empty())).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert!(response.extensions().get::<ServerErrorCause>().is_some());
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["code"], "request_timeout");
    }
}

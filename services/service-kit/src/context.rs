//! The request's correlation headers, kept for the duration of its handler so that calls the
//! service makes to its peers carry the same `x-request-id` and `traceparent`.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue};

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Correlation headers of the request being handled.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    pub request_id: Option<HeaderValue>,
    pub traceparent: Option<HeaderValue>,
}

tokio::task_local! {
    static CURRENT: RequestContext;
}

impl RequestContext {
    fn from_headers(headers: &HeaderMap) -> Self {
        RequestContext {
            request_id: headers.get(&REQUEST_ID).cloned(),
            traceparent: headers.get(&TRACEPARENT).cloned(),
        }
    }

    /// The context of the request this task is handling (empty outside a request).
    pub fn current() -> Self {
        CURRENT.try_with(Clone::clone).unwrap_or_default()
    }

    /// Copies the correlation headers onto an outgoing request's headers.
    pub fn propagate_into(&self, headers: &mut HeaderMap) {
        if let Some(id) = &self.request_id {
            headers.insert(REQUEST_ID.clone(), id.clone());
        }
        if let Some(parent) = &self.traceparent {
            headers.insert(TRACEPARENT.clone(), parent.clone());
        }
    }
}

/// Middleware: runs the rest of the stack inside the request's context. It sits inside the
/// request-id layer, so `x-request-id` is always present here.
pub async fn scope(request: Request, next: Next) -> Response {
    let context = RequestContext::from_headers(request.headers());
    CURRENT.scope(context, next.run(request)).await
}

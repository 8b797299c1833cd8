//! `application/problem+json` (RFC 9457) errors: every error a client sees says what was wrong
//! and what to do, with the right status code, and never leaks internals.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use serde_json::{Map, Value};

pub const CONTENT_TYPE: &str = "application/problem+json";

/// An error response body. `type` is a stable, documented URI-ish slug clients can switch on.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Extra members (for example `field`, `product_id`, `order_id`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    #[serde(skip)]
    retry_after_seconds: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("https://msa.dev/problems/{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            extra: Map::new(),
            retry_after_seconds: None,
        }
    }

    /// 400: the request could not be read (malformed JSON, wrong types, bad id syntax).
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed-request", detail)
    }

    /// 404: no such resource.
    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no {what} with id {id}"),
        )
    }

    /// 409: the request conflicts with the current state (duplicate, insufficient stock).
    pub fn conflict(kind: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, kind, detail)
    }

    /// 422: well-formed but semantically invalid; `field` names the offending field.
    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-field", detail).with("field", field)
    }

    /// 503 with `Retry-After`: a dependency is unavailable; the request may be retried.
    pub fn unavailable(detail: impl Into<String>, retry_after_seconds: u64) -> Self {
        let mut problem = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail);
        problem.retry_after_seconds = Some(retry_after_seconds);
        problem
    }

    /// 500: logged with its cause; the client sees only that it was our fault.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to handle this request; it was logged, retry later or report the request id",
        )
    }

    /// Sets (or clears) the `Retry-After` seconds sent with the problem.
    pub fn retry_after(mut self, seconds: Option<u64>) -> Self {
        self.retry_after_seconds = seconds;
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.detail)
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let retry_after = self.retry_after_seconds;
        let mut response = (status, Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload-too-large",
                    "the request body is larger than this service accepts",
                )
            }
            other => Problem::bad_request(format!(
                "the JSON body cannot be read: {}",
                other.body_text()
            )),
        }
    }
}

impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Self {
        Problem::bad_request(format!("bad path parameter: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for Problem {
    fn from(rejection: QueryRejection) -> Self {
        Problem::bad_request(format!("bad query string: {}", rejection.body_text()))
    }
}

impl From<sqlx::Error> for Problem {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::warn!(%error, "database unavailable");
                Problem::unavailable("the database is unavailable; retry shortly", 1)
            }
            _ => Problem::internal(&error),
        }
    }
}

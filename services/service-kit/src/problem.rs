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

    /// 408: the request body stalled; the connection closes after this answer.
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "the request body stopped arriving; send the whole request at once",
        )
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
        if status == StatusCode::UNAUTHORIZED && !headers.contains_key(header::WWW_AUTHENTICATE) {
            // RFC 9110 §15.5.2: a 401 names the scheme that would work.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"msa\""),
            );
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come; the connection cannot be reused.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
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
            JsonRejection::BytesRejection(e) if crate::connections::body_timed_out(&e) => {
                Problem::request_timeout()
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload-too-large",
                    "the request body is larger than this service accepts",
                )
            }
            other => Problem::bad_request(format!(
                "the JSON body cannot be read: {}",
                in_json_terms(&other.body_text())
            )),
        }
    }
}

impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Self {
        Problem::bad_request(format!(
            "bad path parameter: {}",
            in_json_terms(&rejection.body_text())
        ))
    }
}

impl From<QueryRejection> for Problem {
    fn from(rejection: QueryRejection) -> Self {
        Problem::bad_request(format!(
            "bad query string: {}",
            in_json_terms(&rejection.body_text())
        ))
    }
}

/// A deserializer's message in the words of the JSON the client wrote, not of our Rust types:
/// `expected i64` → `expected an integer`, `expected struct CreateOrder` → `expected an object`,
/// `sequence` → `array`; axum's prefixes go too. The client learns which field and what kind of
/// value, not how the server is built.
fn in_json_terms(message: &str) -> String {
    let message = [
        "Failed to deserialize the JSON body into the target type: ",
        "Failed to parse the request body as JSON: ",
        "Failed to deserialize query string: ",
        "Invalid URL: ",
    ]
    .iter()
    .fold(message, |m, prefix| m.strip_prefix(prefix).unwrap_or(m));
    let mut words: Vec<String> = Vec::new();
    let mut tokens = message.split(' ').peekable();
    while let Some(token) = tokens.next() {
        let (core, tail) = token.split_at(
            token
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '`'))
                .unwrap_or(token.len()),
        );
        let plain = match core.trim_matches('`') {
            "struct" | "enum" if tokens.peek().is_some() => {
                let name = tokens.next().unwrap_or_default();
                let rest = name.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
                words.push(format!(
                    "{}{rest}",
                    if core == "struct" {
                        "an object"
                    } else {
                        "one of the allowed values"
                    }
                ));
                continue;
            }
            "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64"
            | "u128" | "usize" => "an integer",
            "f32" | "f64" => "a number",
            "sequence" => "array",
            "map" => "object",
            "floating" if tokens.peek() == Some(&"point") => {
                tokens.next();
                "number"
            }
            _ => {
                words.push(token.to_owned());
                continue;
            }
        };
        let plain = match (core.starts_with('`'), plain) {
            (true, p) => format!("`{p}`"),
            (false, p) => p.to_owned(),
        };
        words.push(format!("{plain}{tail}"));
    }
    words
        .join(" ")
        .replace("an a ", "a ")
        .replace("a an ", "an ")
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

#[cfg(test)]
mod tests {
    use super::in_json_terms;

    #[test]
    fn deserializer_messages_name_json_not_rust() {
        for (raw, plain) in [
            (
                "Failed to deserialize the JSON body into the target type: stock: invalid type: string \"ten\", expected i64 at line 1 column 40",
                "stock: invalid type: string \"ten\", expected an integer at line 1 column 40",
            ),
            (
                "Failed to deserialize the JSON body into the target type: invalid type: sequence, expected struct CreateOrder at line 1 column 1",
                "invalid type: array, expected an object at line 1 column 1",
            ),
            (
                "Failed to deserialize the JSON body into the target type: quantity: invalid type: floating point `1.5`, expected u64",
                "quantity: invalid type: number `1.5`, expected an integer",
            ),
            (
                "Failed to deserialize the JSON body into the target type: unknown field `total`, expected `user_id` or `items`",
                "unknown field `total`, expected `user_id` or `items`",
            ),
            (
                "Failed to deserialize query string: limit: invalid digit found in string",
                "limit: invalid digit found in string",
            ),
            (
                "name: invalid type: map, expected a string",
                "name: invalid type: object, expected a string",
            ),
        ] {
            assert_eq!(in_json_terms(raw), plain);
        }
    }
}

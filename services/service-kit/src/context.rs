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
    /// The caller's `Authorization`, for a call made on the caller's behalf (marked sensitive,
    /// so it never shows in debug output). Not propagated by [`RequestContext::propagate_into`].
    pub authorization: Option<HeaderValue>,
}

tokio::task_local! {
    static CURRENT: RequestContext;
}

impl RequestContext {
    fn from_headers(headers: &HeaderMap) -> Self {
        RequestContext {
            request_id: headers.get(&REQUEST_ID).cloned(),
            traceparent: headers.get(&TRACEPARENT).cloned(),
            authorization: headers.get(http::header::AUTHORIZATION).map(|value| {
                let mut value = value.clone();
                value.set_sensitive(true);
                value
            }),
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

/// Longest `x-request-id` kept from a caller.
pub const MAX_REQUEST_ID: usize = 64;

/// Whether a caller's `x-request-id` may be kept: 1 to [`MAX_REQUEST_ID`] visible ASCII
/// characters (no spaces or control characters), so it cannot grow logs or forge log fields.
/// Anything else is replaced by a fresh id.
pub fn acceptable_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=MAX_REQUEST_ID).contains(&bytes.len()) && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Whether a `traceparent` is well formed (W3C Trace Context: `00-<32 hex>-<16 hex>-<2 hex>`,
/// lowercase, ids not all zero). A malformed one is dropped, which starts a new trace, as the
/// specification asks.
pub fn acceptable_traceparent(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    let hex = |range: std::ops::Range<usize>| {
        bytes[range.clone()]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            && bytes[range].iter().any(|b| *b != b'0')
    };
    bytes.len() == 55
        && bytes[2] == b'-'
        && bytes[35] == b'-'
        && bytes[52] == b'-'
        && &bytes[..2] == b"00"
        && hex(3..35)
        && hex(36..52)
        && bytes[53..]
            .iter()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Removes correlation headers a caller got wrong, so the request-id layer generates a new id
/// and no malformed trace context is passed on.
pub fn drop_unacceptable(headers: &mut HeaderMap) {
    // Usually neither header is there, or once: one pass over the few headers present is
    // cheaper than four hashed lookups.
    let (mut ids, mut parents) = (0u32, 0u32);
    let (mut bad_id, mut bad_parent) = (false, false);
    for (name, value) in headers.iter() {
        if *name == REQUEST_ID {
            ids += 1;
            bad_id |= !acceptable_request_id(value);
        } else if *name == TRACEPARENT {
            parents += 1;
            bad_parent |= !acceptable_traceparent(value);
        }
    }
    if bad_id || ids > 1 {
        headers.remove(&REQUEST_ID);
    }
    if bad_parent || parents > 1 {
        headers.remove(&TRACEPARENT);
    }
}

/// Middleware: runs the rest of the stack inside the request's context. It sits inside the
/// request-id layer, so `x-request-id` is always present here.
pub async fn scope(request: Request, next: Next) -> Response {
    let context = RequestContext::from_headers(request.headers());
    CURRENT.scope(context, next.run(request)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_short_visible_request_ids_are_kept() {
        let id = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(acceptable_request_id(&id("req-42")));
        assert!(acceptable_request_id(&id(&"a".repeat(64))));
        for bad in ["", "a b", "x\tforged", &"a".repeat(65)] {
            assert!(!acceptable_request_id(&id(bad)), "{bad:?}");
        }
        let high = HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap();
        assert!(!acceptable_request_id(&high));
    }

    #[test]
    fn traceparents_follow_the_w3c_shape() {
        let parent = |s: &str| HeaderValue::from_str(s).unwrap();
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(acceptable_traceparent(&parent(good)));
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert!(!acceptable_traceparent(&parent(bad)), "{bad}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(&REQUEST_ID, parent("has space"));
        headers.insert(&TRACEPARENT, parent("garbage"));
        drop_unacceptable(&mut headers);
        assert!(headers.is_empty());

        let mut headers = HeaderMap::new();
        headers.insert(&REQUEST_ID, parent("req-1"));
        headers.insert(&TRACEPARENT, parent(good));
        headers.insert("x-other", parent("kept"));
        drop_unacceptable(&mut headers);
        assert_eq!(headers.len(), 3, "good ones are kept: {headers:?}");
        headers.append(&REQUEST_ID, parent("req-2"));
        headers.append(&TRACEPARENT, parent(good));
        drop_unacceptable(&mut headers);
        assert_eq!(headers.len(), 1, "repeated ones are dropped: {headers:?}");
    }

    proptest! {
        #[test]
        fn whatever_a_client_sends_a_kept_id_is_short_and_visible(raw in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(value) = HeaderValue::from_bytes(&raw) {
                let mut headers = HeaderMap::new();
                headers.insert(&REQUEST_ID, value);
                drop_unacceptable(&mut headers);
                if let Some(kept) = headers.get(&REQUEST_ID) {
                    prop_assert!(kept.len() <= MAX_REQUEST_ID);
                    prop_assert!(kept.to_str().unwrap().chars().all(|c| c.is_ascii_graphic()));
                }
            }
        }
    }
}

//! What a proxy changes in the headers it passes on (RFC 9110 §7.6): hop-by-hop headers stay
//! on their hop, and the upstream learns who the client was through `X-Forwarded-*`.
//! `x-request-id` (set by the request-id layer) and `traceparent` pass through untouched.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, never forwarded (plus any the `Connection` header
/// names).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// Whether `name` is one of [`HOP_BY_HOP`]: compared as text, which mostly stops at the length.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Removes hop-by-hop headers, including those listed in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Usually there are none: one pass over the few headers present is cheaper than a hashed
    // removal of each name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The address a request came from, with its text for `X-Forwarded-For` written once (per
/// connection, not per request).
#[derive(Clone, Debug)]
pub struct ClientAddr {
    pub ip: IpAddr,
    header: HeaderValue,
}

impl ClientAddr {
    pub fn new(ip: IpAddr) -> Self {
        let header =
            HeaderValue::try_from(ip.to_string()).expect("an IP address is a valid header value");
        ClientAddr { ip, header }
    }
}

/// Prepares a request's headers for the upstream: hop-by-hop headers removed; the client's
/// address appended to `X-Forwarded-For`; `X-Forwarded-Proto` and `X-Forwarded-Host` kept when
/// a proxy in front already set them (it saw the original), else `http` and the `Host` header;
/// `Host` removed so the upstream sees its own address.
pub fn request_headers(headers: &mut HeaderMap, client: &ClientAddr) {
    remove_hop_by_hop(headers);
    // One hashed lookup per name (`entry`), not a lookup and then an insert.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Occupied(mut forwarded_for) => {
            let appended =
                forwarded_for.get().to_str().ok().and_then(|chain| {
                    HeaderValue::try_from(format!("{chain}, {}", client.ip)).ok()
                });
            if let Some(value) = appended {
                forwarded_for.insert(value);
            }
        }
        Entry::Vacant(slot) => {
            slot.insert(client.header.clone());
        }
    }
    headers
        .entry(&X_FORWARDED_PROTO)
        .or_insert_with(|| HeaderValue::from_static("http"));
    if let Some(host) = headers.remove(header::HOST)
        && let Entry::Vacant(slot) = headers.entry(&X_FORWARDED_HOST)
    {
        slot.insert(host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn only_the_listed_names_are_hop_by_hop() {
        for name in [
            "host",
            "x-request-id",
            "content-length",
            "proxy-authenticate",
            "tes",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-request-id", "abc"),
            ("content-type", "application/json"),
        ]);
        remove_hop_by_hop(&mut map);
        let mut left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "traceparent", "x-request-id"]);
    }

    #[test]
    fn forwarded_headers_append_the_client_and_keep_what_a_front_proxy_saw() {
        let client = ClientAddr::new("127.0.0.9".parse().unwrap());
        let mut direct = headers(&[("host", "shop.example:8080")]);
        request_headers(&mut direct, &client);
        assert_eq!(direct["x-forwarded-for"], "127.0.0.9");
        assert_eq!(direct["x-forwarded-proto"], "http");
        assert_eq!(direct["x-forwarded-host"], "shop.example:8080");
        assert!(!direct.contains_key("host"));

        let mut behind = headers(&[
            ("host", "gateway.internal"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example"),
        ]);
        request_headers(&mut behind, &client);
        assert_eq!(behind["x-forwarded-for"], "203.0.113.7, 127.0.0.9");
        assert_eq!(behind["x-forwarded-proto"], "https");
        assert_eq!(behind["x-forwarded-host"], "shop.example");
    }
}

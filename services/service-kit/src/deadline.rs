//! How long the caller will wait for this answer, as the hop before says in `x-msa-timeout-ms`
//! (the shared upstream client sends it on every attempt: the milliseconds that attempt will
//! wait). A service that cannot finish in that time answers what it knows before the caller gives
//! up, instead of working on for a caller that has gone (an inner hop never outlives the outer).
//!
//! Read at the edge: absent means the caller did not say; a value that is not a whole number of
//! milliseconds from 1 to [`MAX_TIMEOUT_MS`] (or is sent twice) is a 400 problem naming the
//! header and the accepted range. The arithmetic is pure and takes the clock as an argument.

use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use http::request::Parts;
use http::{HeaderMap, HeaderName};

use crate::problem::Problem;

/// The header: milliseconds the caller waits for this answer.
pub static TIMEOUT_HEADER: HeaderName = HeaderName::from_static("x-msa-timeout-ms");

/// The longest wait a caller may announce: ten minutes.
pub const MAX_TIMEOUT_MS: u64 = 600_000;

/// What is kept back from the caller's wait for the answer's own trip: a tenth, at least this.
pub const MIN_MARGIN: Duration = Duration::from_millis(100);

/// The caller's deadline for one request: when it arrived and how long the caller waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    pub received: Instant,
    /// `None` when the caller did not say.
    pub wait: Option<Duration>,
}

impl Deadline {
    /// A request received at `received` whose caller waits `wait`.
    pub fn new(received: Instant, wait: Option<Duration>) -> Self {
        Deadline { received, wait }
    }

    /// Reads the deadline from a request's headers, received now.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, Problem> {
        Ok(Deadline::new(Instant::now(), parse(headers)?))
    }

    /// How much longer, at `now`, the service may work before it must answer: the caller's
    /// wait less [`margin`], and never more than `max` (the service's own limit), counted from
    /// when the request arrived. Zero once that time has passed.
    pub fn remaining(&self, now: Instant, max: Duration) -> Duration {
        let allowed = self.wait.map_or(max, |wait| max.min(wait - margin(wait)));
        allowed.saturating_sub(now.saturating_duration_since(self.received))
    }

    /// The instant by which the service must answer (see [`Deadline::remaining`]).
    pub fn answer_by(&self, max: Duration) -> Instant {
        self.received + self.remaining(self.received, max)
    }
}

/// What is kept back from a caller's `wait`: a tenth of it, at least [`MIN_MARGIN`], at most
/// all of it.
pub fn margin(wait: Duration) -> Duration {
    (wait / 10).max(MIN_MARGIN).min(wait)
}

/// The caller's wait from `x-msa-timeout-ms`; `None` when absent.
pub fn parse(headers: &HeaderMap) -> Result<Option<Duration>, Problem> {
    let mut values = headers.get_all(&TIMEOUT_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(refused("it was sent more than once"));
    }
    let text = value.to_str().unwrap_or_default();
    let millis = (!text.is_empty() && text.len() <= 7 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse::<u64>().ok())
        .flatten()
        .filter(|ms| (1..=MAX_TIMEOUT_MS).contains(ms));
    match millis {
        Some(ms) => Ok(Some(Duration::from_millis(ms))),
        None => {
            let shown: String = String::from_utf8_lossy(value.as_bytes())
                .chars()
                .take(20)
                .collect();
            Err(refused(&format!("got {shown:?}")))
        }
    }
}

fn refused(why: &str) -> Problem {
    Problem::bad_request(format!(
        "{TIMEOUT_HEADER} must be a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}, sent once; {why}"
    ))
    .with("header", TIMEOUT_HEADER.as_str())
    .with("minimum", 1)
    .with("maximum", MAX_TIMEOUT_MS)
}

impl<S: Send + Sync> FromRequestParts<S> for Deadline {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Deadline::from_headers(&parts.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(&TIMEOUT_HEADER, HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    #[test]
    fn a_wait_is_whole_milliseconds_in_range_sent_once() {
        assert_eq!(parse(&headers(&[])).unwrap(), None);
        assert_eq!(
            parse(&headers(&[b"1"])).unwrap(),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            parse(&headers(&[b"600000"])).unwrap(),
            Some(Duration::from_millis(MAX_TIMEOUT_MS))
        );
        assert_eq!(
            parse(&headers(&[b"0004500"])).unwrap(),
            Some(Duration::from_millis(4500))
        );
        for bad in [
            &b"0"[..],
            b"600001",
            b"99999999999999999999999",
            b"-5",
            b"+5",
            b"1.5",
            b"1e3",
            b" 5",
            b"",
            b"five",
            b"\xff",
        ] {
            let problem = parse(&headers(&[bad])).unwrap_err();
            assert_eq!(problem.status, 400, "{bad:?}");
            assert_eq!(problem.extra["header"], "x-msa-timeout-ms");
            assert!(problem.detail.contains("1 to 600000"), "{}", problem.detail);
        }
        assert_eq!(parse(&headers(&[b"5", b"5"])).unwrap_err().status, 400);
    }

    #[test]
    fn the_margin_is_a_tenth_and_at_least_100_ms_but_never_more_than_the_wait() {
        assert_eq!(margin(Duration::from_secs(5)), Duration::from_millis(500));
        assert_eq!(margin(Duration::from_millis(800)), MIN_MARGIN);
        assert_eq!(margin(Duration::from_millis(40)), Duration::from_millis(40));
    }

    #[test]
    fn the_time_left_shrinks_with_the_clock_and_never_passes_the_service_limit() {
        let start = Instant::now();
        let max = Duration::from_secs(4);
        let ms = Duration::from_millis;
        let told = |wait: u64| Deadline::new(start, Some(ms(wait)));
        assert_eq!(Deadline::new(start, None).remaining(start, max), max);
        assert_eq!(told(60_000).remaining(start, max), max);
        assert_eq!(told(1_000).remaining(start, max), ms(900));
        assert_eq!(told(1_000).remaining(start + ms(400), max), ms(500));
        assert_eq!(told(1_000).remaining(start + ms(5_000), max), ms(0));
        assert_eq!(told(50).remaining(start, max), ms(0));
        assert_eq!(told(1_000).answer_by(max), start + ms(900));
    }
}

//! Deadlines that shrink inward. Every attempt the client sends carries `x-msa-timeout-ms`: the
//! milliseconds it will wait for that attempt's answer (its per-try timeout, or less when the
//! call's overall deadline is nearer). A service that receives it keeps its own calls inside
//! that time, so an inner hop gives up before the outer one and can still answer; the header
//! never lengthens anything (a receiver takes the smaller of it and its own timeouts).
//!
//! The rule for configured timeouts is the same: an inner hop's timeout must be shorter than
//! the outer hop's (the order service's calls to the product service end before the gateway's
//! try of the order service does); the header makes it so at run time whatever is configured.
//!
//! Plain functions of the clock passed in; the client and the services' handlers call them.

use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};

/// The header: milliseconds the sender will wait for this request's answer.
pub static TIMEOUT_HEADER: HeaderName = HeaderName::from_static("x-msa-timeout-ms");

/// Largest value sent or accepted (10 minutes).
pub const MAX_TIMEOUT_MS: u64 = 600_000;

/// Request extension: the instant by which the caller needs the answer. The client cuts the
/// call's overall deadline (and so each attempt's) to it; a service passes on the deadline it
/// received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// Why an `x-msa-timeout-ms` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("x-msa-timeout-ms must be a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}")]
pub struct InvalidTimeout;

/// The time an `x-msa-timeout-ms` value gives: ASCII digits only, 1 to [`MAX_TIMEOUT_MS`].
pub fn parse(value: &HeaderValue) -> Result<Duration, InvalidTimeout> {
    let text = value.as_bytes();
    if text.is_empty() || text.len() > 6 || !text.iter().all(u8::is_ascii_digit) {
        return Err(InvalidTimeout);
    }
    let millis = text
        .iter()
        .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0'));
    if (1..=MAX_TIMEOUT_MS).contains(&millis) {
        Ok(Duration::from_millis(millis))
    } else {
        Err(InvalidTimeout)
    }
}

/// The deadline a request with `x-msa-timeout-ms` `value`, received at `now`, must be answered
/// by; `None` without the header. Only ever shortens: the receiver takes the earlier of this
/// and its own.
pub fn received(
    value: Option<&HeaderValue>,
    now: Instant,
) -> Result<Option<Instant>, InvalidTimeout> {
    value.map(|v| parse(v).map(|wait| now + wait)).transpose()
}

/// How long an attempt starting at `now` may wait: its per-try timeout, cut to the call's
/// `deadline`. `None` when less than a millisecond is left: the attempt is not worth sending
/// (the receiver could not be told a time it really has).
pub fn attempt_budget(now: Instant, per_try: Duration, deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(now).min(per_try);
    (left >= Duration::from_millis(1)).then_some(left)
}

/// The header's value for an attempt that waits `budget`: whole milliseconds rounded down (the
/// receiver is told no more time than it has), within 1..=[`MAX_TIMEOUT_MS`].
pub fn header_millis(budget: Duration) -> u64 {
    u64::try_from(budget.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_TIMEOUT_MS)
}

/// [`header_millis`] as a header value.
pub fn header_value(budget: Duration) -> HeaderValue {
    HeaderValue::from(header_millis(budget))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn an_attempt_is_told_its_per_try_time_or_what_is_left_of_the_call() {
        let t0 = Instant::now();
        let deadline = t0 + MS(15_000);
        // Far from the deadline: the per-try timeout.
        assert_eq!(attempt_budget(t0, MS(5_000), deadline), Some(MS(5_000)));
        // Near it: what is left, never more.
        let late = t0 + MS(12_500);
        assert_eq!(attempt_budget(late, MS(5_000), deadline), Some(MS(2_500)));
        assert_eq!(
            attempt_budget(t0 + Duration::from_micros(14_999_500), MS(5_000), deadline),
            None,
            "half a millisecond left: not worth sending"
        );
        assert_eq!(attempt_budget(t0 + MS(20_000), MS(5_000), deadline), None);
    }

    #[test]
    fn the_header_rounds_down_and_stays_in_range() {
        assert_eq!(header_millis(Duration::from_micros(2_999_999)), 2_999);
        assert_eq!(header_millis(MS(5_000)), 5_000);
        assert_eq!(header_millis(Duration::from_micros(1_500)), 1);
        assert_eq!(header_millis(Duration::from_secs(3_600)), MAX_TIMEOUT_MS);
        assert_eq!(header_value(MS(5_000)), "5000");
    }

    #[test]
    fn only_whole_milliseconds_in_range_are_accepted() {
        let value = |text: &str| HeaderValue::from_str(text).unwrap();
        assert_eq!(parse(&value("250")), Ok(MS(250)));
        assert_eq!(parse(&value("600000")), Ok(MS(600_000)));
        for bad in [
            "", "0", "600001", "9999999", "-5", "+5", "1.5", " 5", "5s", "1e3",
        ] {
            assert_eq!(parse(&value(bad)), Err(InvalidTimeout), "{bad:?}");
        }
        let t0 = Instant::now();
        assert_eq!(received(None, t0), Ok(None));
        assert_eq!(received(Some(&value("300")), t0), Ok(Some(t0 + MS(300))));
        assert_eq!(received(Some(&value("x")), t0), Err(InvalidTimeout));
    }
}

//! `Idempotency-Key` on `POST /orders`, with the semantics of the IETF httpapi draft
//! ("The Idempotency-Key HTTP Header Field"): a client that did not hear the answer sends the
//! same request again with the same key and gets the same order, never a second one.
//!
//! - The key is the header's value: a Structured Field string (`"…"`, as the draft writes it) or
//!   the same characters bare, 1–255 visible ASCII characters; anything else, or the header sent
//!   twice, is a 400. Keys are scoped to the user the order is for, so one user's key never
//!   reaches another user's order.
//! - The key is recorded in the same transaction as the order (`store::insert`), so a key exists
//!   exactly when its order does. A request that fails before its order is recorded (bad input,
//!   an unknown product) leaves no key behind, and repeating it runs it again, which is safe:
//!   nothing happened the first time.
//! - A repeat with the same key and the same request (the same user, lines and expected total,
//!   compared by a SHA-256 fingerprint) gets the first answer: the stored one when the first
//!   request finished (201 or a 4xx refusal), else the order as it stands now (201 confirmed,
//!   202 pending, 409 `order-failed` for an order that failed meanwhile). A first request that
//!   ended in a 5xx (the product service did not answer; the order failed and holds nothing)
//!   frees its key, so the repeat places the order again rather than hearing "retry" for ever. A repeat with another request is refused
//!   with 422 (`idempotency-key-reused`). Two requests with one key at the same moment: one
//!   records the order, the other answers from it.
//! - Keys are kept as long as their orders (the draft leaves expiry to the server).

use axum::http::HeaderMap;
use msa_service_kit::Problem;
use msa_service_kit::db::Database;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

use crate::model::ValidOrder;

/// The request header (case-insensitive, as every HTTP field name).
pub const HEADER: &str = "idempotency-key";
/// Longest key accepted, in characters.
pub const MAX_KEY_LEN: usize = 255;

/// A key and what it was sent with: who the order is for and the request's fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub user_id: String,
    pub key: String,
    pub fingerprint: String,
}

impl Claim {
    pub fn new(key: String, order: &ValidOrder) -> Self {
        Claim {
            user_id: order.user_id.clone(),
            key,
            fingerprint: fingerprint(order),
        }
    }
}

/// The key a request carries, if any; a 400 for a malformed one.
pub fn parse(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let malformed = || {
        Problem::bad_request(format!(
            "send one Idempotency-Key header whose value is 1 to {MAX_KEY_LEN} visible ASCII \
             characters, as a string (\"…\") or bare; a new random UUID per order is a good key"
        ))
    };
    if values.next().is_some() {
        return Err(malformed());
    }
    let text = value.to_str().map_err(|_| malformed())?.trim();
    let key = match text.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"').ok_or_else(malformed)?,
        None => text,
    };
    let visible = |c: char| c.is_ascii_graphic() && c != '"' && c != '\\';
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.chars().all(visible) {
        return Err(malformed());
    }
    Ok(Some(key.to_owned()))
}

/// What identifies a request for a key: the user, the lines as sent and the expected total.
pub fn fingerprint(order: &ValidOrder) -> String {
    let canonical = serde_json::json!({
        "user_id": order.user_id,
        "items": order.items,
        "expected_total_cents": order.expected_total_cents,
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub fingerprint: String,
    pub order_id: String,
    /// The first request's answer, once it finished (status and JSON body).
    pub answer: Option<(u16, String)>,
}

/// What a repeated request gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Another request under the same key: 422.
    Mismatch,
    /// The first request's answer, as it was sent.
    Answer { status: u16, body: String },
    /// The first request has not answered (still running, its client gone, or its process
    /// died): the order as it stands.
    Order(String),
}

/// Decides a repeat's answer from the stored key (pure).
pub fn replay(recorded: Recorded, fingerprint: &str) -> Replay {
    if recorded.fingerprint != fingerprint {
        return Replay::Mismatch;
    }
    match recorded.answer {
        Some((status, body)) => Replay::Answer { status, body },
        None => Replay::Order(recorded.order_id),
    }
}

/// The 422 for a key sent with another request.
pub fn reused() -> Problem {
    Problem::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
        "this Idempotency-Key was sent before with another order; use a new key for a new order",
    )
}

/// Records `claim` for `order_id`, inside the order's own transaction.
pub async fn insert(
    conn: &mut AnyConnection,
    claim: &Claim,
    order_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idempotency_keys (user_id, idempotency_key, fingerprint, order_id) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&claim.user_id)
    .bind(&claim.key)
    .bind(&claim.fingerprint)
    .bind(order_id)
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// The stored key `key` of `user_id`, if any.
pub async fn lookup(db: &Database, user_id: &str, key: &str) -> Result<Option<Recorded>, Problem> {
    let row = sqlx::query(
        "SELECT fingerprint, order_id, answer_status, answer_body FROM idempotency_keys \
         WHERE user_id = $1 AND idempotency_key = $2",
    )
    .bind(user_id)
    .bind(key)
    .fetch_optional(&db.pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let status: Option<i64> = row.try_get("answer_status")?;
    let body: Option<String> = row.try_get("answer_body")?;
    Ok(Some(Recorded {
        fingerprint: row.try_get("fingerprint")?,
        order_id: row.try_get("order_id")?,
        answer: status.and_then(|s| u16::try_from(s).ok()).zip(body),
    }))
}

/// Stores the first request's final answer (201 or a failure), so repeats get it as it was.
pub async fn store_answer(
    db: &Database,
    claim: &Claim,
    status: u16,
    body: &str,
) -> Result<(), Problem> {
    sqlx::query(
        "UPDATE idempotency_keys SET answer_status = $1, answer_body = $2 \
         WHERE user_id = $3 AND idempotency_key = $4 AND answer_status IS NULL",
    )
    .bind(i64::from(status))
    .bind(body)
    .bind(&claim.user_id)
    .bind(&claim.key)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Frees `claim`'s key (its order failed before taking anything the client must know about),
/// so a repeat runs as a new request.
pub async fn forget(db: &Database, claim: &Claim) -> Result<(), Problem> {
    sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND idempotency_key = $2")
        .bind(&claim.user_id)
        .bind(&claim.key)
        .execute(&db.pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RequestedItem;
    use axum::http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(HEADER, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn keys_are_read_quoted_or_bare_and_anything_else_is_refused() {
        assert_eq!(parse(&headers(&[])).unwrap(), None);
        assert_eq!(
            parse(&headers(&["\"abc-1\""])).unwrap().as_deref(),
            Some("abc-1")
        );
        assert_eq!(
            parse(&headers(&["abc-1"])).unwrap().as_deref(),
            Some("abc-1")
        );
        let long = "k".repeat(MAX_KEY_LEN + 1);
        for bad in ["", "\"\"", "\"open", "a b", "a\"b", long.as_str()] {
            let problem = parse(&headers(&[bad])).unwrap_err();
            assert_eq!(problem.status_code(), 400, "{bad:?}");
        }
        assert_eq!(
            parse(&headers(&["a", "b"])).unwrap_err().status_code(),
            400,
            "sent twice"
        );
    }

    fn order(quantity: i64) -> ValidOrder {
        ValidOrder {
            user_id: "u".into(),
            items: vec![RequestedItem {
                product_id: "p".into(),
                quantity,
            }],
            expected_total_cents: None,
        }
    }

    #[test]
    fn a_repeat_gets_the_first_answer_or_the_order_and_another_request_is_refused() {
        let first = fingerprint(&order(1));
        assert_eq!(first, fingerprint(&order(1)), "deterministic");
        assert_ne!(first, fingerprint(&order(2)));
        let recorded = |answer| Recorded {
            fingerprint: first.clone(),
            order_id: "o".into(),
            answer,
        };
        assert_eq!(
            replay(recorded(Some((201, "{}".into()))), &first),
            Replay::Answer {
                status: 201,
                body: "{}".into()
            }
        );
        assert_eq!(replay(recorded(None), &first), Replay::Order("o".into()));
        assert_eq!(
            replay(recorded(None), &fingerprint(&order(2))),
            Replay::Mismatch
        );
    }
}

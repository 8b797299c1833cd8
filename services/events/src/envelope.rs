//! The CloudEvents 1.0 JSON envelope (structured mode) every event travels in, with two
//! extensions: `traceparent` (the distributed-tracing extension: the trace of the request that
//! caused the change) and `sequence` (the event's position among its aggregate's events, from 1,
//! without gaps, so a consumer can apply them in order and tell a stale one).

use serde::{Deserialize, Serialize};

use crate::types::EventType;

pub const SPEC_VERSION: &str = "1.0";
pub const CONTENT_TYPE: &str = "application/json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudEvent {
    pub specversion: String,
    /// Unique per event (a UUID); also its `Nats-Msg-Id`, so a republished event is dropped.
    pub id: String,
    /// `/<app>/<service>`.
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The aggregate's id (the user, product or order).
    pub subject: String,
    /// When the change was committed (RFC 3339).
    pub time: String,
    pub datacontenttype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub sequence: i64,
    pub data: serde_json::Value,
}

/// What is wrong with an envelope read from the stream.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a CloudEvents JSON envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("specversion {0:?} is not 1.0")]
    SpecVersion(String),
    #[error("unknown event type {0:?}")]
    Type(String),
    #[error("sequence {0} is not positive")]
    Sequence(i64),
    #[error("data does not match {kind}: {error}")]
    Data {
        kind: EventType,
        error: serde_json::Error,
    },
}

impl CloudEvent {
    /// Reads and checks an envelope: version, a known type, a positive sequence, and data of
    /// that type's shape.
    pub fn parse(bytes: &[u8]) -> Result<(CloudEvent, EventType), EnvelopeError> {
        let event: CloudEvent = serde_json::from_slice(bytes)?;
        if event.specversion != SPEC_VERSION {
            return Err(EnvelopeError::SpecVersion(event.specversion));
        }
        let kind = EventType::parse(&event.kind).ok_or(EnvelopeError::Type(event.kind.clone()))?;
        if event.sequence < 1 {
            return Err(EnvelopeError::Sequence(event.sequence));
        }
        kind.check_data(&event.data)
            .map_err(|error| EnvelopeError::Data { kind, error })?;
        Ok((event, kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: &str, sequence: i64, data: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "specversion": "1.0", "id": "e1", "source": "/shop/user", "type": kind,
            "subject": "u1", "time": "2026-12-04T10:00:00Z",
            "datacontenttype": "application/json", "sequence": sequence, "data": data,
        }))
        .unwrap()
    }

    #[test]
    fn a_valid_envelope_parses_and_a_wrong_one_says_why() {
        let (event, kind) = CloudEvent::parse(&envelope(
            "dev.msa.user.deleted.v1",
            3,
            serde_json::json!({"id": "u1"}),
        ))
        .unwrap();
        assert_eq!(kind, EventType::UserDeleted);
        assert_eq!(event.sequence, 3);
        assert!(event.traceparent.is_none());
        let unknown = CloudEvent::parse(&envelope(
            "dev.msa.user.frozen.v1",
            1,
            serde_json::json!({}),
        ));
        assert!(matches!(unknown, Err(EnvelopeError::Type(_))));
        let zero = CloudEvent::parse(&envelope(
            "dev.msa.user.deleted.v1",
            0,
            serde_json::json!({"id": "u1"}),
        ));
        assert!(matches!(zero, Err(EnvelopeError::Sequence(0))));
        let shape = CloudEvent::parse(&envelope(
            "dev.msa.user.deleted.v1",
            1,
            serde_json::json!({"name": "x"}),
        ));
        assert!(matches!(shape, Err(EnvelopeError::Data { .. })));
    }
}

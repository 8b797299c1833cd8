//! The API server's audit log, which records every write (the cluster's audit policy logs
//! create/update/patch/delete at Metadata level) and every request of the operator's
//! ServiceAccount: the ground truth for "how many writes (and reads) did the operator make",
//! independent of the operator's own metrics.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;

use serde_json::Value;

/// One audited request (a write, or a read of a user whose reads the policy logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRequest {
    pub verb: String,
    pub username: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub code: u16,
}

impl std::fmt::Display for AuditRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}{} {}/{} by {} → {}",
            self.verb,
            self.resource,
            self.subresource
                .as_deref()
                .map(|s| format!("/{s}"))
                .unwrap_or_default(),
            self.namespace.as_deref().unwrap_or("-"),
            self.name.as_deref().unwrap_or("-"),
            self.username,
            self.code
        )
    }
}

impl AuditRequest {
    /// The policy also logs the operator's reads (the scale benchmark counts them); a watch
    /// ending and being opened again is not a write.
    pub fn is_write(&self) -> bool {
        WRITE_VERBS.contains(&self.verb.as_str())
    }
}

/// The verbs of requests that change something.
pub const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// A position in the log, so a test counts only what happened after it.
#[derive(Clone, Copy, Debug)]
pub struct Mark(u64);

pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    pub fn new(path: PathBuf) -> Self {
        AuditLog { path }
    }

    /// The current end of the log.
    pub fn mark(&self) -> anyhow::Result<Mark> {
        Ok(Mark(std::fs::metadata(&self.path)?.len()))
    }

    /// Writes logged after `mark`.
    pub fn writes_since(&self, mark: Mark) -> anyhow::Result<Vec<AuditRequest>> {
        let mut requests = self.requests_since(mark)?;
        requests.retain(AuditRequest::is_write);
        Ok(requests)
    }

    /// Every request logged after `mark` (reads only for the users the policy logs them for).
    pub fn requests_since(&self, mark: Mark) -> anyhow::Result<Vec<AuditRequest>> {
        let mut file = std::fs::File::open(&self.path)?;
        file.seek(SeekFrom::Start(mark.0))?;
        let mut requests = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line?;
            // A line being written right now may be incomplete; it belongs to the next read.
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            requests.extend(parse(&event));
        }
        Ok(requests)
    }
}

fn parse(event: &Value) -> Option<AuditRequest> {
    if event["stage"] != "ResponseComplete" {
        return None;
    }
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let object = &event["objectRef"];
    Some(AuditRequest {
        verb: text(&event["verb"])?,
        username: text(&event["user"]["username"]).unwrap_or_default(),
        resource: text(&object["resource"]).unwrap_or_default(),
        subresource: text(&object["subresource"]),
        namespace: text(&object["namespace"]),
        name: text(&object["name"]),
        code: event["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_completed_write_and_skips_other_stages() {
        let line = r#"{"kind":"Event","level":"Metadata","stage":"ResponseComplete","verb":"patch",
            "user":{"username":"system:serviceaccount:msa-system:msa-operator"},
            "objectRef":{"resource":"deployments","namespace":"a","name":"shop-user","apiGroup":"apps"},
            "responseStatus":{"code":200}}"#;
        let event: Value = serde_json::from_str(line).unwrap();
        let write = parse(&event).unwrap();
        assert_eq!(write.verb, "patch");
        assert_eq!(write.resource, "deployments");
        assert_eq!(write.namespace.as_deref(), Some("a"));
        assert_eq!(write.code, 200);
        assert_eq!(
            write.to_string(),
            "patch deployments a/shop-user by system:serviceaccount:msa-system:msa-operator → 200"
        );

        let started: Value =
            serde_json::from_str(&line.replace("ResponseComplete", "ResponseStarted")).unwrap();
        assert_eq!(parse(&started), None);
        assert!(write.is_write());
        let watch: Value = serde_json::from_str(&line.replace("\"patch\"", "\"watch\"")).unwrap();
        assert!(!parse(&watch).unwrap().is_write(), "a watch is a read");
    }
}

//! Decides whether a child needs applying by comparing what the operator renders with what the
//! reflector cache holds, so a converged app costs no API writes.
//!
//! The live object always carries more than we send (defaults, status, fields of other
//! managers), so the test is "every field we render has the same value live". Fields we stop
//! rendering are caught by the rendered-hash annotation, which is itself one of the fields.

use serde_json::Value;

/// True when `desired` is contained in `live`: every key of every object in `desired` is present
/// in `live` with a contained value, and every array of `desired` is a prefix of the live array
/// element by element (others may append to a list; they cannot change ours unseen).
/// Resource quantities are compared by value, because the API server rewrites `0.5` as `500m`.
pub fn is_contained(desired: &Value, live: &Value) -> bool {
    contained(desired, live, false)
}

fn contained(desired: &Value, live: &Value, in_resources: bool) -> bool {
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => {
            want.iter().all(|(key, value)| match have.get(key) {
                Some(live_value) => {
                    contained(value, live_value, in_resources || key == "resources")
                }
                // The API server drops empty values of `omitempty` fields (an env entry's
                // `value: ""`): one we render is there as far as anyone can tell, and applying it
                // again would write on every reconcile for ever.
                None => is_empty(value),
            })
        }
        (Value::Array(want), Value::Array(have)) => {
            want.len() <= have.len()
                && want
                    .iter()
                    .zip(have)
                    .all(|(w, h)| contained(w, h, in_resources))
        }
        (Value::String(want), Value::String(have)) if in_resources && want != have => {
            match (quantity(want), quantity(have)) {
                (Some(a), Some(b)) => (a - b).abs() <= f64::EPSILON * a.abs().max(b.abs()) * 4.0,
                _ => false,
            }
        }
        _ => desired == live,
    }
}

/// A value Go's `omitempty` leaves out: an empty string, list or map, or null. (Not `false` nor
/// `0`: in Kubernetes' types those are mostly pointers, kept when set, and a missing
/// `allowPrivilegeEscalation: false` is a change.)
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(_) | Value::Number(_) => false,
    }
}

/// The numeric value of a Kubernetes resource quantity (`500m`, `1.5Gi`, `2e3`), if it is one.
pub fn quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => 10f64.powi(exponent[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// An env entry with `value: ""` is stored without `value`; the next reconcile must not
    /// take that for drift (it applied the Deployment on every reconcile).
    #[test]
    fn empty_values_the_api_server_drops_are_not_drift() {
        let desired = json!({"env": [{"name": "EMPTY", "value": ""}], "args": [], "labels": {}});
        let live = json!({"env": [{"name": "EMPTY"}]});
        assert!(is_contained(&desired, &live));
        assert!(!is_contained(
            &json!({"allowPrivilegeEscalation": false}),
            &json!({}),
        ));
        assert!(!is_contained(
            &json!({"env": [{"name": "X", "value": "1"}]}),
            &json!({"env": [{"name": "X"}]})
        ));
    }

    #[test]
    fn extra_live_fields_do_not_count_as_drift() {
        let desired = json!({"spec": {"replicas": 2, "template": {"labels": {"a": "1"}}}});
        let live = json!({"spec": {"replicas": 2, "paused": false, "template": {"labels": {"a": "1", "b": "2"}}}, "status": {}});
        assert!(is_contained(&desired, &live));
    }

    #[test]
    fn changed_or_missing_fields_are_drift() {
        let desired = json!({"spec": {"replicas": 2, "labels": {"a": "1"}}});
        assert!(!is_contained(
            &desired,
            &json!({"spec": {"replicas": 3, "labels": {"a": "1"}}})
        ));
        assert!(!is_contained(
            &desired,
            &json!({"spec": {"replicas": 2, "labels": {}}})
        ));
        assert!(!is_contained(&desired, &json!({"spec": {"replicas": 2}})));
    }

    #[test]
    fn arrays_are_compared_element_by_element_as_a_prefix() {
        let desired = json!({"env": [{"name": "A", "value": "1"}]});
        assert!(is_contained(
            &desired,
            &json!({"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]})
        ));
        assert!(!is_contained(
            &desired,
            &json!({"env": [{"name": "A", "value": "2"}]})
        ));
        assert!(!is_contained(&desired, &json!({"env": []})));
    }

    #[test]
    fn quantities_compare_by_value_only_under_resources() {
        let desired = json!({"resources": {"limits": {"cpu": "0.5", "memory": "1Gi"}}});
        let live = json!({"resources": {"limits": {"cpu": "500m", "memory": "1073741824"}}});
        assert!(is_contained(&desired, &live));
        assert!(!is_contained(
            &desired,
            &json!({"resources": {"limits": {"cpu": "600m", "memory": "1Gi"}}})
        ));
        // Outside `resources`, strings are compared exactly.
        assert!(!is_contained(
            &json!({"env": [{"value": "0.5"}]}),
            &json!({"env": [{"value": "500m"}]})
        ));
    }

    #[test]
    fn quantity_parses_every_suffix_kind() {
        assert_eq!(quantity("250m"), Some(0.25));
        assert_eq!(quantity("2Ki"), Some(2048.0));
        assert_eq!(quantity("1.5G"), Some(1.5e9));
        assert_eq!(quantity("3e2"), Some(300.0));
        assert_eq!(quantity("12"), Some(12.0));
        assert_eq!(quantity("lots"), None);
        assert_eq!(quantity("1Xi"), None);
    }
}

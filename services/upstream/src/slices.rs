//! The set of addresses behind a Service, from its EndpointSlices — the pure part of discovery.
//!
//! All slices of the Service are merged and de-duplicated by (address, port); the named port is
//! resolved per slice (slices may disagree on numbers during a rollout); `ready` absent means
//! ready; when no endpoint is ready, endpoints that are both `serving` and `terminating` are used
//! instead, as kube-proxy does, so a Service mid-rollout is not treated as empty. IPv4 and IPv6
//! slices are read; FQDN slices are skipped. A slice annotated `msa.dev/weight: "<n>"` gives its
//! endpoints that weight for weighted round-robin (EndpointSlices have no weight of their own).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::endpoint::{Endpoint, MAX_WEIGHT};

/// The annotation that sets the weight of a slice's endpoints.
pub const WEIGHT_ANNOTATION: &str = "msa.dev/weight";

/// Endpoints to send to, sorted by address. `port_name` is the Service port's name (`http`
/// for msa).
pub fn endpoints(slices: &[EndpointSlice], port_name: &str) -> Vec<Endpoint> {
    let mut ready = BTreeMap::new();
    let mut terminating = BTreeMap::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some(port) = named_port(slice, port_name) else {
            continue;
        };
        let weight = weight(slice);
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            let is_ready = conditions.ready.unwrap_or(true);
            let serving = conditions.serving.unwrap_or(is_ready);
            let is_terminating = conditions.terminating.unwrap_or(false);
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else {
                    continue;
                };
                let addr = SocketAddr::new(ip, port);
                if is_ready {
                    ready.entry(addr).or_insert(weight);
                } else if serving && is_terminating {
                    terminating.entry(addr).or_insert(weight);
                }
            }
        }
    }
    if ready.is_empty() { terminating } else { ready }
        .into_iter()
        .map(|(addr, weight)| Endpoint { addr, weight })
        .collect()
}

fn weight(slice: &EndpointSlice) -> u32 {
    slice
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(WEIGHT_ANNOTATION))
        .and_then(|w| w.parse::<u32>().ok())
        .map_or(1, |w| w.clamp(1, MAX_WEIGHT))
}

fn named_port(slice: &EndpointSlice, name: &str) -> Option<u16> {
    let ports = slice.ports.as_ref()?;
    let port = ports
        .iter()
        .find(|p| p.name.as_deref().unwrap_or("") == name)
        .or_else(|| (ports.len() == 1 && name.is_empty()).then(|| &ports[0]))?;
    u16::try_from(port.port?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).unwrap()
    }

    fn endpoint(
        ip: &str,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> serde_json::Value {
        json!({"addresses": [ip], "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn addresses(slices: &[EndpointSlice], port_name: &str) -> Vec<SocketAddr> {
        endpoints(slices, port_name)
            .iter()
            .map(|e| e.addr)
            .collect()
    }

    #[test]
    fn a_weight_annotation_weighs_the_slice_s_endpoints() {
        let heavy = slice(
            json!({"metadata": {"name": "a", "annotations": {"msa.dev/weight": "3"}}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80}], "endpoints": [endpoint("198.18.0.1", None, None, None)]}),
        );
        let plain = slice(json!({"metadata": {"name": "b"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80}], "endpoints": [endpoint("198.18.0.2", None, None, None)]}));
        let weights: Vec<u32> = endpoints(&[heavy, plain], "http")
            .iter()
            .map(|e| e.weight)
            .collect();
        assert_eq!(weights, [3, 1]);
    }

    #[test]
    fn slices_merge_dedupe_and_resolve_the_port_each() {
        let a = slice(json!({"metadata": {"name": "a"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}],
            "endpoints": [endpoint("198.18.0.1", Some(true), None, None), endpoint("198.18.0.2", None, None, None)]}));
        let b = slice(json!({"metadata": {"name": "b"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8081}],
            "endpoints": [endpoint("198.18.0.2", Some(true), None, None), endpoint("198.18.0.3", Some(false), Some(false), None)]}));
        let duplicate = a.clone();
        assert_eq!(
            addresses(&[a, b, duplicate], "http"),
            addrs(&["198.18.0.1:8080", "198.18.0.2:8080", "198.18.0.2:8081"])
        );
    }

    #[test]
    fn terminating_but_serving_endpoints_are_the_fallback() {
        let s = slice(
            json!({"metadata": {"name": "a"}, "addressType": "IPv6", "ports": [{"name": "http", "port": 80}],
            "endpoints": [endpoint("2001:db8::1", Some(false), Some(true), Some(true)),
                          endpoint("2001:db8::2", Some(false), Some(false), Some(true))]}),
        );
        assert_eq!(
            addresses(std::slice::from_ref(&s), "http"),
            addrs(&["[2001:db8::1]:80"])
        );
        let with_ready = slice(
            json!({"metadata": {"name": "b"}, "addressType": "IPv6", "ports": [{"name": "http", "port": 80}],
            "endpoints": [endpoint("2001:db8::3", None, None, None)]}),
        );
        assert_eq!(
            addresses(&[s, with_ready], "http"),
            addrs(&["[2001:db8::3]:80"]),
            "ready wins over terminating"
        );
    }

    #[test]
    fn unnamed_ports_fqdn_slices_and_missing_ports_are_handled() {
        let unnamed = slice(
            json!({"metadata": {"name": "a"}, "addressType": "IPv4", "ports": [{"port": 8080}],
            "endpoints": [endpoint("198.18.0.1", None, None, None)]}),
        );
        assert_eq!(
            addresses(std::slice::from_ref(&unnamed), ""),
            addrs(&["198.18.0.1:8080"])
        );
        assert!(
            addresses(&[unnamed], "http").is_empty(),
            "no port named http"
        );
        let fqdn = slice(
            json!({"metadata": {"name": "f"}, "addressType": "FQDN", "ports": [{"name": "http", "port": 80}],
            "endpoints": [endpoint("example.internal", None, None, None)]}),
        );
        assert!(addresses(&[fqdn], "http").is_empty());
    }
}

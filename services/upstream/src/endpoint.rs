//! One address a service can be reached at, as discovery reports it.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// A map keyed by endpoint address. Addresses come from discovery, not from clients, so the
/// keys need no DoS-resistant hasher: foldhash costs a fraction of SipHash on the per-request
/// lookups (idle connections, endpoint metrics).
pub type ByAddress<V> = std::collections::HashMap<SocketAddr, V, foldhash::fast::RandomState>;

/// Heaviest weight accepted; weights are relative, so this only bounds mistakes.
pub const MAX_WEIGHT: u32 = 1000;

/// An address and its weight for weighted round-robin (1 unless the source says otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        Endpoint { addr, weight: 1 }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.weight == 1 {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}@{}", self.addr, self.weight)
        }
    }
}

/// `ip:port` or `ip:port@weight`; an `http://` prefix is tolerated (other schemes are not).
impl FromStr for Endpoint {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let trimmed = raw.trim();
        let text = trimmed.strip_prefix("http://").unwrap_or(trimmed);
        let text = text.trim_end_matches('/');
        if text.contains("://") {
            return Err(format!(
                "{raw:?}: only plain http upstreams are supported; write ip:port"
            ));
        }
        let (addr, weight) = match text.split_once('@') {
            Some((addr, weight)) => {
                let weight: u32 = weight.parse().map_err(|_| {
                    format!(
                        "{raw:?}: the weight after @ must be a whole number from 1 to {MAX_WEIGHT}"
                    )
                })?;
                if !(1..=MAX_WEIGHT).contains(&weight) {
                    return Err(format!(
                        "{raw:?}: the weight after @ must be from 1 to {MAX_WEIGHT}"
                    ));
                }
                (addr, weight)
            }
            None => (text, 1),
        };
        let addr: SocketAddr = addr.parse().map_err(|_| {
            format!("{raw:?} is not an ip:port address (for example 127.0.0.1:8081 or [::1]:8081)")
        })?;
        Ok(Endpoint { addr, weight })
    }
}

/// A comma-separated list of endpoints, de-duplicated by address (the first weight wins).
pub fn parse_list(raw: &str) -> Result<Vec<Endpoint>, String> {
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for item in raw.split(',').filter(|s| !s.trim().is_empty()) {
        let endpoint: Endpoint = item.parse()?;
        if !endpoints.iter().any(|e| e.addr == endpoint.addr) {
            endpoints.push(endpoint);
        }
    }
    if endpoints.is_empty() {
        return Err(format!("{raw:?} lists no address; give ip:port[,ip:port…]"));
    }
    endpoints.sort();
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_with_weights_and_refuse_what_cannot_be_dialled() {
        let list =
            parse_list("127.0.0.2:80@3, http://127.0.0.1:81/ ,[::1]:82,127.0.0.1:81@9").unwrap();
        let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["127.0.0.1:81", "127.0.0.2:80@3", "[::1]:82"]);
        for bad in [
            "",
            " , ",
            "localhost:80",
            "https://127.0.0.1:1",
            "127.0.0.1:1@0",
            "127.0.0.1:1@x",
        ] {
            let error = parse_list(bad).unwrap_err();
            assert!(
                error.contains("ip:port") || error.contains("weight") || error.contains("http"),
                "{bad}: {error}"
            );
        }
    }
}

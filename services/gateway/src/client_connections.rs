//! At most `limit` connections at once from one client address, so one client cannot take
//! every connection slot of a gateway replica (the global `--max-connections` is shared by
//! all). nginx's `limit_conn` and HAProxy's `sc_conn_cur` tracking do the same; neither is on
//! by default.
//!
//! A connection over the limit is refused at once, before any byte of it is read: it gets a
//! `503` problem (`too-many-connections`, `Retry-After: 1`) and is closed. A client that waits
//! for the server's first bytes reads that answer; one that sent its request already may see
//! the connection reset instead (the request is not read). Refusals are counted in
//! `msa_gateway_connections_refused_total` (no label: client addresses never become metric
//! labels).
//!
//! An IPv6 client is counted by its /64 prefix, the block one host or one customer is given, so
//! stepping through addresses of one's own block buys nothing; an IPv4-mapped address counts as
//! the IPv4 one. Behind a NAT or a load balancer that does not keep client addresses (a
//! Kubernetes Service with `externalTrafficPolicy: Cluster` masquerades them as the node's),
//! everyone shares one address: raise the limit or keep the addresses.
//!
//! The cost is per connection, not per request: one hashed update under a lock when a
//! connection is accepted and one when it ends. [`Counts`] is the plain state, tested without
//! I/O; [`ClientConnections`] holds it for the accept loop.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// The default limit: a browser opens at most 6 connections per host and a well-behaved
/// client pool a few dozen, so 256 leaves room for a NAT full of them while one client can
/// hold no more than 2.5 % of the default 10,000 slots.
pub const DEFAULT_LIMIT: u32 = 256;

/// Whom a connection is counted against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4([u8; 4]),
    /// The first 64 bits.
    V6Prefix(u64),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(v4.octets()),
            IpAddr::V6(v6) => ClientKey::V6Prefix((v6.to_bits() >> 64) as u64),
        }
    }
}

/// Open connections per client; only clients with at least one are kept, so the map never
/// holds more entries than there are connections.
#[derive(Debug)]
pub struct Counts {
    limit: u32,
    open: HashMap<ClientKey, u32>,
}

impl Counts {
    pub fn new(limit: u32) -> Self {
        Counts {
            limit,
            open: HashMap::new(),
        }
    }

    /// Counts one more connection from `client`, unless it holds `limit` already.
    pub fn admit(&mut self, client: ClientKey) -> bool {
        let open = self.open.entry(client).or_insert(0);
        if *open >= self.limit {
            return false;
        }
        *open += 1;
        true
    }

    /// One of `client`'s admitted connections ended.
    pub fn release(&mut self, client: ClientKey) {
        if let Entry::Occupied(mut open) = self.open.entry(client) {
            *open.get_mut() -= 1;
            if *open.get() == 0 {
                open.remove();
            }
        }
    }

    /// Connections open from `client`.
    pub fn open(&self, client: ClientKey) -> u32 {
        self.open.get(&client).copied().unwrap_or(0)
    }

    /// Clients with a connection open.
    pub fn clients(&self) -> usize {
        self.open.len()
    }
}

/// [`Counts`] shared by the accept loop and the connections it admitted.
pub struct ClientConnections {
    counts: Mutex<Counts>,
    refused: Counter,
}

/// An admitted connection's place in its client's count, given back when dropped.
pub struct Slot {
    owner: Arc<ClientConnections>,
    client: ClientKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.owner.lock().release(self.client);
    }
}

impl ClientConnections {
    /// Registers `connections_refused` (refusals) in `registry`.
    pub fn new(limit: u32, registry: &mut Registry) -> Arc<Self> {
        let refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections refused because their client address already held the most it may (--max-connections-per-client)",
            refused.clone(),
        );
        Arc::new(ClientConnections {
            counts: Mutex::new(Counts::new(limit)),
            refused,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection from `ip`, or `None` (counted) when it holds the most it may.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let client = ClientKey::of(ip);
        if self.lock().admit(client) {
            Some(Slot {
                owner: self.clone(),
                client,
            })
        } else {
            self.refused.inc();
            None
        }
    }

    /// Connections open from `ip` now (for tests and the admin view).
    pub fn open(&self, ip: IpAddr) -> u32 {
        self.lock().open(ClientKey::of(ip))
    }
}

/// What a refused connection is told (nothing of it was read).
pub const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 180\r\n\r\n\
{\"type\":\"https://msa.dev/problems/too-many-connections\",\"title\":\"Service Unavailable\",\"status\":503,\"detail\":\"this address has too many connections open; reuse one, or retry later\"}";

/// Answers a connection over its client's limit and closes it, without waiting for anything:
/// what the client already sent is read off first (at most 16 KiB, only what is there), so the
/// close is a plain one rather than a reset where it can be.
pub fn refuse(stream: tokio::net::TcpStream) {
    let mut scratch = [0u8; 4096];
    for _ in 0..4 {
        match stream.try_read(&mut scratch) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    // A fresh socket's send buffer takes this whole; if not, the close says enough.
    let _ = stream.try_write(REFUSAL);
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn a_client_gets_its_limit_and_its_slots_back() {
        let mut counts = Counts::new(2);
        let a = ClientKey::of("127.0.0.1".parse().unwrap());
        let b = ClientKey::of("127.0.0.2".parse().unwrap());
        assert!(counts.admit(a));
        assert!(counts.admit(a));
        assert!(!counts.admit(a), "the third from one address is refused");
        assert!(counts.admit(b), "another address is not affected");
        assert_eq!(counts.open(a), 2, "a refusal takes no slot");
        counts.release(a);
        assert!(counts.admit(a), "a slot given back can be taken again");
        counts.release(a);
        counts.release(a);
        counts.release(b);
        assert_eq!(
            counts.clients(),
            0,
            "clients with nothing open are forgotten"
        );
        counts.release(a);
        assert_eq!(counts.open(a), 0, "a stray release does not underflow");
    }

    #[test]
    fn ipv6_clients_count_by_their_64_prefix_and_mapped_ipv4_as_ipv4() {
        let key = |text: &str| ClientKey::of(text.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_eq!(
            ClientKey::of(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            key("::2"),
            "::1 and ::2 share ::/64"
        );
    }

    #[test]
    fn the_refusal_is_a_complete_problem_answer() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 503);
        assert!(head.starts_with("HTTP/1.1 503 "));
    }
}

//! Where a started component listens, as the kernel says: its socket descriptors
//! (`/proc/<pid>/fd`) matched against the listening sockets of its network namespace
//! (`/proc/<pid>/net/tcp` and `tcp6`). With `--port 0` each component binds a port the OS
//! chooses, and this is how `msa-local` learns it, whatever the component logs (`RUST_LOG=warn`
//! hides the "listening" line). Linux only. (`msa_service_kit::testing::listening_addresses` is
//! the same for tests; that module is not part of the binaries.)

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

/// The TCP addresses process `pid` listens on.
pub fn addresses(pid: u32) -> std::io::Result<Vec<SocketAddr>> {
    let mut sockets = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        // A descriptor closed while we look is simply not there any more.
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok())
        {
            sockets.insert(inode);
        }
    }
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        match std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            Ok(text) => found.extend(listening_in(&text, &sockets)),
            // No IPv6 in this kernel.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && table == "tcp6" => {}
            Err(error) => return Err(error),
        }
    }
    Ok(found)
}

/// The local addresses of the listening sockets (state `0A`) among `sockets` (inodes) in one
/// `/proc/net/tcp` or `tcp6` table.
fn listening_in(table: &str, sockets: &HashSet<u64>) -> Vec<SocketAddr> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != LISTEN || !sockets.contains(&inode.parse().ok()?) {
                return None;
            }
            address(local)
        })
        .collect()
}

/// `0100007F:1F90` (or 32 hex digits for IPv6) → `127.0.0.1:8080`. The kernel prints each
/// 32-bit word of the address as a native-endian number, and the port in host order.
fn address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in ip.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_found_at_the_port_the_os_gave_it_and_only_while_it_listens() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bound = listener.local_addr().unwrap();
        let connected = std::net::TcpStream::connect(bound).unwrap();
        let found = addresses(std::process::id()).unwrap();
        assert!(found.contains(&bound), "{bound} in {found:?}");
        let outgoing = connected.local_addr().unwrap();
        assert!(!found.contains(&outgoing), "a connection is not a listener");
        drop(listener);
        assert!(!addresses(std::process::id()).unwrap().contains(&bound));
    }

    #[test]
    fn table_lines_are_read_as_the_kernel_writes_them() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 20 4 30 10 -1
";
        let ours = HashSet::from([111, 222]);
        if cfg!(target_endian = "little") {
            assert_eq!(
                listening_in(tcp, &ours),
                ["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]
            );
        }
        assert!(listening_in(tcp, &HashSet::from([222])).is_empty());
    }
}

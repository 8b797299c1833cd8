//! Where a process listens, as the kernel says: its socket descriptors (`/proc/<pid>/fd`)
//! matched against the listening sockets of its network namespace (`/proc/<pid>/net/tcp` and
//! `tcp6`). Tests start services, operators, gateways, Jaeger and nginx on port 0, so the OS
//! chooses their ports; this is how the harness learns them, whatever the child logs (or does
//! not), never by probing for a free port, where any outgoing connection on the machine can take
//! the port between the probe and the bind. One copy for every crate's tests. Linux only.
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
    let mut tables = Vec::new();
    for table in ["tcp", "tcp6"] {
        match std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            Ok(text) => tables.push(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && table == "tcp6" => {}
            Err(error) => return Err(error),
        }
    }
    Ok(listeners(&tables, &sockets))
}

/// The listening addresses among `sockets` in the `tables`, each socket once: the kernel prints
/// a table a page at a time, and a socket opened or closed between two pages (a busy machine)
/// can make one listener appear twice.
fn listeners(tables: &[String], sockets: &HashSet<u64>) -> Vec<SocketAddr> {
    let by_inode: std::collections::BTreeMap<u64, SocketAddr> = tables
        .iter()
        .flat_map(|table| listening_in(table, sockets))
        .collect();
    by_inode.into_values().collect()
}

/// The one address process `pid` listens on at `ip`, if it listens there yet.
pub fn on(pid: u32, ip: IpAddr) -> Option<SocketAddr> {
    let found: Vec<SocketAddr> = addresses(pid)
        .ok()?
        .into_iter()
        .filter(|a| a.ip() == ip)
        .collect();
    match found.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// Whether process `pid` has exited (gone, or a zombie not yet waited for).
pub fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X")
    })
}

/// The inodes and local addresses of the listening sockets (state `0A`) among `sockets` in one
/// `/proc/net/tcp` or `tcp6` table.
fn listening_in(table: &str, sockets: &HashSet<u64>) -> Vec<(u64, SocketAddr)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            let inode = inode.parse().ok()?;
            if *state != "0A" || !sockets.contains(&inode) {
                return None;
            }
            Some((inode, address(local)?))
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
    fn listening_sockets_are_read_from_the_kernels_table() {
        // Two lines of a real /proc/net/tcp: a listener on 127.0.0.1:8080 (inode 111) and an
        // established connection from it (inode 222); and one of /proc/net/tcp6 ([::1]:443).
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 20 4 30 10 -1
";
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 100 0 0 10 0
";
        let ours: std::collections::HashSet<u64> = [111, 222, 333].into();
        if cfg!(target_endian = "little") {
            assert_eq!(
                listening_in(tcp, &ours),
                [(111, "127.0.0.1:8080".parse::<SocketAddr>().unwrap())]
            );
            assert_eq!(
                listening_in(tcp6, &ours),
                [(333, "[::1]:443".parse::<SocketAddr>().unwrap())]
            );
        }
        assert!(
            listening_in(tcp, &[222].into()).is_empty(),
            "not a listener"
        );
        assert!(
            listening_in(tcp, &[999].into()).is_empty(),
            "another process's socket"
        );
    }

    #[test]
    fn a_listener_the_kernel_prints_twice_is_found_once() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        let line = "   0: 0200007F:8B51 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0\n";
        let table = format!("{header}{line}{line}");
        assert_eq!(listeners(&[table], &[111].into()).len(), 1);
    }

    #[test]
    fn a_listener_is_found_at_the_port_the_os_gave_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bound = listener.local_addr().unwrap();
        assert!(addresses(std::process::id()).unwrap().contains(&bound));
        assert!(!exited(std::process::id()));
        drop(listener);
        assert!(!addresses(std::process::id()).unwrap().contains(&bound));
    }
}

//! Test hosts that real traffic can reach at addresses the API server accepts in EndpointSlices
//! (it refuses loopback ones). Each host is a network namespace joined to this one by a veth
//! pair on a /30 of 198.18.200.0/24, running `msa-echo` on port 8080.
//!
//! Safety: 198.18.0.0/15 has a blackhole route in this namespace (the cluster script adds it and
//! [`TestHost::start`] checks that the host's address is blackholed before it makes the more
//! specific veth route), and a host's namespace has no interface but its veth and loopback and
//! no default route — so no packet to or from these addresses can leave the machine.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

/// A network namespace with `msa-echo` listening on `addr`.
pub struct TestHost {
    pub addr: SocketAddr,
    namespace: String,
    link: String,
    echo: Option<Child>,
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("run `ip` (iproute2)")?;
    ensure!(
        output.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl TestHost {
    /// Host number `index` (1–60): 198.18.200.(4·index+2), its side of the veth at +1.
    pub fn start(index: u8, echo_binary: &Path) -> anyhow::Result<TestHost> {
        ensure!((1..=60).contains(&index), "host index {index} outside 1–60");
        let base = 4 * index;
        let inside = Ipv4Addr::new(198, 18, 200, base + 2);
        let outside = Ipv4Addr::new(198, 18, 200, base + 1);
        let namespace = format!("msa-e2e-h{index}");
        let link = format!("msae2e{index}");
        let peer = format!("msae2e{index}p");
        // Leftovers of an interrupted run would make the next steps fail.
        let _ = ip(&["netns", "delete", &namespace]);
        let _ = ip(&["link", "delete", &link]);
        let blackholes = ip(&["route", "show", "type", "blackhole"])?;
        // A blackholed destination makes `ip route get` fail ("Invalid argument") or say so.
        let route = ip(&["route", "get", &inside.to_string()]).unwrap_or_else(|e| e.to_string());
        ensure!(
            blackholes
                .lines()
                .any(|l| l.trim() == "blackhole 198.18.0.0/15")
                && ["blackhole", "Invalid argument", "unreachable", "No route"]
                    .iter()
                    .any(|word| route.contains(word)),
            "{inside} is not blackholed here (`ip route get`: {}); refusing to create a test \
             host whose address could route off the machine — start the cluster \
             (tests/cluster/cluster.sh up) or add `ip route add blackhole 198.18.0.0/15`",
            route.trim()
        );
        let mut host = TestHost {
            addr: SocketAddr::from((inside, 8080)),
            namespace: namespace.clone(),
            link: link.clone(),
            echo: None,
        };
        ip(&["netns", "add", &namespace])?;
        ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &namespace])?;
        ip(&["addr", "add", &format!("{outside}/30"), "dev", &link])?;
        ip(&["link", "set", &link, "up"])?;
        ip(&[
            "-n",
            &namespace,
            "addr",
            "add",
            &format!("{inside}/30"),
            "dev",
            &peer,
        ])?;
        ip(&["-n", &namespace, "link", "set", &peer, "up"])?;
        ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        let echo = Command::new("ip")
            .args(["netns", "exec", &namespace])
            .arg(echo_binary)
            .args(["--listen", &host.addr.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("start {} in {namespace}", echo_binary.display()))?;
        host.echo = Some(echo);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&host.addr, Duration::from_millis(200)).is_err() {
            ensure!(
                Instant::now() < deadline,
                "msa-echo in {namespace} does not listen on {}",
                host.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(host)
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(mut echo) = self.echo.take() {
            let _ = echo.kill();
            let _ = echo.wait();
        }
        // Deleting the namespace deletes the peer, and with it the pair.
        let _ = ip(&["netns", "delete", &self.namespace]);
        let _ = ip(&["link", "delete", &self.link]);
    }
}

//! The gateway's EndpointSlice discovery against the real API server: slices are created,
//! changed and deleted, and the gateway's view (`/debug/endpoints`) must follow — merged,
//! de-duplicated, falling back to serving-and-terminating endpoints — and so must its traffic,
//! sent to test hosts in network namespaces ([`crate::hosts`]). The delay from each API write
//! to the changed view, and to the changed routing, is printed. The view test sends nothing to
//! its slices' 198.18.1.x addresses (blackholed); the traffic test sends only to its own hosts.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use msa_e2e::Cluster;
use msa_e2e::cluster::TestNamespace;
use serde_json::{Value, json};

use crate::hosts::TestHost;

/// The gateway binary: `MSA_E2E_GATEWAY`, else the workspace's debug build (`make e2e` builds it).
fn gateway_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MSA_E2E_GATEWAY") {
        return PathBuf::from(path);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("debug/msa-gateway")
}

struct Gateway {
    child: std::process::Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    async fn start(
        cluster: &Cluster,
        namespace: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Gateway> {
        let mut child = std::process::Command::new(gateway_binary())
            .args([
                "--listen",
                // A port the OS chooses, read back from the kernel below.
                "127.0.0.1:0",
                "--discovery",
                "kubernetes",
                "--namespace",
                namespace,
            ])
            .args(["--upstream-user", "users", "--upstream-order", "orders"])
            .args([
                "--upstream-product",
                "products",
                "--drain-delay-seconds",
                "0",
            ])
            .args(["--log-format", "text"])
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let listen = loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("the gateway exited ({status}) before listening; its log is above");
            }
            if let Some(listen) = msa_e2e::listening::on(child.id(), Ipv4Addr::LOCALHOST.into()) {
                break listen;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("the gateway did not listen within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut gateway = Gateway {
            child,
            base: format!("http://{listen}"),
            http: reqwest::Client::builder().no_proxy().build()?,
        };
        while gateway
            .http
            .get(format!("{}/readyz", gateway.base))
            .send()
            .await
            .map_or(true, |r| !r.status().is_success())
        {
            if let Some(status) = gateway.child.try_wait()? {
                anyhow::bail!(
                    "the gateway exited ({status}) before it was ready; its log is above"
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the gateway did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(gateway)
    }

    /// The user upstream's endpoint addresses as listed (sorted, duplicates kept so a failed
    /// de-duplication would show).
    async fn user_endpoints(&self) -> anyhow::Result<Vec<String>> {
        let view: Value = self
            .http
            .get(format!("{}/debug/endpoints", self.base))
            .send()
            .await?
            .json()
            .await?;
        let user = view["upstreams"]
            .as_array()
            .and_then(|u| u.iter().find(|u| u["name"] == "user"))
            .cloned()
            .unwrap_or_default();
        let mut addresses: Vec<String> = user["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["address"].as_str().map(str::to_owned))
            .collect();
        addresses.sort();
        Ok(addresses)
    }

    /// Waits until the user upstream lists exactly `expected`; returns how long that took.
    async fn until_users(&self, expected: &[&str]) -> anyhow::Result<Duration> {
        let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        let started = Instant::now();
        loop {
            let seen = self.user_endpoints().await?;
            if seen == expected {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(20),
                "the gateway sees {seen:?}, expected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn endpoint(ip: &str, ready: bool, serving: bool, terminating: bool) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
}

fn slice(name: &str, endpoints: Vec<Value>) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/service-name": "users",
            "endpointslice.kubernetes.io/managed-by": "msa-e2e",
        }},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .expect("a valid EndpointSlice")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: make e2e"]
async fn the_gateway_follows_endpointslices_written_to_the_api() -> anyhow::Result<()> {
    let cluster = Cluster::from_env();
    let admin = cluster.admin().await?;
    let ns = TestNamespace::create(&admin, "discovery").await?;
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), &ns.name);
    let gateway = Gateway::start(&cluster, &ns.name, &[]).await?;
    assert!(gateway.user_endpoints().await?.is_empty());
    let post = PostParams::default();
    let mut delays = Vec::new();

    slices
        .create(
            &post,
            &slice(
                "users-a",
                vec![
                    endpoint("198.18.1.1", true, true, false),
                    endpoint("198.18.1.2", true, true, false),
                ],
            ),
        )
        .await?;
    delays.push((
        "slice created",
        gateway
            .until_users(&["198.18.1.1:8080", "198.18.1.2:8080"])
            .await?,
    ));

    // A second slice repeating 198.18.1.2, adding 198.18.1.4 and a terminating endpoint:
    // merged (the new address appears), de-duplicated (1.2 listed once), and the terminating
    // one left out while ready ones exist.
    slices
        .create(
            &post,
            &slice(
                "users-b",
                vec![
                    endpoint("198.18.1.2", true, true, false),
                    endpoint("198.18.1.3", false, true, true),
                    endpoint("198.18.1.4", true, true, false),
                ],
            ),
        )
        .await?;
    delays.push((
        "second slice",
        gateway
            .until_users(&["198.18.1.1:8080", "198.18.1.2:8080", "198.18.1.4:8080"])
            .await?,
    ));

    slices.delete("users-a", &DeleteParams::default()).await?;
    let mut b = slices.get("users-b").await?;
    b.endpoints = slice("users-b", vec![endpoint("198.18.1.3", false, true, true)]).endpoints;
    slices.replace("users-b", &post, &b).await?;
    delays.push((
        "only terminating left",
        gateway.until_users(&["198.18.1.3:8080"]).await?,
    ));

    slices.delete("users-b", &DeleteParams::default()).await?;
    delays.push(("slices deleted", gateway.until_users(&[]).await?));

    // With no endpoint the gateway answers 503 with Retry-After (after waiting up to 3 s for one).
    let response = gateway
        .http
        .get(format!("{}/users", gateway.base))
        .send()
        .await?;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));

    for (what, delay) in &delays {
        eprintln!(
            "discovery delay, API write → gateway view: {what}: {} ms",
            delay.as_millis()
        );
    }
    Ok(())
}

impl Gateway {
    /// Sends `count` GETs through the user route; returns how many each backend answered.
    async fn spread(&self, count: usize) -> anyhow::Result<BTreeMap<String, usize>> {
        let mut served = BTreeMap::new();
        for _ in 0..count {
            *served.entry(self.served_by().await?).or_default() += 1;
        }
        Ok(served)
    }

    /// The backend that answered one GET through the user route.
    async fn served_by(&self) -> anyhow::Result<String> {
        let response = self
            .http
            .get(format!("{}/users/1", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 200,
            "GET /users/1: {}",
            response.status()
        );
        let answer: Value = response.json().await?;
        Ok(answer["backend"].as_str().unwrap_or_default().to_owned())
    }

    /// Waits until `rounds` answers in a row come from `only`; returns how long that took.
    async fn until_routed_only_to(&self, only: &str, rounds: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut in_a_row = 0;
        while in_a_row < rounds {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(20),
                "traffic still reaches other backends than {only}"
            );
            in_a_row = if self.served_by().await? == only {
                in_a_row + 1
            } else {
                0
            };
        }
        Ok(started.elapsed())
    }
}

/// Rewrites slice `users-a` to list `first` ready and `second` ready or not.
async fn second_ready(
    slices: &Api<EndpointSlice>,
    first: &str,
    second: &str,
    ready: bool,
) -> anyhow::Result<()> {
    let mut current = slices.get("users-a").await?;
    current.endpoints = slice(
        "users-a",
        vec![
            endpoint(first, true, true, false),
            endpoint(second, ready, ready, false),
        ],
    )
    .endpoints;
    slices
        .replace("users-a", &PostParams::default(), &current)
        .await?;
    Ok(())
}

/// `msa-echo`, built beside the gateway binary.
fn echo_binary() -> PathBuf {
    gateway_binary().with_file_name("msa-echo")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: make e2e"]
async fn traffic_follows_endpointslices_to_real_hosts() -> anyhow::Result<()> {
    let cluster = Cluster::from_env();
    let admin = cluster.admin().await?;
    let ns = TestNamespace::create(&admin, "traffic").await?;
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), &ns.name);
    let first = TestHost::start(1, &echo_binary())?;
    let second = TestHost::start(2, &echo_binary())?;
    let (a, b) = (first.addr.to_string(), second.addr.to_string());
    let (a_ip, b_ip) = (first.addr.ip().to_string(), second.addr.ip().to_string());
    // Round-robin, so the expected spread is exact.
    let gateway = Gateway::start(&cluster, &ns.name, &[("MSA_LB_STRATEGY", "round-robin")]).await?;
    let post = PostParams::default();

    slices
        .create(
            &post,
            &slice(
                "users-a",
                vec![
                    endpoint(&a_ip, true, true, false),
                    endpoint(&b_ip, true, true, false),
                ],
            ),
        )
        .await?;
    let mut expected = [a.clone(), b.clone()];
    expected.sort();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    let discovered = gateway.until_users(&expected).await?;
    let spread = gateway.spread(100).await?;
    assert_eq!(spread.get(&a), Some(&50), "{spread:?}");
    assert_eq!(spread.get(&b), Some(&50), "{spread:?}");

    // The second host stops being ready: its traffic must stop.
    let written = Instant::now();
    second_ready(&slices, &a_ip, &b_ip, false).await?;
    gateway.until_routed_only_to(&a, 10).await?;
    let drained = written.elapsed();
    let after = gateway.spread(50).await?;
    assert_eq!(after.get(&a), Some(&50), "{after:?}");

    // Ready again: traffic returns.
    let written = Instant::now();
    second_ready(&slices, &a_ip, &b_ip, true).await?;
    gateway.until_users(&expected).await?;
    let restored = written.elapsed();
    let spread = gateway.spread(100).await?;
    assert_eq!(spread.get(&b), Some(&50), "{spread:?}");

    eprintln!(
        "real traffic via discovery: slice created → both hosts listed {} ms; host unready → \
         its traffic stopped {} ms (10 answers in a row from the other); ready again → listed \
         {} ms",
        discovered.as_millis(),
        drained.as_millis(),
        restored.as_millis()
    );
    Ok(())
}

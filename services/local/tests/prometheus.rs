//! Issue 17, part 3: a real Prometheus (Debian's package, which `make unit` installs) scrapes a
//! local run with the configuration `msa-local up` writes: every component is up, and a query
//! over the gateway's RED metrics returns data.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Local;
use serde_json::Value;

/// Stops Prometheus when the test ends, whatever happens.
struct Stop(std::process::Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn query(client: &reqwest::Client, base: &str, promql: &str) -> Vec<Value> {
    let answer: Value = match client
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", promql)])
        .send()
        .await
    {
        Ok(response) => response.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn prometheus_scrapes_every_component_of_a_local_run() {
    let local = Local::start("prom", &[]);
    let (gateway, data) = (local.gateway(), local.data.clone());
    // The written configuration, scraping every second instead of every five.
    let config = std::fs::read_to_string(data.join("prometheus.yml"))
        .unwrap()
        .replace("scrape_interval: 5s", "scrape_interval: 1s");
    std::fs::write(data.join("prometheus-test.yml"), config).unwrap();
    // Prometheus binds a port the OS chooses; the test reads which from the kernel.
    let prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            data.join("prometheus-test.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            data.join("tsdb").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(data.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus (Debian's prometheus package; make unit installs it)");
    let mut prometheus = Stop(prometheus);
    let log = || std::fs::read_to_string(data.join("prometheus.log")).unwrap_or_default();
    let started = Instant::now();
    let web = loop {
        if let Some(status) = prometheus.0.try_wait().unwrap() {
            panic!(
                "prometheus exited with {status} before listening:\n{}",
                log()
            );
        }
        let listening =
            msa_service_kit::testing::listening_addresses(prometheus.0.id()).unwrap_or_default();
        if let [web] = listening.as_slice() {
            break *web;
        }
        assert!(
            listening.is_empty() && started.elapsed() < Duration::from_secs(60),
            "prometheus did not listen on one address within 60 s ({listening:?}):\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let base = format!("http://{web}");
    let client = msa_service_kit::testing::loopback_client();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    let (up, rates) = loop {
        round += 1;
        for path in ["/products", "/users"] {
            client.get(format!("{gateway}{path}")).send().await.unwrap();
        }
        let up = query(&client, &base, "up == 1").await;
        let rates = query(
            &client,
            &base,
            "sum by (route) (rate(msa_gateway_http_requests_total{route=\"/products\"}[10s]))",
        )
        .await;
        if up.len() == 4 && !rates.is_empty() {
            break (up, rates);
        }
        assert!(
            Instant::now() < deadline,
            "after {round} rounds: up {up:?}, rates {rates:?}; prometheus said:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let components: std::collections::BTreeSet<&str> = up
        .iter()
        .filter_map(|s| s["metric"]["component"].as_str())
        .collect();
    assert_eq!(
        components,
        ["gateway", "order", "product", "user"]
            .into_iter()
            .collect()
    );
    let rate: f64 = rates[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(rate > 0.0, "{rates:?}");
    drop(prometheus);
    local.stop();
}

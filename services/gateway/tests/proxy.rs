//! The gateway as a real process in front of real backend processes (`msa-echo`) on
//! 127.0.0.x, each on a port the OS chose: failover when a backend stops, steering away from a
//! slow one, no duplicated POSTs, 503s from an open circuit, header forwarding, and the drain.
//! Every load loop is bounded in count and time.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{ECHO, GATEWAY};
use msa_service_kit::testing::{ServiceProcess, loopback_client, refusing_address};
use serde_json::{Value, json};

struct Backend {
    process: Option<ServiceProcess>,
    addr: SocketAddr,
}

impl Backend {
    /// An `msa-echo` on a port of `host` the OS chooses.
    async fn start(host: [u8; 4]) -> Backend {
        Self::start_with(host, &[]).await
    }

    async fn start_with(host: [u8; 4], flags: &[&str]) -> Backend {
        let process = common::echo(host, flags).await;
        Backend {
            addr: process.addr,
            process: Some(process),
        }
    }

    /// Starts the stopped backend again on its own address, which the gateway's static list
    /// names. The port is free again, and on a loopback address only one test uses nothing
    /// else binds it; should something hold it all the same, the start is tried again (for up
    /// to 30 s) rather than the test failing on a port it does not own.
    async fn start_again(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut command = std::process::Command::new(ECHO);
            command.args(["--listen", &self.addr.to_string()]);
            match ServiceProcess::try_launch(command, self.addr).await {
                Ok(process) => {
                    self.process = Some(process);
                    return;
                }
                Err(failure) if failure.contains("Address already in use") => {
                    assert!(Instant::now() < deadline, "{failure}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(failure) => panic!("{failure}"),
            }
        }
    }

    fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            assert!(process.stop(), "the backend exits cleanly");
        }
    }

    async fn requests(&self, method: &str) -> u64 {
        let stats = get_json(format!("http://{}/__echo/stats", self.addr)).await;
        stats["requests"][method].as_u64().unwrap_or(0)
    }

    async fn slow_down(&self, ms: u64) {
        let response = loopback_client()
            .put(format!("http://{}/__echo/delay?ms={ms}", self.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

fn list(backends: &[&Backend]) -> String {
    backends
        .iter()
        .map(|b| b.addr.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The gateway with every route on `users` (and products on `products`), plus `extra` flags.
async fn gateway(users: &str, products: &str, extra: &[&str]) -> ServiceProcess {
    let mut args = vec![
        "--upstream-user",
        users,
        "--upstream-order",
        users,
        "--upstream-product",
        products,
        "--drain-delay-seconds",
        "0",
        "--worker-threads",
        "2",
    ];
    args.extend_from_slice(extra);
    ServiceProcess::start(GATEWAY, &args, &[("RUST_LOG", "warn")]).await
}

/// Sends `count` GETs (`workers` at a time); returns the statuses. The minute it may take is
/// a bound on the loop, not a check on speed: a test counting on all `count` says so.
async fn load(base: &str, path: &str, count: usize, workers: usize) -> BTreeMap<u16, usize> {
    let client = loopback_client();
    let deadline = Instant::now() + Duration::from_secs(60);
    let per_worker = count / workers;
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let client = client.clone();
            let url = format!("{base}{path}");
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..per_worker {
                    if Instant::now() > deadline {
                        break;
                    }
                    let status = match client.get(&url).send().await {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    };
                    statuses.push(status);
                }
                statuses
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for task in tasks {
        for status in task.await.unwrap() {
            *counts.entry(status).or_default() += 1;
        }
    }
    counts
}

/// The gateway's `/metrics` text.
async fn metrics_text(base: &str) -> String {
    get(format!("{base}/metrics")).await.text().await.unwrap()
}

async fn get(url: impl reqwest::IntoUrl) -> reqwest::Response {
    loopback_client().get(url).send().await.unwrap()
}

async fn get_json(url: String) -> Value {
    let response = get(&url).await;
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

async fn view(base: &str, upstream: &str) -> Value {
    let all = get_json(format!("{base}/debug/endpoints")).await;
    all["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == upstream)
        .cloned()
        .unwrap()
}

fn endpoint(view: &Value, addr: SocketAddr) -> &Value {
    view["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("{addr} not in {view}"))
}

#[tokio::test]
async fn a_stopped_backend_costs_no_gets_is_ejected_within_five_failures_and_readmitted() {
    let a = Backend::start([127, 0, 0, 2]).await;
    // On a loopback address no other test uses: it is started again on the same port.
    let mut b = Backend::start([127, 0, 0, 7]).await;
    let c = Backend::start([127, 0, 0, 4]).await;
    let all = list(&[&a, &b, &c]);
    // Round-robin, so the stopped backend keeps being chosen whatever the latencies on a busy
    // machine: with peak-EWMA it may never be picked again, and never ejected.
    let gw = gateway(
        &all,
        &all,
        &[
            "--outlier-base-ejection-ms",
            "500",
            "--lb-strategy",
            "round-robin",
            // Only failures eject here: on a busy machine a backend that answers late while
            // warming up would be ejected for its latency, and the counts below are of
            // failures.
            "--outlier-latency-factor",
            "0",
        ],
    )
    .await;
    let base = gw.base_url.clone();

    let warm = load(&base, "/users/1", 150, 3).await;
    assert_eq!(warm.get(&200), Some(&150), "{warm:?}");

    b.stop();
    // Sequential GETs, so the failures counted against b before its ejection are exact.
    let during = load(&base, "/users/1", 200, 1).await;
    assert_eq!(
        during.get(&200),
        Some(&200),
        "retries on another endpoint hide the stop from every GET: {during:?}"
    );
    let users = view(&base, "user").await;
    let stopped = endpoint(&users, b.addr);
    assert_eq!(stopped["ejected"], true, "{users}");
    let ejections = stopped["ejections"].as_u64().unwrap();
    let failures = stopped["failures"].as_u64().unwrap();
    // Each failed probe adds one failure and one ejection; the first ejection came at 5.
    assert_eq!(failures - (ejections - 1), 5, "{stopped}");

    b.start_again().await;
    let readmitted = Instant::now();
    loop {
        load(&base, "/users/1", 20, 2).await;
        let users = view(&base, "user").await;
        if endpoint(&users, b.addr)["ejected"] == false {
            break;
        }
        assert!(
            readmitted.elapsed() < Duration::from_secs(30),
            "not readmitted: {users}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = b.requests("GET").await;
    load(&base, "/users/1", 150, 3).await;
    assert!(b.requests("GET").await > before, "traffic returns to b");

    let metrics = metrics_text(&base).await;
    let ejection = format!(
        "msa_gateway_upstream_ejections_total{{upstream=\"user\",endpoint=\"{}\",reason=\"consecutive failures\"}} 1",
        b.addr
    );
    assert!(metrics.contains(&ejection), "{metrics}");
    assert!(metrics.contains("msa_gateway_upstream_readmissions_total{upstream=\"user\""));
    assert!(
        metrics
            .contains("msa_gateway_upstream_retries_total{upstream=\"user\",reason=\"connect\"}")
    );
}

/// Peak-EWMA balancing steers away from a slow endpoint. Checked as behaviour (the slow backend
/// gets less than a fair share), with a delay far above any scheduling noise; how small its
/// share gets is a figure for a benchmark, not a test on a shared machine.
#[tokio::test]
async fn a_slowed_backend_gets_the_least_traffic() {
    let a = Backend::start([127, 0, 0, 2]).await;
    let b = Backend::start([127, 0, 0, 3]).await;
    let slow = Backend::start([127, 0, 0, 4]).await;
    let all = list(&[&a, &b, &slow]);
    let gw = gateway(&all, &all, &[]).await;
    load(&gw.base_url, "/users/1", 90, 3).await;
    slow.slow_down(250).await;
    let before = [
        a.requests("GET").await,
        b.requests("GET").await,
        slow.requests("GET").await,
    ];
    let statuses = load(&gw.base_url, "/users/1", 300, 4).await;
    assert_eq!(
        statuses.keys().collect::<Vec<_>>(),
        [&200],
        "every GET is answered: {statuses:?}"
    );
    let after = [
        a.requests("GET").await,
        b.requests("GET").await,
        slow.requests("GET").await,
    ];
    let served: Vec<u64> = after.iter().zip(before).map(|(x, y)| x - y).collect();
    // Less than its fair third. Not "fewer than each fast one": on a starved machine a fast
    // backend's answer can be late enough for latency ejection to set it aside for a while
    // (seen in CI under load: [299, 0, 1]), which is the balancer working, not failing.
    let total: u64 = served.iter().sum();
    assert!(
        served[2] * 3 < total,
        "the slow backend served less than a third (fast, fast, slow): {served:?}"
    );
}

#[tokio::test]
async fn posts_are_never_sent_twice_while_gets_are_retried() {
    let a = Backend::start([127, 0, 0, 2]).await;
    let slow = Backend::start([127, 0, 0, 3]).await;
    let mut dead = Backend::start([127, 0, 0, 4]).await;
    slow.slow_down(300).await;
    let all = list(&[&a, &slow, &dead]);
    dead.stop();
    let gw = gateway(
        &all,
        &all,
        &[
            "--timeout-per-try-ms",
            "100",
            "--timeout-request-ms",
            "2000",
            "--lb-strategy",
            "round-robin",
            // Keep the circuit closed: this test is about retries alone.
            "--breaker-minimum-calls",
            "100000",
        ],
    )
    .await;
    let client = loopback_client();
    let mut statuses = BTreeMap::<u16, u64>::new();
    let sent = 60;
    for i in 0..sent {
        let response = client
            .post(format!("{}/orders", gw.base_url))
            .json(&json!({"n": i}))
            .send()
            .await
            .unwrap();
        *statuses.entry(response.status().as_u16()).or_default() += 1;
    }
    let (to_a, to_slow) = (a.requests("POST").await, slow.requests("POST").await);
    assert_eq!(
        to_a + to_slow,
        sent,
        "every POST reached exactly one backend: {statuses:?}"
    );
    // Each POST is answered by `a` in time (200) or times out where it went (504), and is not
    // sent again either way. (`a` too may miss the 100 ms on a busy machine: that POST is a
    // 504 sent once, so the tallies are bounds, not equalities.)
    let ok = statuses.get(&200).copied().unwrap_or(0);
    let timed_out = statuses.get(&504).copied().unwrap_or(0);
    assert_eq!(ok + timed_out, sent, "only 200s and 504s: {statuses:?}");
    assert!(ok <= to_a, "a 200 comes from a: {statuses:?}, {to_a} at a");
    assert!(
        to_slow > 0 && timed_out >= to_slow,
        "the POSTs that reached the slow backend timed out and were not retried: {statuses:?}, {to_slow} at slow"
    );

    // The same timeouts are retried for GETs, which are idempotent. A gateway of its own, over
    // `a` and the slow backend, ejecting neither (in the one above, the slow backend's failed
    // POSTs may have it ejected, and then no GET would reach it). Without retries, each GET that
    // reached the slow backend would be a 504; so more 200s than GETs that did not go there
    // means a GET was answered after timing out.
    let both = list(&[&a, &slow]);
    let gw = gateway(
        &both,
        &both,
        &[
            "--timeout-per-try-ms",
            "100",
            "--timeout-request-ms",
            "2000",
            "--lb-strategy",
            "round-robin",
            "--outlier-max-ejection-percent",
            "0",
            "--breaker-minimum-calls",
            "100000",
        ],
    )
    .await;
    let slow_before = slow.requests("GET").await;
    let gets = load(&gw.base_url, "/orders/1", 60, 1).await;
    let reached_slow = slow.requests("GET").await - slow_before;
    let answered = gets.get(&200).copied().unwrap_or(0) as u64;
    assert!(
        reached_slow > 0,
        "round-robin sends GETs to the slow backend too: {gets:?}"
    );
    assert!(
        answered + reached_slow > 60,
        "GETs that timed out were retried: {gets:?}, {reached_slow} reached the slow backend"
    );
}

#[tokio::test]
async fn a_dead_service_trips_its_breaker_into_503s_with_retry_after() {
    let a = Backend::start([127, 0, 0, 2]).await;
    // Held (bound, not listening) for the whole test: nothing else can answer there.
    let (_held, nobody) = refusing_address("127.0.0.5");
    let gw = gateway(
        &a.addr.to_string(),
        &nobody.to_string(),
        &[
            "--breaker-minimum-calls",
            "5",
            "--breaker-open-seconds",
            "30",
        ],
    )
    .await;
    let mut last = None;
    for _ in 0..10 {
        let response = get(format!("{}/products/7", gw.base_url)).await;
        last = Some((
            response.status().as_u16(),
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
            response.json::<Value>().await.unwrap(),
        ));
        let (status, retry_after, body) = last.as_ref().unwrap();
        if body["type"] == "https://msa.dev/problems/circuit-open" {
            break;
        }
        // Issue 15, defect 8: the address and the OS error stay in the gateway's log.
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(
            !detail.contains("127.0.0.5") && !detail.contains("refused"),
            "{detail}"
        );
        // Before the breaker opens: nothing accepted the connection, so nothing was sent and
        // the request may simply be made again — 503 with Retry-After, as Envoy answers.
        assert_eq!(
            (*status, retry_after.as_deref(), body["type"].as_str()),
            (
                503,
                Some("1"),
                Some("https://msa.dev/problems/upstream-unreachable")
            ),
            "{last:?}"
        );
    }
    let (status, retry_after, body) = last.unwrap();
    assert_eq!(status, 503, "{body}");
    let seconds: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=30).contains(&seconds));
    assert_eq!(body["type"], "https://msa.dev/problems/circuit-open");
    assert_eq!(body["upstream"], "product");
    // The breaker is the route's own: the gateway names its scope.
    assert_eq!(body["route"], "GET /products/{id}");
    assert_eq!(view(&gw.base_url, "product").await["breaker"], "open");
    // Other routes are unaffected.
    let users = get(format!("{}/users", gw.base_url)).await;
    assert_eq!(users.status(), 200);
}

#[tokio::test]
async fn requests_are_forwarded_faithfully() {
    let a = Backend::start([127, 0, 0, 2]).await;
    let gw = gateway(&a.addr.to_string(), &a.addr.to_string(), &[]).await;
    let client = loopback_client();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = client
        .put(format!(
            "{}/users/42/__echo/request?tag=a%20b&x=1",
            gw.base_url
        ))
        .header("x-request-id", "req-7")
        .header("traceparent", traceparent)
        .header("connection", "keep-alive, x-private")
        .header("x-private", "hop")
        .header("x-forwarded-for", "203.0.113.9")
        .body("twelve bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "req-7");
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/users/42/__echo/request?tag=a%20b&x=1");
    assert_eq!(echo["body_bytes"], 12);
    let headers = &echo["headers"];
    assert_eq!(headers["x-request-id"], "req-7");
    assert_eq!(headers["traceparent"], traceparent);
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(
        headers["x-forwarded-host"],
        gw.base_url.trim_start_matches("http://")
    );
    assert!(headers.get("x-private").is_none(), "{headers}");

    let generated = get(format!("{}/users/__echo/request", gw.base_url)).await;
    let id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let echo: Value = generated.json().await.unwrap();
    assert_eq!(
        echo["headers"]["x-request-id"], id,
        "a generated id reaches the service"
    );

    // Issue 15, defect 7: an id that is too long or not visible ASCII is replaced, and a
    // malformed traceparent is not passed on.
    let hostile = client
        .get(format!("{}/users/__echo/request", gw.base_url))
        .header("x-request-id", "x".repeat(65))
        .header("traceparent", "00-not-a-trace")
        .send()
        .await
        .unwrap();
    let replaced = hostile.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&replaced).is_ok(), "{replaced}");
    let echo: Value = hostile.json().await.unwrap();
    assert_eq!(echo["headers"]["x-request-id"], replaced.as_str());
    assert!(echo["headers"].get("traceparent").is_none(), "{echo}");

    let info = get_json(format!("{}/info", gw.base_url)).await;
    assert_eq!(
        info["authentication"]["required"], false,
        "an open gateway says so: {info}"
    );

    let missing = get(format!("{}/payments", gw.base_url)).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );

    let big = client
        .post(format!("{}/orders", gw.base_url))
        .body(vec![b'x'; 70 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert_eq!(
        a.requests("POST").await,
        0,
        "refused before reaching the service"
    );
}

/// Proxy requests take the fast path unless they carry `Origin` while CORS is configured;
/// both paths must answer alike and write the same metric series.
#[tokio::test]
async fn the_fast_path_and_the_router_answer_alike() {
    let a = Backend::start([127, 0, 0, 2]).await;
    let origin = "http://shop.example";
    let gw = gateway(
        &a.addr.to_string(),
        &a.addr.to_string(),
        &["--cors-origins", origin],
    )
    .await;
    let client = loopback_client();
    let url = format!("{}/users/7/__echo/request", gw.base_url);
    let fast = client.get(&url).send().await.unwrap();
    let routed = client
        .get(&url)
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    for (path, response) in [("fast", &fast), ("router", &routed)] {
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            response.headers().contains_key("x-request-id"),
            "{path}: a generated request id comes back"
        );
    }
    assert!(!fast.headers().contains_key("access-control-allow-origin"));
    assert_eq!(routed.headers()["access-control-allow-origin"], origin);
    let fast: Value = fast.json().await.unwrap();
    let routed: Value = routed.json().await.unwrap();
    for header in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"] {
        assert_eq!(
            fast["headers"][header], routed["headers"][header],
            "{header}"
        );
    }
    assert_eq!(fast["path"], routed["path"]);

    let preflight = client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", origin)
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], origin);
    assert_eq!(
        a.requests("OPTIONS").await,
        0,
        "the preflight is answered by the gateway"
    );

    let exact = get(format!("{}/users", gw.base_url)).await;
    assert_eq!(exact.status(), 200);
    let metrics = get(format!("{}/metrics", gw.base_url))
        .await
        .text()
        .await
        .unwrap();
    for series in [
        r#"msa_gateway_http_requests_total{method="GET",route="/users/{*rest}",status="200"} 2"#,
        r#"msa_gateway_http_requests_total{method="GET",route="/users",status="200"} 1"#,
        r#"msa_gateway_http_request_duration_seconds_count{method="GET",route="/users/{*rest}"} 2"#,
    ] {
        assert!(metrics.contains(series), "{series} missing in:\n{metrics}");
    }
    // Only the /metrics request itself is in flight.
    assert!(
        metrics.contains("msa_gateway_http_requests_in_flight 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sigterm_fails_readiness_but_keeps_serving_during_the_drain_delay() {
    let a = Backend::start([127, 0, 0, 2]).await;
    let gw = ServiceProcess::start(
        GATEWAY,
        &[
            "--upstream-user",
            &a.addr.to_string(),
            "--upstream-order",
            &a.addr.to_string(),
            "--upstream-product",
            &a.addr.to_string(),
            "--drain-delay-seconds",
            // Long enough for the checks below on a busy machine; the test waits it out.
            "5",
        ],
        &[("RUST_LOG", "warn")],
    )
    .await;
    // A keep-alive connection opened before the signal, served by the gateway's own loop.
    let addr = gw.base_url.trim_start_matches("http://").to_owned();
    let mut kept = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = b"GET /users/1 HTTP/1.1\r\nhost: t\r\n\r\n";
    kept.write_all(request).await.unwrap();
    let mut first = vec![0u8; 4096];
    let n = kept.read(&mut first).await.unwrap();
    let first = String::from_utf8_lossy(&first[..n]).to_lowercase();
    assert!(first.starts_with("http/1.1 200"), "{first}");
    assert!(!first.contains("connection: close"), "{first}");

    gw.terminate();
    // Readiness fails once the gateway has seen the signal; asked until it does (new
    // connections are accepted throughout the drain delay).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ready = get(format!("{}/readyz", gw.base_url)).await;
        if ready.status() == 503 {
            break;
        }
        assert_eq!(ready.status(), 200, "ready until the signal arrives");
        assert!(
            Instant::now() < deadline,
            "readiness still passes 5 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let served = get(format!("{}/users", gw.base_url)).await;
    assert_eq!(served.status(), 200, "still serving while draining");
    assert_eq!(
        served.headers()["connection"],
        "close",
        "new connections are told to go"
    );
    // The kept connection's next answer says so too, and the gateway closes it.
    kept.write_all(request).await.unwrap();
    let (answer, closed) =
        msa_service_kit::testing::read_until_closed(&mut kept, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(closed, "closed after the answer while draining");
    assert!(gw.stop(), "exits cleanly after the drain");
}

/// A backend that answers each connection's first request with keep-alive, then reads the
/// next request on that connection and closes it without answering: the endpoint closing an
/// idle connection just as a request arrives. New connections are answered again.
async fn closing_backend(host: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(format!("{host}:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                for turn in 0..2 {
                    let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buffer))
                            .await
                    else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    if turn == 1 {
                        return; // closed with the request unanswered
                    }
                    let body = r#"{"id":"7"}"#;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, received)
}

#[tokio::test]
async fn a_get_on_a_connection_the_only_endpoint_just_closed_goes_again_on_a_new_one() {
    let (addr, received) = closing_backend("127.0.0.6").await;
    let gw = gateway(&addr.to_string(), &addr.to_string(), &[]).await;
    let http = loopback_client();
    // The first GET opens a connection the gateway keeps; the second reuses it, the backend
    // closes it unanswered, and the gateway sends the GET again on a new connection.
    for round in 0..2 {
        let response = http
            .get(format!("{}/products/7", gw.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {round}");
    }
    assert_eq!(received.load(Ordering::SeqCst), 3, "one GET was sent twice");
    // A POST is never sent twice: the same race is a 502 that says the exchange broke off.
    let post = http
        .post(format!("{}/products", gw.base_url))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 502);
    let body: Value = post.json().await.unwrap();
    assert_eq!(
        body["type"],
        "https://msa.dev/problems/bad-upstream-response"
    );
    assert_eq!(received.load(Ordering::SeqCst), 4);
}

/// An order placement is sent again only when it carries an Idempotency-Key (the order service
/// then places it once, however often it arrives); without one it goes once, as every POST.
#[tokio::test]
async fn an_order_placement_goes_again_only_with_its_idempotency_key() {
    let (addr, received) = closing_backend("127.0.0.8").await;
    let gw = gateway(&addr.to_string(), &addr.to_string(), &[]).await;
    let http = loopback_client();
    let place = |key: Option<&str>| {
        let mut request = http
            .post(format!("{}/orders", gw.base_url))
            .json(&json!({"items": []}));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };
    // The first opens the connection the gateway keeps; the second reuses it, the backend
    // closes it unanswered, and the gateway sends the placement again on a new connection.
    assert_eq!(place(Some("a")).await.unwrap().status(), 200);
    assert_eq!(place(Some("b")).await.unwrap().status(), 200);
    assert_eq!(
        received.load(Ordering::SeqCst),
        3,
        "the keyed POST went twice"
    );
    // The same race without a key: a 502, sent once.
    assert_eq!(place(None).await.unwrap().status(), 502);
    assert_eq!(received.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_thousand_invented_methods_and_paths_add_no_metric_series() {
    let a = Backend::start([127, 0, 0, 2]).await;
    let gw = gateway(&a.addr.to_string(), &a.addr.to_string(), &[]).await;
    let http = loopback_client();
    let series = || async {
        metrics_text(&gw.base_url)
            .await
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("_http_"))
            .count()
    };
    // Two rounds of invented methods and paths. The first reaches every label value a client
    // can reach (each route template or `unmatched`, × the nine methods or `OTHER`, × the
    // statuses the gateway answers); the second, with a thousand new ones, must add none.
    let round = |from: u32, count: u32| {
        let (http, base) = (http.clone(), gw.base_url.clone());
        async move {
            for i in from..from + count {
                let method = reqwest::Method::from_bytes(format!("M{i:05}").as_bytes()).unwrap();
                let path = match i % 3 {
                    0 => format!("/users/{i}/x{i}"),
                    1 => format!("/random-{i}/{}", i * 7),
                    _ => format!("/products?i={i}"),
                };
                let answer = http
                    .request(method, format!("{base}{path}"))
                    .send()
                    .await
                    .unwrap();
                assert!(
                    answer.status().as_u16() < 500,
                    "{path}: {}",
                    answer.status()
                );
            }
        }
    };
    // A scrape counts itself after it is rendered: scrape once so `/metrics` has its series.
    series().await;
    round(0, 300).await;
    let first = series().await;
    round(300, 1000).await;
    let second = series().await;

    assert_eq!(
        first,
        second,
        "a thousand new methods and paths added {} series: a client controls label values",
        second - first
    );
}

/// Issue 15, defect 9: a service failing one route (placing orders, while the product service
/// is down) opens that route's breaker only; its reads keep being answered.
#[tokio::test]
async fn one_failing_route_opens_its_own_breaker_only() {
    let orders = Backend::start_with([127, 0, 0, 2], &["--fail-method", "POST"]).await;
    let gw = gateway(
        &orders.addr.to_string(),
        &orders.addr.to_string(),
        &[
            "--breaker-minimum-calls",
            "5",
            "--breaker-open-seconds",
            "30",
        ],
    )
    .await;
    let client = loopback_client();
    let mut opened = None;
    for _ in 0..20 {
        let response = client
            .post(format!("{}/orders", gw.base_url))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        if body["type"] == "https://msa.dev/problems/circuit-open" {
            opened = Some(body);
            break;
        }
        assert_eq!(status, 503, "{body}");
    }
    let opened = opened.expect("the POST /orders breaker opened");
    assert_eq!(opened["route"], "POST /orders", "{opened}");
    for path in ["/orders/7", "/orders/user/9", "/orders"] {
        let response = get(format!("{}{path}", gw.base_url)).await;
        assert_eq!(response.status(), 200, "{path} is still served");
    }
    let view = view(&gw.base_url, "order").await;
    let state = |route: &str| {
        view["breakers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["route"] == route)
            .map(|b| b["state"].clone())
    };
    assert_eq!(state("POST /orders"), Some(json!("open")), "{view}");
    assert_eq!(state("GET /orders/{id}"), Some(json!("closed")), "{view}");
    let metrics = metrics_text(&gw.base_url).await;
    assert!(
        metrics.contains(
            r#"upstream_breaker_state{upstream="order",route="POST /orders",state="open"} 1"#
        ),
        "{metrics}"
    );
}

/// Issue 15, defect 3, through the gateway: a slow head and a stalled body get 408 when their
/// time is up (1 s here), and the stalled body is not held against the backend.
#[tokio::test]
async fn slow_clients_get_408_at_the_gateway_and_cost_the_backend_nothing() {
    let a = Backend::start([127, 0, 0, 2]).await;
    let gw = gateway(
        &a.addr.to_string(),
        &a.addr.to_string(),
        &[
            "--header-timeout-seconds",
            "1",
            "--body-timeout-seconds",
            "1",
        ],
    )
    .await;
    let address = gw.base_url.trim_start_matches("http://").to_owned();
    for (first_bytes, what) in [
        (&b"GET /users HTTP/1.1\r\nhost: t\r\nx-slow: "[..], "a head"),
        (
            &b"POST /users HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\":"[..],
            "a body",
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let started = Instant::now();
        stream.write_all(first_bytes).await.unwrap();
        let (answer, closed) =
            msa_service_kit::testing::read_until_closed(&mut stream, Duration::from_secs(15)).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 408 "), "{what}: {answer}");
        assert!(closed, "{what}: the connection is closed");
        assert!(started.elapsed() >= Duration::from_millis(900), "{what}");
    }
    assert_eq!(a.requests("POST").await, 0, "nothing reached the backend");
    let backend = endpoint(&view(&gw.base_url, "user").await, a.addr).clone();
    assert_eq!(backend["failures"], 0, "{backend}");
    assert_eq!(get(format!("{}/users", gw.base_url)).await.status(), 200);
}

/// Issue 16 (rate limits): each client address gets `burst` requests at once and `rate` per
/// second after; the rest are 429 with Retry-After and the RateLimit headers; another client is
/// not affected; refusals are counted.
#[tokio::test]
async fn a_client_over_its_rate_gets_429_and_others_do_not() {
    let a = Backend::start([127, 0, 0, 2]).await;
    let gw = gateway(
        &a.addr.to_string(),
        &a.addr.to_string(),
        &["--rate-limit-per-second", "2", "--rate-limit-burst", "5"],
    )
    .await;
    let client = loopback_client();
    let mut statuses = Vec::new();
    let mut refusal = None;
    // Requests one after another until six are refused (at most 100). However long they take,
    // the bucket admits at most its burst plus the rate times the time gone by.
    let started = Instant::now();
    while statuses.iter().filter(|s| **s == 429).count() < 6 && statuses.len() < 100 {
        let response = client
            .get(format!("{}/users", gw.base_url))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 && refusal.is_none() {
            refusal = Some(response);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(&statuses[..5], [200; 5], "the burst: {statuses:?}");
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(refused, 6, "{statuses:?}");
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(admitted + refused, statuses.len(), "{statuses:?}");
    let most = 5.0 + 2.0 * elapsed + 1.0;
    assert!(
        admitted as f64 <= most,
        "{admitted} admitted in {elapsed:.1} s at 2/s after a burst of 5: {statuses:?}"
    );
    let refusal = refusal.unwrap();
    let headers = refusal.headers().clone();
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3).contains(&retry_after), "{headers:?}");
    assert_eq!(headers["ratelimit-policy"], r#""per-client";q=5;w=3"#);
    assert!(
        headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with(r#""per-client";r=0;t="#),
        "{headers:?}"
    );
    let body: Value = refusal.json().await.unwrap();
    assert_eq!(body["type"], "https://msa.dev/problems/rate-limited");

    let other = reqwest::Client::builder()
        .no_proxy()
        .local_address("127.0.0.3".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let response = other
        .get(format!("{}/users", gw.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "another client has its own bucket");
    let metrics = metrics_text(&gw.base_url).await;
    let counted: u64 = metrics
        .lines()
        .find(|l| l.starts_with("msa_gateway_rate_limited_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert_eq!(counted, refused as u64);
}

//! `msa-local up` and `msa-local demo` as a newcomer runs them: start everything (two product
//! replicas), run the demo, check the admin view, stop with Ctrl-C, start again and find the
//! data still there. Every run puts its components on ports the OS chooses (`--port 0`).

use std::process::Command;
use std::time::{Duration, Instant};

use msa_service_kit::testing::loopback_client;
use serde_json::Value;

mod common;

use common::{DataDir, LOCAL, Run, interrupt, signal_and_wait};

/// `msa-local up` with two product replicas, returned once it prints that it is running.
fn up(data: &DataDir) -> Run {
    common::up(&data.0, &["--product-replicas", "2"], &[])
}

async fn get(url: String) -> Value {
    let response = loopback_client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn up_demo_stop_and_up_again_keeps_the_data() {
    let data = DataDir::new("test");
    let run = up(&data);
    let gateway = run.gateway();
    common::demo(
        &gateway,
        None,
        &[
            "Sign up a user",
            "999.99",
            "stock went from 10 to 9",
            "insufficient-stock",
            "10 in stock again",
            "demo finished",
        ],
    );
    let view = get(format!("{gateway}/debug/endpoints")).await;
    let products = view["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "product")
        .unwrap();
    assert_eq!(
        products["endpoints"].as_array().unwrap().len(),
        2,
        "{products}"
    );
    for name in ["user.db", "order.db", "product.db"] {
        assert!(data.0.join(name).is_file(), "{name} under the data folder");
    }
    interrupt(run);

    // Started again (on other ports): the same data.
    let run = up(&data);
    let gateway = run.gateway();
    let users = get(format!("{gateway}/users")).await;
    assert_eq!(users["total"], 1, "{users}");
    let user_id = users["items"][0]["id"].as_str().unwrap().to_owned();
    let orders = get(format!("{gateway}/orders/user/{user_id}")).await;
    let statuses: Vec<&str> = orders["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_str().unwrap())
        .collect();
    // The demo cancelled the order it placed (and had one refused): both kept, and the
    // cancelled order's laptop back in stock.
    assert_eq!(statuses, ["cancelled", "failed"], "{orders}");
    let catalogue = get(format!("{gateway}/products")).await;
    assert_eq!(catalogue["items"][0]["stock"], 10, "{catalogue}");
    interrupt(run);
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 15, defect 11: a replica killed outright is reported and restarted on its own address
/// (the gateway's list names it); meanwhile, and after, the gateway answers every GET.
#[tokio::test]
async fn a_killed_replica_is_restarted_and_clients_never_notice() {
    let data = DataDir::new("kill");
    let run = up(&data);
    let gateway = run.gateway();
    let victim = run.components()["product-1"];
    let victim_address = run.addresses["product-1"];
    assert!(victim.listening().contains(&victim_address));
    let back = || {
        run.components()
            .get("product-1")
            .is_some_and(|now| now.pid != victim.pid && now.listening().contains(&victim_address))
    };

    // GETs one after another: 200 before the kill, then on until the replica has been back
    // for 200 more (bounded in count and time; the time is a bound, not a check on speed).
    let client = loopback_client();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut sent, mut failed, mut back_at) = (0, Vec::new(), None);
    while sent < 5000 && Instant::now() < deadline && back_at.is_none_or(|at| sent < at + 200) {
        if sent == 200 {
            Command::new("kill")
                .args(["-KILL", &victim.pid.to_string()])
                .status()
                .unwrap();
        }
        if sent > 200 && sent % 50 == 0 && back_at.is_none() && back() {
            back_at = Some(sent);
        }
        match client.get(format!("{gateway}/products")).send().await {
            Ok(response) if response.status() == 200 => {}
            Ok(response) => failed.push(response.status().to_string()),
            Err(error) => failed.push(error.to_string()),
        }
        sent += 1;
    }
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    wait_until(
        "product-1 is back on its own address",
        Duration::from_secs(30),
        back,
    );
    let reported = run.said();
    assert!(
        reported.contains("product-1 exited unexpectedly"),
        "{reported}"
    );
    assert!(reported.contains("product-1 started again"), "{reported}");
    interrupt(run);
}

/// Closing the terminal (SIGHUP) stops everything cleanly; and if msa-local itself is killed
/// outright, every component notices and stops too.
#[tokio::test]
async fn no_component_outlives_msa_local() {
    let data = DataDir::new("hup");
    let run = up(&data);
    let hint = std::iter::from_fn(|| run.lines.recv_timeout(Duration::from_secs(5)).ok())
        .find(|line| line.starts_with("try:"))
        .unwrap_or_default();
    assert!(
        hint.contains(&format!("demo --gateway {}", run.gateway())),
        "the demo hint names this run's gateway: {hint:?}"
    );
    signal_and_wait(run, "-HUP");

    let run = up(&data);
    let components = run.components();
    assert_eq!(
        components.keys().collect::<Vec<_>>(),
        run.addresses.keys().collect::<Vec<_>>(),
        "every component found before msa-local is killed"
    );
    // The event broker is one of them: the kernel stops it too (its parent-death signal).
    assert_eq!(components.len(), 6, "{components:?}");
    let mut local = run.take();
    local.kill().unwrap();
    local.wait().unwrap();
    wait_until("every component stopped", Duration::from_secs(30), || {
        components.values().all(|c| !c.is_running())
    });
}

/// The demo's changes are events in the run's JetStream, and `msa-local events` prints them:
/// all of them in order, one type, or one order's history.
#[tokio::test]
async fn the_demos_changes_are_published_and_msa_local_events_prints_them() {
    let data = DataDir::new("events");
    let run = common::up(&data.0, &[], &[]);
    assert!(run.said().contains("starting events"), "{}", run.said());
    common::demo(&run.gateway(), None, &["demo finished"]);
    let events = |extra: &[&str]| -> Vec<String> {
        // The relay publishes within its poll; a moment's wait at most.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = Command::new(LOCAL)
                .args(["events", "--data-dir"])
                .arg(&data.0)
                .args(extra)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(str::to_owned)
                .collect();
            if lines
                .iter()
                .filter(|l| l.contains("order.cancelled"))
                .count()
                == 1
                || Instant::now() > deadline
            {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let all = events(&[]);
    let kinds: Vec<&str> = all
        .iter()
        .map(|line| line.split_whitespace().nth(1).unwrap())
        .collect();
    for kind in [
        "dev.msa.user.registered.v1",
        "dev.msa.product.created.v1",
        "dev.msa.order.placed.v1",
        "dev.msa.order.confirmed.v1",
        "dev.msa.order.failed.v1",
        "dev.msa.order.cancelled.v1",
        "dev.msa.product.stock_changed.v1",
    ] {
        if !kinds.contains(&kind) {
            let service = kind.split('.').nth(2).unwrap();
            let log = std::fs::read_to_string(data.0.join(format!("logs/{service}-0.log")))
                .unwrap_or_default();
            let relay: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("msa_events") || l.contains("async_nats"))
                .collect();
            panic!("{kind} missing from {all:#?}\nthe {service} service's relay said:\n{relay:#?}");
        }
    }
    let cancelled = events(&["--type", "order.cancelled"]);
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    let order = cancelled[0].split_whitespace().nth(2).unwrap().to_owned();
    let history: Vec<String> = events(&["--subject", &order])
        .iter()
        .map(|line| line.split_whitespace().nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(
        history,
        [
            "dev.msa.order.placed.v1",
            "dev.msa.order.confirmed.v1",
            "dev.msa.order.cancelled.v1"
        ]
    );
    interrupt(run);
}

/// A start refused before anything runs (a port in use) leaves no data folder behind.
#[tokio::test]
async fn a_refused_start_creates_nothing() {
    let data = DataDir::new("refused");
    // The gateway's port, held: the services' ports above it are checked too, and any of them
    // in use would be refused the same way.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let output = Command::new(LOCAL)
        .args(["up", "--port", &port.to_string(), "--data-dir"])
        .arg(&data.0)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("already in use"), "{said}");
    assert!(!data.0.exists(), "{} was created", data.0.display());
}

/// Issue 27, item 5: a component that exits before it listens is reported as exited, with the
/// end of its log — by msa-local, and in a test's failure, instead of a timeout that hides it.
#[tokio::test]
async fn a_component_that_exits_before_listening_is_reported_with_its_log() {
    let data = DataDir::new("early-exit");
    // The real binaries, but a product service that cannot start.
    let bin = data.0.with_extension("bin");
    let _ = std::fs::remove_dir_all(&bin);
    std::fs::create_dir_all(&bin).unwrap();
    let real = std::path::Path::new(LOCAL).parent().unwrap();
    for binary in ["msa-user", "msa-order", "msa-gateway"] {
        std::os::unix::fs::symlink(real.join(binary), bin.join(binary)).unwrap();
    }
    std::fs::write(
        bin.join("msa-product"),
        "#!/bin/sh\necho 'cannot open the database: the disk is on fire' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("msa-product"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let flags = ["--bin-dir", bin.to_str().unwrap()];

    let failure = std::panic::catch_unwind(|| common::up(&data.0, &flags, &[]))
        .map(drop)
        .expect_err("the run cannot start");
    let message = failure
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&bin);
    assert!(
        message.contains("msa-local up exited (exit status: 1) before it was running"),
        "{message}"
    );
    assert!(
        message.contains("product-0 exited (exit status: 3) before listening"),
        "{message}"
    );
    assert!(message.contains("the disk is on fire"), "{message}");
}

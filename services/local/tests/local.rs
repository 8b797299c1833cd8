//! `msa-local up` and `msa-local demo` as a newcomer runs them: start everything (two product
//! replicas), run the demo, check the admin view, stop with Ctrl-C, start again and find the
//! data still there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use msa_service_kit::testing::loopback_client;
use serde_json::Value;

mod common;

use common::{LOCAL, Run, free_ports, interrupt, signal_and_wait};

/// `msa-local up` with two product replicas, returned once it prints that it is running.
fn up(port: u16, data: &Path) -> Run {
    up_with_output(port, data).0
}

fn up_with_output(port: u16, data: &Path) -> (Run, std::sync::mpsc::Receiver<String>, PathBuf) {
    common::up(port, data, &["--product-replicas", "2"])
}

async fn get(url: String) -> Value {
    let response = loopback_client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn up_demo_stop_and_up_again_keeps_the_data() {
    let data = std::env::temp_dir().join(format!("msa-local-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let port = free_ports();
    let gateway = format!("http://127.0.0.1:{port}");

    let run = up(port, &data);
    common::demo(
        &gateway,
        None,
        &[
            "Sign up a user",
            "999.99",
            "stock went from 10 to 9",
            "insufficient-stock",
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
        assert!(data.join(name).is_file(), "{name} under the data folder");
    }
    interrupt(run, port);

    let run = up(port, &data);
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
    assert!(statuses.contains(&"confirmed"), "{orders}");
    let catalogue = get(format!("{gateway}/products")).await;
    assert_eq!(catalogue["items"][0]["stock"], 9, "{catalogue}");
    interrupt(run, port);
    let _ = std::fs::remove_dir_all(&data);
}

/// The pid of the process listening on `port` of 127.0.0.1 (read from /proc: its command line
/// holds `--listen 127.0.0.1:<port>`).
fn pid_listening_on(port: u16) -> Option<u32> {
    let wanted = format!("127.0.0.1:{port}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(2)
                .any(|w| w[0] == b"--listen" && w[1] == wanted.as_bytes())
                .then_some(pid)
        })
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 15, defect 11: a replica killed outright is reported and restarted; meanwhile the
/// gateway answers every GET from the other replica.
#[tokio::test]
async fn a_killed_replica_is_restarted_and_clients_never_notice() {
    let data = std::env::temp_dir().join(format!("msa-local-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let port = free_ports();
    let gateway = format!("http://127.0.0.1:{port}");
    let (run, _lines, errors) = up_with_output(port, &data);
    // Plan: gateway, user, order, then the two product replicas.
    let victim_port = port + 4;
    let victim = pid_listening_on(victim_port).expect("product-1 is running");

    let client = loopback_client();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut ok, mut failed) = (0, Vec::new());
    for i in 0..2000 {
        if i == 200 {
            Command::new("kill")
                .args(["-KILL", &victim.to_string()])
                .status()
                .unwrap();
        }
        if Instant::now() > deadline {
            break;
        }
        match client.get(format!("{gateway}/products")).send().await {
            Ok(response) if response.status() == 200 => ok += 1,
            Ok(response) => failed.push(response.status().to_string()),
            Err(error) => failed.push(error.to_string()),
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok >= 1000, "only {ok} GETs within a minute");
    wait_until("the replica is back", Duration::from_secs(20), || {
        pid_listening_on(victim_port).is_some_and(|pid| pid != victim)
            && std::net::TcpStream::connect(("127.0.0.1", victim_port)).is_ok()
    });
    let reported = std::fs::read_to_string(&errors).unwrap();
    assert!(
        reported.contains("product-1 exited unexpectedly"),
        "{reported}"
    );
    assert!(reported.contains("product-1 started again"), "{reported}");
    interrupt(run, port);
    let _ = std::fs::remove_dir_all(&data);
}

/// Closing the terminal (SIGHUP) stops everything cleanly; and if msa-local itself is killed
/// outright, every component notices and stops too.
#[tokio::test]
async fn no_component_outlives_msa_local() {
    let data = std::env::temp_dir().join(format!("msa-local-hup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let port = free_ports();
    let (run, lines, _) = up_with_output(port, &data);
    let hint = std::iter::from_fn(|| lines.recv_timeout(Duration::from_secs(5)).ok())
        .find(|line| line.starts_with("try:"))
        .unwrap_or_default();
    assert!(
        hint.contains(&format!("demo --gateway http://127.0.0.1:{port}")),
        "the demo hint names this run's gateway: {hint:?}"
    );
    signal_and_wait(run, "-HUP", port);

    let mut run = up(port, &data).take();
    run.kill().unwrap();
    run.wait().unwrap();
    wait_until("every component stopped", Duration::from_secs(30), || {
        (0..5).all(|i| pid_listening_on(port + i).is_none())
    });
    let _ = std::fs::remove_dir_all(&data);
}

/// A start refused before anything runs (a port in use) leaves no data folder behind.
#[tokio::test]
async fn a_refused_start_creates_nothing() {
    let data = std::env::temp_dir().join(format!("msa-local-refused-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let port = free_ports();
    let _busy = std::net::TcpListener::bind(("127.0.0.1", port + 2)).unwrap();
    let output = Command::new(LOCAL)
        .args(["up", "--port", &port.to_string(), "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("already in use"), "{said}");
    assert!(!data.exists(), "{} was created", data.display());
}

//! `msa-local up` and `msa-local demo` as a newcomer runs them: start everything (two product
//! replicas), run the demo, check the admin view, stop with Ctrl-C, start again and find the
//! data still there.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use msa_service_kit::testing::loopback_client;
use serde_json::Value;

const LOCAL: &str = env!("CARGO_BIN_EXE_msa-local");

/// A base port with the five after it free.
fn free_ports() -> u16 {
    for _ in 0..50 {
        let base = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if base < 60_000
            && (0..6).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
    panic!("no six free ports in a row");
}

/// `msa-local up`, returned once it prints that it is running.
fn up(port: u16, data: &PathBuf) -> Child {
    up_with_output(port, data).0
}

/// `msa-local up` once it prints that it is running, with the lines it prints after that, and
/// the file its standard error goes to.
fn up_with_output(
    port: u16,
    data: &PathBuf,
) -> (Child, std::sync::mpsc::Receiver<String>, PathBuf) {
    let errors = std::env::temp_dir().join(format!(
        "msa-local-stderr-{port}-{}.txt",
        std::process::id()
    ));
    let mut child = Command::new(LOCAL)
        .args([
            "up",
            "--port",
            &port.to_string(),
            "--product-replicas",
            "2",
            "--data-dir",
        ])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&errors).unwrap())
        .spawn()
        .expect("start msa-local");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("msa is running") => return (child, rx, errors),
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("msa-local up did not report running within 90 s");
            }
        }
    }
}

/// Ctrl-C, as a person would press it; the run must end cleanly and free every port.
fn interrupt(child: Child, port: u16) {
    signal_and_wait(child, "-INT", port);
}

/// Sends `signal` and checks that the run ends cleanly and every port is free.
fn signal_and_wait(mut child: Child, signal: &str, port: u16) {
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "msa-local did not stop on {signal}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "clean exit: {status}");
    for i in 0..5 {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port + i)).is_ok(),
            "port {} freed",
            port + i
        );
    }
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
    let demo = Command::new(LOCAL)
        .args(["demo", "--gateway", &gateway])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&demo.stdout);
    assert!(
        demo.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    for step in [
        "Create a user",
        "999.99",
        "stock went from 10 to 9",
        "insufficient-stock",
        "demo finished",
    ] {
        assert!(printed.contains(step), "{step} in:\n{printed}");
    }
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

    let mut run = up(port, &data);
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

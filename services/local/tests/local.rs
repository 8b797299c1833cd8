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
            Ok(line) if line.starts_with("msa is running") => return child,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("msa-local up did not report running within 90 s");
            }
        }
    }
}

/// Ctrl-C, as a person would press it; the run must end cleanly and free every port.
fn interrupt(mut child: Child, port: u16) {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "msa-local did not stop on Ctrl-C"
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

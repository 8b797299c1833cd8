//! Issue 17, part 4: `msa-local up` writes each component's log as JSON, without terminal colour
//! codes, and `msa-local logs` merges them in time order — one request followed by its id across
//! the gateway and every service it reached.

mod common;

use std::process::Command;

use common::{LOCAL, Local};

fn logs(args: &[&str], data: &std::path::Path) -> Vec<String> {
    let output = Command::new(LOCAL)
        .arg("logs")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn one_request_is_followed_across_every_component() {
    let local = Local::start("logs", &[]);
    let (port, data) = (local.port, local.data.clone());
    let id = format!("follow-me-{}", std::process::id());
    let answer = msa_service_kit::testing::loopback_client()
        .post(format!("http://127.0.0.1:{port}/orders"))
        .header("x-request-id", &id)
        .json(
            &serde_json::json!({"user_id": "00000000-0000-4000-8000-000000000000",
            "items": [{"product_id": "00000000-0000-4000-8000-000000000000", "quantity": 1}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 422, "no such user");
    // The services log after answering; give their writes a moment to land.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    for file in std::fs::read_dir(data.join("logs")).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        assert!(!text.contains('\u{1b}'), "no colour codes in log files");
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("every line is one JSON object");
        }
    }
    let followed = logs(&["--request-id", &id], &data);
    let components: Vec<&str> = followed
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    for component in ["gateway", "order-0", "user-0"] {
        assert!(
            components.contains(&component),
            "{component} in {followed:#?}"
        );
    }
    assert!(followed.iter().all(|l| l.contains(&id)), "{followed:#?}");
    let times: Vec<String> = followed
        .iter()
        .map(|l| {
            let json: serde_json::Value =
                serde_json::from_str(l.split_once(' ').unwrap().1.trim()).unwrap();
            json["timestamp"].as_str().unwrap().to_owned()
        })
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "merged in time order");
    let only_order = logs(&["order"], &data);
    assert!(!only_order.is_empty());
    assert!(
        only_order.iter().all(|l| l.starts_with("order-0 ")),
        "{only_order:#?}"
    );
    local.stop();
}

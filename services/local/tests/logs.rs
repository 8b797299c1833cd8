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
    let data = local.data.clone();
    let id = format!("follow-me-{}", std::process::id());
    let answer = msa_service_kit::testing::loopback_client()
        .post(format!("{}/orders", local.gateway()))
        .header("x-request-id", &id)
        .json(
            &serde_json::json!({"user_id": "00000000-0000-4000-8000-000000000000",
            "items": [{"product_id": "00000000-0000-4000-8000-000000000000", "quantity": 1}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 422, "no such user");
    // Each component logs a request once it has answered it: followed until all three have.
    let components = |followed: &[String]| -> Vec<String> {
        followed
            .iter()
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let followed = loop {
        let followed = logs(&["--request-id", &id], &data);
        let seen = components(&followed);
        if ["gateway", "order-0", "user-0"]
            .iter()
            .all(|c| seen.iter().any(|s| s == c))
        {
            break followed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gateway, order-0 and user-0 within 10 s: {followed:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };

    for file in std::fs::read_dir(data.join("logs")).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        assert!(!text.contains('\u{1b}'), "no colour codes in log files");
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("every line is one JSON object");
        }
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

//! Issue 15, defect 7: a caller's `x-request-id` is kept only when short and visible ASCII, and
//! whatever it contains cannot forge a log field — the real binary, its JSON and text logs read
//! back from a file.

use msa_service_kit::testing::{ServiceProcess, fresh_database, loopback_client};

const USER: &str = env!("CARGO_BIN_EXE_msa-user");

/// Sends `GET /users` with `id` and returns the id the answer carries.
async fn echoed(base: &str, id: &str) -> String {
    let response = loopback_client()
        .get(format!("{base}/users"))
        .header("x-request-id", id)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// The service's log after one request with a hostile but acceptable id.
async fn log_of(format: &str, forged: &str) -> String {
    let url = fresh_database(msa_service_kit::testing::TestBackend::Sqlite, "user").await;
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut command = std::process::Command::new(USER);
    command
        .args(["--listen", &listen.to_string(), "--log-format", format])
        .args(["--database-url", &url]);
    let service = ServiceProcess::launch(command, listen).await;
    assert_eq!(echoed(&service.base_url, forged).await, forged);
    let (clean, log) = service.stop_with_log();
    assert!(clean, "clean exit on SIGTERM:\n{log}");
    log
}

#[tokio::test]
async fn only_short_visible_ids_are_echoed() {
    let url = fresh_database(msa_service_kit::testing::TestBackend::Sqlite, "user").await;
    let service = ServiceProcess::start(USER, &["--database-url", &url], &[]).await;
    assert_eq!(echoed(&service.base_url, "req-42").await, "req-42");
    for refused in ["two words", &"x".repeat(65), "tab\there"] {
        let replaced = echoed(&service.base_url, refused).await;
        assert!(
            uuid::Uuid::parse_str(&replaced).is_ok(),
            "{refused:?} → {replaced}"
        );
    }
}

#[tokio::test]
async fn a_forged_field_stays_inside_its_value_in_json_and_text_logs() {
    let forged = r#"x","level":"ERROR","fake":"1"#;
    let json = log_of("json", forged).await;
    let mut seen = false;
    for line in json.lines() {
        let record: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("every log line is one JSON object ({e}): {line}"));
        if record["span"]["request_id"] == forged {
            seen = true;
            assert_eq!(record["level"], "INFO", "{line}");
            assert!(record.get("fake").is_none(), "{line}");
        }
    }
    assert!(seen, "the request was logged with its id:\n{json}");

    let forged = r#"x"level=ERROR"#;
    let text = log_of("text", forged).await;
    assert!(
        text.contains(r#"request_id="x\"level=ERROR""#),
        "quoted and escaped:\n{text}"
    );
}

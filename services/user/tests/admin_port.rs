//! Issue 16, smaller surface: with `--admin-listen`, `/info` and `/metrics` leave the API's
//! port (which a Service exposes) for the admin address; the probes answer on both; the admin
//! address serves nothing of the API.

use msa_service_kit::testing::{ServiceProcess, expect_statuses, fresh_database, loopback_client};

const USER: &str = env!("CARGO_BIN_EXE_msa-user");

#[tokio::test]
async fn info_and_metrics_move_to_the_admin_address() {
    let url = fresh_database(msa_service_kit::testing::TestBackend::Sqlite, "user").await;
    // The admin address on a loopback address of its own, where the OS chooses its port too.
    let service = ServiceProcess::start(
        USER,
        &["--database-url", &url, "--admin-listen", "127.0.0.2:0"],
        &[],
    )
    .await;
    let admin = service
        .listening()
        .into_iter()
        .find(|a| a.ip() == std::net::Ipv4Addr::new(127, 0, 0, 2))
        .expect("the admin address is listening once the service is ready");
    let api = service.base_url.as_str();
    let admin = &format!("http://{admin}");
    expect_statuses(&[
        (api, "/users", 200),
        (api, "/healthz", 200),
        (api, "/readyz", 200),
        (api, "/metrics", 404),
        (api, "/info", 404),
        (admin, "/healthz", 200),
        (admin, "/readyz", 200),
        (admin, "/metrics", 200),
        (admin, "/info", 200),
        (admin, "/users", 404),
    ])
    .await;
    let metrics = loopback_client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("route=\"/users\""),
        "the API's requests are counted:\n{metrics}"
    );
    assert!(service.stop(), "both listeners stop on SIGTERM");
}

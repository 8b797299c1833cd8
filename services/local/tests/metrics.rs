//! Issue 17: every component's `/metrics` passes `promtool check metrics` after real traffic
//! (so every labelled family has samples), and Prometheus, which asks for OpenMetrics, gets it.

mod common;

use common::Local;

#[tokio::test]
async fn every_components_metrics_pass_promtool() {
    let local = Local::start("metrics", &[]);
    let client = msa_service_kit::testing::loopback_client();
    let gateway = local.gateway();
    // Traffic through every route kind: reads, a write, a 404, a failed order.
    for path in [
        "/products",
        "/users",
        "/orders/user/00000000-0000-4000-8000-000000000000",
    ] {
        client.get(format!("{gateway}{path}")).send().await.unwrap();
    }
    client
        .post(format!("{gateway}/orders"))
        .json(&serde_json::json!({"user_id": "00000000-0000-4000-8000-000000000000", "items": [{"product_id": "00000000-0000-4000-8000-000000000000", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    for (instance, component) in [
        ("gateway", "gateway"),
        ("user-0", "user"),
        ("order-0", "order"),
        ("product-0", "product"),
    ] {
        let url = format!("{}/metrics", local.url(instance));
        let classic = client.get(&url).send().await.unwrap();
        assert!(
            classic.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4"),
            "{component}"
        );
        let text = classic.text().await.unwrap();
        if let Err(said) = msa_exposition::promtool::check_metrics(&text) {
            panic!("{component}: promtool check metrics:\n{said}\n---\n{text}");
        }
        let openmetrics = client
            .get(&url)
            .header(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            )
            .send()
            .await
            .unwrap();
        assert!(
            openmetrics.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text"),
            "{component}"
        );
        assert!(
            openmetrics.text().await.unwrap().ends_with("# EOF\n"),
            "{component}"
        );
    }
    local.stop();
}

//! What the order service's test files share.

use msa_order::peers::Peers;
use msa_service_kit::testing::{self, TestBackend, TestClient};
use msa_upstream::endpoint::parse_list;
use msa_upstream::metrics::UpstreamMetrics;
use msa_upstream::{CallConfig, Discovery, PoolConfig, Upstream};

/// Peers at fixed addresses with the default call policy.
pub fn peers(user_url: &str, product_url: &str) -> Peers {
    let metrics = UpstreamMetrics::register(&mut Default::default());
    let upstream = |name: &str, list: &str| {
        Upstream::new(
            name,
            Discovery::fixed(parse_list(list).unwrap()),
            PoolConfig::default(),
            CallConfig::default(),
            metrics.clone(),
        )
    };
    Peers::new(upstream("user", user_url), upstream("product", product_url))
}

/// The user and product services the order service calls, in-process on fresh databases.
pub async fn neighbours(backend: TestBackend) -> (TestClient, TestClient) {
    let (users, _) =
        testing::start_service(backend, "user", &msa_user::MIGRATOR, msa_user::router).await;
    let (products, _) = testing::start_service(
        backend,
        "product",
        &msa_product::MIGRATOR,
        msa_product::router,
    )
    .await;
    (users, products)
}

//! What the order service's test files share.

use msa_order::peers::Peers;
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

//! The order service as the product service asks it before a return: a record of orders'
//! statuses that each test sets. Each test file uses a part of it, so each declares it with
//! `#[allow(dead_code)]`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use msa_product::orders::OrderClient;
use msa_service_kit::testing::{self, TestBackend, TestClient};
use msa_upstream::Discovery;
use msa_upstream::endpoint::parse_list;
use serde_json::json;

type Statuses = Arc<Mutex<HashMap<String, String>>>;

/// An order service answering `GET /internal/orders/{id}` from a table the test fills; an id it
/// does not list has `otherwise` (no such order when `None`), as the order service answers.
#[derive(Clone)]
pub struct Ledger {
    statuses: Statuses,
    pub book: OrderClient,
}

impl Ledger {
    pub async fn start(otherwise: Option<&str>) -> Ledger {
        let statuses: Statuses = Arc::default();
        let state = (statuses.clone(), otherwise.map(str::to_owned));
        let api = axum::Router::new()
            .route("/internal/orders/{id}", axum::routing::get(settlement))
            .with_state(state);
        let ops = msa_service_kit::server::Ops::new("order", "test", "order-0".into(), None);
        let base = testing::spawn(api, ops).await;
        let address = base.trim_start_matches("http://");
        let book = OrderClient::at(Discovery::fixed(parse_list(address).unwrap()));
        Ledger { statuses, book }
    }

    /// The order service now stores `order` with `status`.
    pub fn set(&self, order: impl ToString, status: &str) {
        self.statuses
            .lock()
            .unwrap()
            .insert(order.to_string(), status.to_owned());
    }
}

async fn settlement(
    State((statuses, otherwise)): State<(Statuses, Option<String>)>,
    Path(id): Path<String>,
) -> Json<serde_json::Value> {
    let status = statuses.lock().unwrap().get(&id).cloned().or(otherwise);
    let returnable = status
        .as_deref()
        .is_none_or(|s| matches!(s, "cancelled" | "failed"));
    Json(json!({"id": id, "status": status, "stock_returnable": returnable}))
}

/// The product service on a fresh database, asking `ledger` before returns.
pub async fn start_with(backend: TestBackend, ledger: &Ledger) -> TestClient {
    let book = ledger.book.clone();
    testing::start_service(backend, "product", &msa_product::MIGRATOR, |db| {
        msa_product::router(db, book)
    })
    .await
    .0
}

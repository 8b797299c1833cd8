//! A bounded random walk over every route (issue 15): random methods, paths, headers and
//! bodies — no 5xx, and a refused request changes no row. On SQLite and PostgreSQL.

use msa_service_kit::testing::{self, TestBackend};
use serde_json::json;

async fn random_requests_get_no_5xx_and_refusals_store_nothing(backend: TestBackend) {
    let (api, db) =
        testing::start_service(backend, "user", &msa_user::MIGRATOR, msa_user::router).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = json!({"name": "Ada", "email": format!("ada{i}@example.com")});
        ids.push(
            api.expect("POST", "/users", Some(body), 201).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    testing::fuzz_routes(
        &api,
        &db,
        testing::FuzzPlan {
            routes: &[
                "POST /users",
                "GET /users",
                "GET /users/{id}",
                "PUT /users/{id}",
                "DELETE /users/{id}",
                "GET /users/{id}/x",
            ],
            ids: &ids,
            fields: &["name", "email"],
            snapshot: &["SELECT id, name, email, created_at, updated_at FROM users ORDER BY id"],
            rounds: 400,
            seed: 0x5eed_0001,
        },
    )
    .await;
}

msa_service_kit::on_both_backends!(random_requests_get_no_5xx_and_refusals_store_nothing);

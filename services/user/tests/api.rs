//! Route-level tests of the user service, each on SQLite and on PostgreSQL, through the same
//! middleware as the binary (served in-process on 127.0.0.1).

use msa_service_kit::db::Database;
use msa_service_kit::testing::{
    self, ServiceProcess, TestBackend, TestClient, expect_problem, fresh_database,
};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

struct Api {
    client: TestClient,
    db: Database,
}

async fn start(backend: TestBackend) -> Api {
    let (client, db) =
        testing::start_service(backend, "user", &msa_user::MIGRATOR, msa_user::router).await;
    Api { client, db }
}

impl Api {
    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        self.client.send(method, path, body).await
    }

    async fn create(&self, name: &str, email: &str) -> Value {
        self.client
            .expect(
                "POST",
                "/users",
                Some(json!({"name": name, "email": email})),
                201,
            )
            .await
    }

    /// Sends and expects a problem+json answer with `status`; returns its body.
    async fn refused(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        status: StatusCode,
    ) -> Value {
        expect_problem(self.send(method, path, body).await, status.as_u16()).await
    }

    async fn count(&self) -> i64 {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users")
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

async fn problem(response: Response, status: StatusCode) -> Value {
    expect_problem(response, status.as_u16()).await
}

async fn create_then_get(backend: TestBackend) {
    let api = start(backend).await;
    let response = api
        .send(
            "POST",
            "/users",
            Some(json!({"name": " Ada Lovelace ", "email": "Ada@Example.com"})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let user: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/users/{}", user["id"].as_str().unwrap()));
    assert_eq!(
        (user["name"].as_str(), user["email"].as_str()),
        (Some("Ada Lovelace"), Some("ada@example.com"))
    );
    uuid::Uuid::parse_str(user["id"].as_str().unwrap()).unwrap();
    user["created_at"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();

    let fetched: Value = api.client.expect("GET", &location, None, 200).await;
    assert_eq!(fetched, user);
}

async fn bad_input_is_refused_and_stores_nothing(backend: TestBackend) {
    let api = start(backend).await;
    let cases = [
        (
            json!({"name": "", "email": "a@example.com"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("name"),
        ),
        (
            json!({"name": "A", "email": "not-an-email"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("email"),
        ),
        (
            json!({"name": "nul\0byte", "email": "a@example.com"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("name"),
        ),
        (
            json!({"name": "\x1b[2Jcleared", "email": "a@example.com"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("name"),
        ),
        (
            json!({"name": "bell\x07", "email": "a@example.com"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("name"),
        ),
        (
            json!({"name": "admin\u{202E}", "email": "a@example.com"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("name"),
        ),
        (
            json!({"name": "A", "email": "a\u{7}@example.com"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("email"),
        ),
        (json!({"name": "A"}), StatusCode::BAD_REQUEST, None),
        (
            json!({"name": 5, "email": "a@example.com"}),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            json!({"name": "A", "email": "a@example.com", "admin": true}),
            StatusCode::BAD_REQUEST,
            None,
        ),
    ];
    for (body, status, field) in cases {
        let answer = problem(api.send("POST", "/users", Some(body.clone())).await, status).await;
        if let Some(field) = field {
            assert_eq!(answer["field"], field, "{body}");
        }
    }
    let malformed = api
        .client
        .http
        .post(format!("{}/users", api.client.base))
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    problem(malformed, StatusCode::BAD_REQUEST).await;
    let not_json = api
        .client
        .http
        .post(format!("{}/users", api.client.base))
        .body("name=A")
        .send()
        .await
        .unwrap();
    problem(not_json, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let huge = json!({"name": "x".repeat(70 * 1024), "email": "a@example.com"});
    api.refused("POST", "/users", Some(huge), StatusCode::PAYLOAD_TOO_LARGE)
        .await;
    assert_eq!(api.count().await, 0);
}

async fn duplicate_emails_conflict_ignoring_case(backend: TestBackend) {
    let api = start(backend).await;
    api.create("Ada", "ada@example.com").await;
    let answer = api
        .refused(
            "POST",
            "/users",
            Some(json!({"name": "Other", "email": "ADA@example.com"})),
            StatusCode::CONFLICT,
        )
        .await;
    assert_eq!(answer["type"], "https://msa.dev/problems/email-taken");
    assert_eq!(api.count().await, 1);

    // Issue 15, defect 6: the same address typed with a composed é and with e + a combining
    // accent looks identical, so it is one account.
    let composed = api.create("René", "ren\u{e9}@example.com").await;
    let decomposed = json!({"name": "Rene", "email": "RENE\u{301}@example.com"});
    api.refused("POST", "/users", Some(decomposed), StatusCode::CONFLICT)
        .await;
    assert_eq!(composed["email"], "ren\u{e9}@example.com");
    assert_eq!(api.count().await, 2);
}

async fn unknown_and_malformed_ids(backend: TestBackend) {
    let api = start(backend).await;
    let missing = uuid::Uuid::new_v4();
    for method in ["GET", "DELETE"] {
        api.refused(
            method,
            &format!("/users/{missing}"),
            None,
            StatusCode::NOT_FOUND,
        )
        .await;
        api.refused(method, "/users/42", None, StatusCode::BAD_REQUEST)
            .await;
    }
    api.refused(
        "PUT",
        &format!("/users/{missing}"),
        Some(json!({"name": "B"})),
        StatusCode::NOT_FOUND,
    )
    .await;
    let answer = api
        .refused("GET", "/nowhere", None, StatusCode::NOT_FOUND)
        .await;
    assert_eq!(answer["type"], "https://msa.dev/problems/no-route");
    api.refused("PATCH", "/users", None, StatusCode::METHOD_NOT_ALLOWED)
        .await;
}

async fn list_is_paginated(backend: TestBackend) {
    let api = start(backend).await;
    for i in 0..5 {
        api.create(&format!("user {i}"), &format!("u{i}@example.com"))
            .await;
    }
    let first: Value = api.client.expect("GET", "/users?limit=2", None, 200).await;
    assert_eq!(
        (first["total"].as_i64(), first["next_offset"].as_i64()),
        (Some(5), Some(2))
    );
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let last: Value = api
        .client
        .expect("GET", "/users?limit=2&offset=4", None, 200)
        .await;
    assert_eq!(last["items"].as_array().unwrap().len(), 1);
    assert!(last.get("next_offset").is_none());
    let all: Value = api.client.expect("GET", "/users", None, 200).await;
    let names: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["user 0", "user 1", "user 2", "user 3", "user 4"]);
    api.refused(
        "GET",
        "/users?limit=0",
        None,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    api.refused(
        "GET",
        "/users?limit=500",
        None,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    api.refused("GET", "/users?limit=many", None, StatusCode::BAD_REQUEST)
        .await;
}

async fn update_is_partial_and_checked(backend: TestBackend) {
    let api = start(backend).await;
    let ada = api.create("Ada", "ada@example.com").await;
    api.create("Grace", "grace@example.com").await;
    let path = format!("/users/{}", ada["id"].as_str().unwrap());

    let renamed: Value = api
        .client
        .expect("PUT", &path, Some(json!({"name": "Ada King"})), 200)
        .await;
    assert_eq!(
        (renamed["name"].as_str(), renamed["email"].as_str()),
        (Some("Ada King"), Some("ada@example.com"))
    );
    assert_eq!(renamed["created_at"], ada["created_at"]);

    for (body, status) in [
        (json!({"email": "grace@example.com"}), StatusCode::CONFLICT),
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"name": "  "}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"email": "nope"}), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        api.refused("PUT", &path, Some(body), status).await;
    }
    let stored: Value = api.client.expect("GET", &path, None, 200).await;
    assert_eq!(stored, renamed, "refused updates changed nothing");
}

async fn delete_removes(backend: TestBackend) {
    let api = start(backend).await;
    let ada = api.create("Ada", "ada@example.com").await;
    let path = format!("/users/{}", ada["id"].as_str().unwrap());
    assert_eq!(
        api.send("DELETE", &path, None).await.status(),
        StatusCode::NO_CONTENT
    );
    api.refused("GET", &path, None, StatusCode::NOT_FOUND).await;
    api.refused("DELETE", &path, None, StatusCode::NOT_FOUND)
        .await;
    // The email is free again.
    api.create("Ada again", "ada@example.com").await;
}

async fn operational_routes(backend: TestBackend) {
    let api = start(backend).await;
    assert_eq!(
        api.send("GET", "/healthz", None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        api.send("GET", "/readyz", None).await.status(),
        StatusCode::OK
    );
    let info: Value = api.client.expect("GET", "/info", None, 200).await;
    assert_eq!(
        (info["name"].as_str(), info["instance"].as_str()),
        (Some("user"), Some("user-0"))
    );
    let spec: Value = api.client.expect("GET", "/openapi.json", None, 200).await;
    assert!(spec["paths"]["/users/{id}"]["put"].is_object());

    // A request id is generated when absent and kept when given.
    let generated = api.send("GET", "/healthz", None).await;
    assert!(uuid::Uuid::parse_str(generated.headers()["x-request-id"].to_str().unwrap()).is_ok());
    let kept = api
        .client
        .http
        .get(format!("{}/users", api.client.base))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "req-123");

    api.send("GET", &format!("/users/{}", uuid::Uuid::new_v4()), None)
        .await;
    let metrics = api
        .send("GET", "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"msa_user_http_requests_total{method="GET",route="/users/{id}",status="404"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("msa_user_http_requests_in_flight"));

    // Readiness means the database answers.
    api.db.pool.close().await;
    let not_ready = api.send("GET", "/readyz", None).await;
    assert_eq!(not_ready.headers()["retry-after"], "1");
    problem(not_ready, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(
        api.send("GET", "/healthz", None).await.status(),
        StatusCode::OK,
        "still alive"
    );
}

async fn data_survives_a_restart(backend: TestBackend) {
    let url = fresh_database(backend, "user").await;
    let binary = env!("CARGO_BIN_EXE_msa-user");
    let first = ServiceProcess::start(binary, &["--database-url", &url], &[]).await;
    let http = testing::loopback_client();
    let created: Value = http
        .post(format!("{}/users", first.base_url))
        .json(&json!({"name": "Ada", "email": "ada@example.com"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(first.stop(), "clean exit on SIGTERM");

    let second = ServiceProcess::start(binary, &["--database-url", &url], &[]).await;
    let fetched: Value = http
        .get(format!(
            "{}/users/{}",
            second.base_url,
            created["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, created);
    assert!(second.stop());
}

msa_service_kit::on_both_backends!(
    create_then_get,
    bad_input_is_refused_and_stores_nothing,
    duplicate_emails_conflict_ignoring_case,
    unknown_and_malformed_ids,
    list_is_paginated,
    update_is_partial_and_checked,
    delete_removes,
    operational_routes,
    data_survives_a_restart,
);

#[test]
fn help_lists_every_flag_with_its_environment_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_msa-user"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--listen",
        "MSA_LISTEN",
        "--database-url",
        "DATABASE_URL",
        "--cors-origins",
        "--body-limit-bytes",
        "--shutdown-grace-seconds",
    ] {
        assert!(
            help.contains(needle),
            "{needle} missing from --help:\n{help}"
        );
    }
}

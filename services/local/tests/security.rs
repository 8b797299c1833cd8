//! Issue 16 on real processes: `msa-local up --auth` (gateway, user, order and product services
//! on 127.0.0.1, each verifying tokens itself). Every request is sent through the gateway and
//! straight at the service behind it, so a service never relies on the gateway: bad tokens are
//! 401, another user's resources are 404, admin work is 403 for users, and the product
//! service's reservation routes answer only the order service's own token. The demo runs with
//! auth on and shows a 401, a cross-user 404 and a 429.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use msa_service_kit::signing::{Grant, SigningKey};
use msa_service_kit::testing::loopback_client;
use serde_json::{Value, json};

use common::{LOCAL, Local};

/// `msa-local token`, as a user would run it.
fn token(data: &Path, user: &str, admin: bool) -> String {
    let mut command = Command::new(LOCAL);
    command
        .args(["token", "--user", user, "--data-dir"])
        .arg(data);
    if admin {
        command.arg("--admin");
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// One request; its status and body.
async fn send(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = loopback_client().request(method.parse().unwrap(), format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    if status == 401 {
        assert!(
            response
                .headers()
                .get("www-authenticate")
                .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")),
            "a 401 names the Bearer scheme: {method} {base}{path}"
        );
    }
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A token whose header and claims are given, signed with nothing (`alg: none`) or with an
/// HMAC keyed by `secret`.
fn forged(header: Value, claims: &Value, secret: Option<&[u8]>) -> String {
    let signing_input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let signature = match secret {
        Some(secret) => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
            B64.encode(ring::hmac::sign(&key, signing_input.as_bytes()).as_ref())
        }
        None => String::new(),
    };
    format!("{signing_input}.{signature}")
}

#[tokio::test]
async fn with_auth_on_no_one_acts_as_anyone_else() {
    let local = Local::start("auth", &["--auth", "--rate-limit-per-second", "1000"]);
    let data = local.data.clone();
    let gateway = local.gateway();
    let [user_svc, order_svc, product_svc] =
        ["user-0", "order-0", "product-0"].map(|instance| local.url(instance));
    let info = send(&local.admin_url("gateway"), "GET", "/info", None, None)
        .await
        .1;
    assert_eq!(info["authentication"]["required"], true, "{info}");
    // The operational routes are not on the API's address, where anyone calls; they are on
    // the admin address, as a pod keeps them off its Service.
    for (instance, path) in [
        ("gateway", "/metrics"),
        ("gateway", "/debug/endpoints"),
        ("gateway", "/info"),
        ("user-0", "/metrics"),
        ("order-0", "/metrics"),
        ("product-0", "/metrics"),
    ] {
        let (status, _) = send(&local.url(instance), "GET", path, None, None).await;
        assert_ne!(status, 200, "{instance}{path} is open on the API's address");
        let admin = local.admin_url(instance);
        let (status, _) = send(&admin, "GET", path, None, None).await;
        assert_eq!(status, 200, "{path} on the admin address of {instance}");
    }

    // Sign-up and the catalogue are open; two users and an admin get tokens.
    let (status, ada) = send(
        &gateway,
        "POST",
        "/users",
        None,
        Some(json!({"name": "Ada", "email": "ada@example.com"})),
    )
    .await;
    assert_eq!(status, 201, "{ada}");
    let ada_id = ada["id"].as_str().unwrap().to_owned();
    let (_, mallory) = send(
        &user_svc,
        "POST",
        "/users",
        None,
        Some(json!({"name": "Mallory", "email": "m@example.com"})),
    )
    .await;
    let mallory_id = mallory["id"].as_str().unwrap().to_owned();
    let ada_token = token(&data, &ada_id, false);
    let mallory_token = token(&data, &mallory_id, false);
    let admin = token(&data, "shop-admin", true);
    let ada_t = Some(ada_token.as_str());
    let mallory_t = Some(mallory_token.as_str());

    // Admin work: users get 403, through the gateway and straight at the service.
    let new_product = json!({"name": "Lamp", "price": "10.00", "stock": 5});
    for base in [&gateway, &product_svc] {
        assert_eq!(
            send(base, "POST", "/products", None, Some(new_product.clone()))
                .await
                .0,
            401,
            "{base}"
        );
        assert_eq!(
            send(base, "POST", "/products", ada_t, Some(new_product.clone()))
                .await
                .0,
            403,
            "{base}"
        );
    }
    let (status, product) = send(
        &gateway,
        "POST",
        "/products",
        Some(&admin),
        Some(new_product),
    )
    .await;
    assert_eq!(status, 201, "{product}");
    let product_id = product["id"].as_str().unwrap().to_owned();
    let product_path = format!("/products/{product_id}");
    for base in [&gateway, &product_svc] {
        let stock = format!("/products/{product_id}/stock");
        assert_eq!(
            send(base, "PUT", &stock, mallory_t, Some(json!({"stock": 0})))
                .await
                .0,
            403
        );
        assert_eq!(
            send(base, "GET", &format!("/products/{product_id}"), None, None)
                .await
                .0,
            200
        );
        assert_eq!(send(base, "GET", "/products", None, None).await.0, 200);
    }
    for base in [&gateway, &user_svc] {
        assert_eq!(
            send(base, "GET", "/users", ada_t, None).await.0,
            403,
            "only admins list users"
        );
        assert_eq!(send(base, "GET", "/users", Some(&admin), None).await.0, 200);
    }

    // Ada orders as herself; naming someone else is refused.
    let line = json!([{"product_id": product_id, "quantity": 1}]);
    let (status, order) = send(
        &gateway,
        "POST",
        "/orders",
        ada_t,
        Some(json!({"items": line})),
    )
    .await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(
        order["user_id"],
        ada_id.as_str(),
        "the order's user comes from the token"
    );
    let order_id = order["id"].as_str().unwrap().to_owned();
    for base in [&gateway, &order_svc] {
        let (status, refused) = send(
            base,
            "POST",
            "/orders",
            mallory_t,
            Some(json!({"user_id": ada_id, "items": line})),
        )
        .await;
        assert_eq!(status, 403, "{refused}");
    }

    // Mallory finds nothing of Ada's, and changes nothing of hers.
    let ada_order = format!("/orders/{order_id}");
    let ada_account = format!("/users/{ada_id}");
    for (base, method, path, body) in [
        (&gateway, "GET", ada_order.clone(), None),
        (&order_svc, "GET", ada_order.clone(), None),
        (&gateway, "GET", format!("/orders/user/{ada_id}"), None),
        (&order_svc, "GET", format!("/orders/user/{ada_id}"), None),
        (
            &gateway,
            "PUT",
            format!("{ada_order}/status"),
            Some(json!({"status": "cancelled"})),
        ),
        (
            &order_svc,
            "PUT",
            format!("{ada_order}/status"),
            Some(json!({"status": "cancelled"})),
        ),
        (&gateway, "GET", ada_account.clone(), None),
        (&user_svc, "GET", ada_account.clone(), None),
        (
            &gateway,
            "PUT",
            ada_account.clone(),
            Some(json!({"email": "mallory@evil.test"})),
        ),
        (
            &user_svc,
            "PUT",
            ada_account.clone(),
            Some(json!({"email": "mallory@evil.test"})),
        ),
        (&gateway, "DELETE", ada_account.clone(), None),
        (&user_svc, "DELETE", ada_account.clone(), None),
    ] {
        let (status, answer) = send(base, method, &path, mallory_t, body.clone()).await;
        assert_eq!(status, 404, "{method} {base}{path}: {answer}");
        // Without any token it is 401, even straight at the service.
        assert_eq!(
            send(base, method, &path, None, body).await.0,
            401,
            "{method} {base}{path}"
        );
    }
    let (_, account) = send(&user_svc, "GET", &ada_account, ada_t, None).await;
    assert_eq!(account["email"], "ada@example.com", "untouched: {account}");
    let (_, mine) = send(&order_svc, "GET", &ada_order, ada_t, None).await;
    assert_eq!(mine["status"], "confirmed", "{mine}");

    // Headers a client sets carry no identity; neither do forged tokens.
    let spoofed = loopback_client()
        .get(format!("{order_svc}{ada_order}"))
        .header("x-msa-subject", &ada_id)
        .header("x-msa-roles", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), 401);
    let claims = json!({"iss": "msa-local", "aud": "msa", "sub": ada_id, "roles": ["admin"],
        "exp": 4_000_000_000u64, "nbf": 0});
    let public_jwks: Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("identity/users.jwks.json")).unwrap(),
    )
    .unwrap();
    let public_key = B64
        .decode(public_jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let stranger = SigningKey::generate("users")
        .unwrap()
        .issue(&Grant {
            issuer: "msa-local",
            audience: "msa",
            subject: &ada_id,
            roles: &["admin"],
            lifetime: Duration::from_secs(600),
        })
        .unwrap();
    let other_audience = token_with(&data, "users", "msa-local", "someone-else", &ada_id);
    let other_issuer = token_with(&data, "users", "someone-else", "msa", &ada_id);
    let users_key = SigningKey::from_pkcs8(
        &std::fs::read(data.join("identity/users.key")).unwrap(),
        "users",
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signed = |exp: u64, nbf: u64| {
        users_key
            .sign(&json!({"iss": "msa-local", "aud": "msa", "sub": ada_id, "exp": exp, "nbf": nbf}))
            .unwrap()
    };
    for (what, bad) in [
        (
            "alg none",
            forged(json!({"alg": "none", "typ": "JWT"}), &claims, None),
        ),
        (
            "HS256 keyed with the public key",
            forged(
                json!({"alg": "HS256", "kid": "users"}),
                &claims,
                Some(&public_key),
            ),
        ),
        ("another key", stranger),
        ("another audience", other_audience),
        ("another issuer", other_issuer),
        ("expired an hour ago", signed(now - 3600, now - 7200)),
        ("valid only in an hour", signed(now + 7200, now + 3600)),
    ] {
        for (base, path) in [
            (&gateway, &ada_account),
            (&user_svc, &ada_account),
            (&order_svc, &ada_order),
        ] {
            let (status, answer) = send(base, "GET", path, Some(&bad), None).await;
            assert_eq!(status, 401, "{what} at {base}: {answer}");
        }
    }

    // Shipping is admin work; the owner may cancel.
    for base in [&gateway, &order_svc] {
        let ship = json!({"status": "shipped"});
        assert_eq!(
            send(
                base,
                "PUT",
                &format!("{ada_order}/status"),
                ada_t,
                Some(ship)
            )
            .await
            .0,
            403
        );
    }

    // The reservation routes take the order service's token only.
    let reservation = format!("/reservations/{order_id}");
    let order_service_token = std::fs::read_to_string(data.join("identity/order.token")).unwrap();
    let impostor = token_with(
        &data,
        "services",
        "msa-local-services",
        "msa-product",
        "msa-local:gateway",
    );
    for (who, credential, expected) in [
        ("nobody", None, 401),
        ("a user", ada_t, 403),
        ("an admin", Some(admin.as_str()), 403),
        ("another service", Some(impostor.as_str()), 403),
        ("the order service", Some(order_service_token.trim()), 200),
    ] {
        let (status, answer) = send(&product_svc, "GET", &reservation, credential, None).await;
        assert_eq!(status, expected, "{who}: {answer}");
        let release = format!("{reservation}/release");
        if expected != 200 {
            assert_eq!(
                send(&product_svc, "POST", &release, credential, None)
                    .await
                    .0,
                expected,
                "{who}"
            );
            let reserve = json!({"id": uuid::Uuid::new_v4(), "items": [{"product_id": product_id, "quantity": 1}]});
            assert_eq!(
                send(
                    &product_svc,
                    "POST",
                    "/reservations",
                    credential,
                    Some(reserve)
                )
                .await
                .0,
                expected,
                "{who}"
            );
        }
    }
    let product_now = send(&product_svc, "GET", &product_path, None, None).await.1;
    assert_eq!(
        product_now["stock"], 4,
        "refused reservation calls moved no stock: {product_now}"
    );

    // Issue 27: even the order service's own token cannot take a confirmed order's stock back;
    // the product service asks the order service, which says the order stands.
    let (status, answer) = send(
        &product_svc,
        "POST",
        &format!("{reservation}/return"),
        Some(order_service_token.trim()),
        None,
    )
    .await;
    assert_eq!(
        (status, answer["type"].as_str()),
        (409, Some("https://msa.dev/problems/order-not-cancelled")),
        "{answer}"
    );
    let product_now = send(&product_svc, "GET", &product_path, None, None).await.1;
    assert_eq!(
        product_now["stock"], 4,
        "the stock stays sold: {product_now}"
    );
    // The order service answers that question to the product service only, and the gateway
    // does not route it.
    let settlement = format!("/internal/orders/{order_id}");
    let product_service_token =
        std::fs::read_to_string(data.join("identity/product.token")).unwrap();
    for (who, credential, expected) in [
        ("nobody", None, 401),
        ("a user", ada_t, 403),
        ("an admin", Some(admin.as_str()), 403),
        (
            "a token for the product service",
            Some(order_service_token.trim()),
            401,
        ),
        (
            "the product service",
            Some(product_service_token.trim()),
            200,
        ),
    ] {
        let (status, answer) = send(&order_svc, "GET", &settlement, credential, None).await;
        assert_eq!(status, expected, "{who}: {answer}");
        if status == 200 {
            assert_eq!(
                (
                    answer["status"].as_str(),
                    answer["stock_returnable"].as_bool()
                ),
                (Some("confirmed"), Some(false)),
                "{answer}"
            );
        }
    }
    let through_gateway = send(&gateway, "GET", &settlement, ada_t, None).await;
    assert_eq!(through_gateway.0, 404, "{}", through_gateway.1);

    let (status, cancelled) = send(
        &gateway,
        "PUT",
        &format!("{ada_order}/status"),
        ada_t,
        Some(json!({"status": "cancelled"})),
    )
    .await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (200, Some("cancelled")),
        "{cancelled}"
    );
    let product_now = send(&product_svc, "GET", &product_path, None, None).await.1;
    assert_eq!(
        product_now["stock"], 5,
        "the order service gave the stock back with its own token"
    );
    local.stop();
}

/// A token signed with the run's own `issuer` key (`users` or `services`) but with other claims.
fn token_with(data: &Path, issuer: &str, iss: &str, audience: &str, subject: &str) -> String {
    let pkcs8 = std::fs::read(data.join(format!("identity/{issuer}.key"))).unwrap();
    SigningKey::from_pkcs8(&pkcs8, issuer)
        .unwrap()
        .issue(&Grant {
            issuer: iss,
            audience,
            subject,
            roles: &[],
            lifetime: Duration::from_secs(600),
        })
        .unwrap()
}

#[tokio::test]
async fn the_demo_shows_a_401_a_cross_user_404_and_a_429_with_auth_on() {
    let local = Local::start("auth-demo", &["--auth"]);
    common::demo(
        &local.gateway(),
        Some(&local.data),
        &[
            "authentication is on",
            "401: sign in first",
            "404: another user's order",
            "429",
            "Retry-After",
            "demo finished",
        ],
    );
    local.stop();
}

//! Issue 16 (authentication at the gateway): real gateway and backend processes on 127.0.0.x,
//! tokens made here with keys made here. Every way a token can be wrong is a 401 with an RFC
//! 6750 challenge; a valid one reaches the service as `x-msa-subject`/`x-msa-roles`, which no
//! client can set itself; a key added to the JWKS file is used at once.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use msa_service_kit::testing::loopback_client;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair};
use serde_json::{Value, json};

const ISSUER: &str = "https://issuer.test";

struct Ed25519 {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

fn ed25519() -> Ed25519 {
    let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    Ed25519 {
        pkcs8: pkcs8.as_ref().to_vec(),
        public: pair.public_key().as_ref().to_vec(),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, audience: &str, issuer: &str, exp: u64, nbf: u64) -> Value {
    json!({"sub": sub, "aud": audience, "iss": issuer, "exp": exp, "nbf": nbf, "roles": ["customer"]})
}

fn sign(alg: Algorithm, kid: &str, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn jwks(keys: &[(&str, &Ed25519)], ec: Option<(&str, &[u8])>) -> String {
    let mut list: Vec<Value> = keys
        .iter()
        .map(|(kid, key)| {
            json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(&key.public), "kid": kid, "alg": "EdDSA", "use": "sig"})
        })
        .collect();
    if let Some((kid, point)) = ec {
        // An uncompressed P-256 point: 0x04, x (32 bytes), y (32 bytes).
        list.push(json!({"kty": "EC", "crv": "P-256", "kid": kid,
            "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])}));
    }
    json!({ "keys": list }).to_string()
}

/// Sends GET `path` with `token`; returns the status, the challenge and the body.
async fn call(base: &str, path: &str, token: Option<&str>, spoof: bool) -> (u16, String, Value) {
    let mut request = loopback_client().get(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if spoof {
        request = request
            .header("x-msa-subject", "mallory")
            .header("x-msa-roles", "admin");
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        challenge,
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn only_valid_tokens_pass_and_their_identity_reaches_the_service() {
    let dir = std::env::temp_dir().join(format!("msa-auth-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks_file = dir.join("jwks.json");
    let signing = ed25519();
    let ec_pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &SystemRandom::new(),
    )
    .unwrap();
    let ec_pair = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        ec_pkcs8.as_ref(),
        &SystemRandom::new(),
    )
    .unwrap();
    let ec_point = ec_pair.public_key().as_ref().to_vec();
    std::fs::write(
        &jwks_file,
        jwks(&[("ed-1", &signing)], Some(("ec-1", &ec_point))),
    )
    .unwrap();

    let jwks_arg = jwks_file.display().to_string();
    let (_backend, _, gateway) = common::echo_behind_gateway(&[
        "--auth-issuer",
        ISSUER,
        "--auth-audiences",
        "shop",
        "--auth-jwks-file",
        &jwks_arg,
        "--auth-public-routes",
        "GET /products,GET /products/{id},GET /products/{*rest}",
        "--auth-clock-skew-seconds",
        "5",
    ])
    .await;
    let base = gateway.base_url.clone();
    let ed_key = EncodingKey::from_ed_der(&signing.pkcs8);
    let t = now();
    let good = sign(
        Algorithm::EdDSA,
        "ed-1",
        &claims("alice", "shop", ISSUER, t + 600, t - 10),
        &ed_key,
    );
    let echo = "/users/__echo/request";

    let info: Value = loopback_client()
        .get(format!("{base}/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["authentication"]["required"], true, "{info}");

    // No token: a plain challenge. A public route needs none, and a spoofed identity is dropped.
    let (status, challenge, _) = call(&base, echo, None, false).await;
    assert_eq!((status, challenge.as_str()), (401, "Bearer realm=\"msa\""));
    let (status, _, body) = call(&base, "/products/__echo/request", None, true).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["headers"].get("x-msa-subject").is_none(), "{body}");
    assert!(body["headers"].get("x-msa-roles").is_none(), "{body}");
    let (status, _, body) = call(&base, "/products/7", None, false).await;
    assert_eq!(status, 200, "{body}");

    // A valid token: the service learns who, and nobody else's claim survives.
    let (status, _, body) = call(&base, echo, Some(&good), true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-msa-subject"], "alice");
    assert_eq!(body["headers"]["x-msa-roles"], "customer");

    // Every way to be wrong.
    let other = ed25519();
    let other_key = EncodingKey::from_ed_der(&other.pkcs8);
    let mut no_sub = claims("x", "shop", ISSUER, t + 600, t - 10);
    no_sub.as_object_mut().unwrap().remove("sub");
    let none = format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(claims("alice", "shop", ISSUER, t + 600, t - 10).to_string())
    );
    // Algorithm confusion: HS256 "signed" with the public key the gateway trusts.
    let confused = sign(
        Algorithm::HS256,
        "ed-1",
        &claims("alice", "shop", ISSUER, t + 600, t - 10),
        &EncodingKey::from_secret(&signing.public),
    );
    let cases = [
        (
            "expired",
            sign(
                Algorithm::EdDSA,
                "ed-1",
                &claims("alice", "shop", ISSUER, t - 3600, t - 7200),
                &ed_key,
            ),
            "expired",
        ),
        (
            "not yet valid",
            sign(
                Algorithm::EdDSA,
                "ed-1",
                &claims("alice", "shop", ISSUER, t + 7200, t + 3600),
                &ed_key,
            ),
            "not valid yet",
        ),
        (
            "another audience",
            sign(
                Algorithm::EdDSA,
                "ed-1",
                &claims("alice", "billing", ISSUER, t + 600, t - 10),
                &ed_key,
            ),
            "audience",
        ),
        (
            "another issuer",
            sign(
                Algorithm::EdDSA,
                "ed-1",
                &claims("alice", "shop", "https://evil.test", t + 600, t - 10),
                &ed_key,
            ),
            "issuer",
        ),
        (
            "another key",
            sign(
                Algorithm::EdDSA,
                "ed-1",
                &claims("alice", "shop", ISSUER, t + 600, t - 10),
                &other_key,
            ),
            "signature",
        ),
        (
            "no subject",
            sign(Algorithm::EdDSA, "ed-1", &no_sub, &ed_key),
            "claim",
        ),
        ("alg none", none, "algorithm"),
        ("HS256 with the public key", confused, "no key"),
        ("garbage", "not.a.token".to_owned(), "malformed"),
    ];
    for (case, token, says) in cases {
        let (status, challenge, body) = call(&base, echo, Some(&token), false).await;
        assert_eq!(status, 401, "{case}: {body}");
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{case}: {challenge}"
        );
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{case}: {detail}");
        assert_eq!(
            body["type"], "https://msa.dev/problems/unauthorized",
            "{case}"
        );
    }

    // ES256 from the same JWKS.
    let ec_token = sign(
        Algorithm::ES256,
        "ec-1",
        &claims("bob", "shop", ISSUER, t + 600, t - 10),
        &EncodingKey::from_ec_der(ec_pkcs8.as_ref()),
    );
    let (status, _, body) = call(&base, echo, Some(&ec_token), false).await;
    assert_eq!(
        (status, body["headers"]["x-msa-subject"].as_str()),
        (200, Some("bob"))
    );

    // Rotation: a new key in the JWKS works at once (an unknown kid makes the gateway read it).
    let rotated = ed25519();
    let rotated_token = sign(
        Algorithm::EdDSA,
        "ed-2",
        &claims("carol", "shop", ISSUER, t + 600, t - 10),
        &EncodingKey::from_ed_der(&rotated.pkcs8),
    );
    let (status, _, _) = call(&base, echo, Some(&rotated_token), false).await;
    assert_eq!(status, 401, "not yet in the JWKS");
    std::fs::write(
        &jwks_file,
        jwks(&[("ed-1", &signing), ("ed-2", &rotated)], None),
    )
    .unwrap();
    // The file is read again at most once a second: asked until it is (a bounded wait).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let body = loop {
        let (status, _, body) = call(&base, echo, Some(&rotated_token), false).await;
        if status == 200 {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new key was not used within 10 s: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(body["headers"]["x-msa-subject"], "carol", "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 16, smaller surface: with `--admin-listen` the gateway's `/info`, `/metrics` and
/// `/debug/endpoints` are on the admin address only; the proxy routes and probes stay.
#[tokio::test]
async fn admin_routes_leave_the_public_port() {
    // The admin address on a loopback address of its own, where the OS chooses its port too.
    let (_backend, _, gateway) =
        common::echo_behind_gateway(&["--admin-listen", "127.0.0.3:0"]).await;
    let admin = gateway
        .listening()
        .into_iter()
        .find(|a| a.ip() == std::net::Ipv4Addr::new(127, 0, 0, 3))
        .expect("the admin address is listening once the gateway is ready");
    let public = gateway.base_url.as_str();
    let admin = &format!("http://{admin}");
    msa_service_kit::testing::expect_statuses(&[
        (public, "/users", 200),
        (public, "/readyz", 200),
        (public, "/metrics", 404),
        (public, "/info", 404),
        (public, "/debug/endpoints", 404),
        (admin, "/metrics", 200),
        (admin, "/info", 200),
        (admin, "/debug/endpoints", 200),
        (admin, "/users", 404),
    ])
    .await;
}

/// Issue 16: keys from the issuer's JWKS URL (here a JWKS served on loopback by the test). A key
/// the issuer adds is used at once (an unknown `kid` makes the gateway fetch again); a URL that
/// is neither https nor loopback is refused at start.
#[tokio::test]
async fn keys_come_from_a_jwks_url_and_rotate_at_once() {
    let served = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let first = ed25519();
    *served.lock().unwrap() = jwks(&[("url-1", &first)], None);
    let document = served.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let document = document.lock().unwrap().clone();
                async move { document }
            }),
        );
        axum::serve(listener, app).await.unwrap();
    });
    let url = format!("http://{address}/jwks");
    let (_backend, _, gateway) = common::echo_behind_gateway(&[
        "--auth-issuer",
        ISSUER,
        "--auth-audiences",
        "shop",
        "--auth-jwks-url",
        &url,
    ])
    .await;
    let base = gateway.base_url.clone();
    let t = now();
    let token = |kid: &str, key: &Ed25519| {
        sign(
            Algorithm::EdDSA,
            kid,
            &claims("alice", "shop", ISSUER, t + 600, t - 10),
            &EncodingKey::from_ed_der(&key.pkcs8),
        )
    };
    let echo = "/users/__echo/request";
    let (status, _, body) = call(&base, echo, Some(&token("url-1", &first)), false).await;
    assert_eq!(status, 200, "{body}");

    // The issuer rotates: a new key joins the set and signs from now on.
    let second = ed25519();
    *served.lock().unwrap() = jwks(&[("url-1", &first), ("url-2", &second)], None);
    // (The URL is fetched at most once a second, and it was just fetched at start.)
    let fresh = token("url-2", &second);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, _, body) = call(&base, echo, Some(&fresh), false).await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new key was not used within 10 s: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A key the issuer never published stays refused.
    let (status, _, _) = call(&base, echo, Some(&token("url-3", &ed25519())), false).await;
    assert_eq!(status, 401);

    let refused = std::process::Command::new(common::GATEWAY)
        .args(["--auth-issuer", ISSUER, "--auth-audiences", "shop"])
        .args(["--auth-jwks-url", "http://198.18.0.1/jwks"])
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("must be https"), "{said}");
}

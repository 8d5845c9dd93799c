//! Authentication, roles, rate limits and security headers against the real server.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use crate::app::{TestApp, flotilla, metric, spawn_app};

const VIEWER: &str = "flk_viewer_key_for_tests";
const OPERATOR: &str = "flk_operator_key_for_tests";
const ADMIN: &str = "flk_admin_key_for_tests";
const SECRET: &str = "hs256-test-secret-canary-7731-long-enough";

fn hash(key: &str) -> String {
    flotilla_server::auth::hash_key(key)
}

fn config(extra: &str) -> String {
    format!(
        r#"
auth:
  mode: any
  api_keys:
    - {{ name: viewer-key, role: viewer, hash: "{}" }}
    - {{ name: operator-key, role: operator, hash: "{}" }}
    - {{ name: admin-key, role: admin, hash: "{}" }}
  jwt: {{ algorithm: HS256, secret: "{SECRET}", issuer: flotilla-tests, audience: flotilla }}
agents:
  echo: {{ kind: builtin, builtin: echo }}
{extra}"#,
        hash(VIEWER),
        hash(OPERATOR),
        hash(ADMIN)
    )
}

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    credential: Option<&str>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = match method {
        "GET" => app.client.get(app.url(path)),
        _ => app.client.post(app.url(path)),
    };
    if let Some(c) = credential {
        req = req.bearer_auth(c);
    }
    if method == "POST" {
        req = req.json(&match path {
            "/api/v1/execute" => json!({"agent": "echo", "input": 1}),
            "/api/v1/agents/register" => {
                json!({"name": "remote-one", "endpoints": ["http://127.0.0.1:9/run"]})
            }
            _ => json!({}),
        });
    }
    let r = req.send().await.unwrap();
    let code = r.status().as_u16();
    let headers = r.headers().clone();
    (code, r.json().await.unwrap_or(Value::Null), headers)
}

fn token(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(role: &str, exp_offset: i64, aud: &str) -> Value {
    json!({"sub": format!("svc-{role}"), "role": role, "iss": "flotilla-tests", "aud": aud,
           "exp": (now() as i64 + exp_offset) as u64})
}

#[tokio::test]
async fn each_role_against_each_route_group() {
    let app = spawn_app(&config("")).await;
    let routes = [
        ("GET", "/api/v1/runs"),
        ("POST", "/api/v1/execute"),
        ("POST", "/api/v1/agents/register"),
    ];
    // (credential, expected codes for read, operate, admin)
    let table: [(Option<&str>, [u16; 3]); 5] = [
        (None, [401, 401, 401]),
        (Some("flk_not_a_key"), [401, 401, 401]),
        (Some(VIEWER), [200, 403, 403]),
        (Some(OPERATOR), [200, 200, 403]),
        (Some(ADMIN), [200, 200, 200]),
    ];
    for (cred, expected) in table {
        for ((method, path), want) in routes.iter().zip(expected) {
            let (code, body, headers) = call(&app, method, path, cred).await;
            assert_eq!(code, want, "{cred:?} {method} {path}: {body}");
            match code {
                401 => {
                    assert_eq!(body["error"], "unauthorized");
                    assert_eq!(headers["www-authenticate"], "Bearer");
                }
                403 => assert_eq!(body["error"], "forbidden"),
                _ => {}
            }
        }
    }
    for open in [
        "/health",
        "/ready",
        "/livez",
        "/readyz",
        "/version",
        "/openapi.json",
        "/metrics",
    ] {
        assert_eq!(
            call(&app, "GET", open, None).await.0,
            200,
            "{open} stays open"
        );
    }
    let r = app
        .client
        .get(app.url("/api/v1/agents"))
        .header("x-api-key", VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "X-API-Key works too");
    for h in [
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
    ] {
        assert!(r.headers().contains_key(h), "{h} missing");
    }
    assert!(
        !r.headers().contains_key("strict-transport-security"),
        "HSTS only under TLS"
    );
}

#[tokio::test]
async fn jwt_tokens_are_checked() {
    let app = spawn_app(&config("")).await;
    let app = &app;
    let exec = |t: String| async move { call(app, "POST", "/api/v1/execute", Some(&t)).await };
    let (code, body, _) = exec(token(claims("operator", 300, "flotilla"), SECRET)).await;
    assert_eq!(code, 200, "{body}");
    let cases = [
        (
            token(claims("operator", -120, "flotilla"), SECRET),
            401,
            "expired",
        ),
        (
            token(claims("operator", 300, "flotilla"), "another-secret"),
            401,
            "bad signature",
        ),
        (
            token(claims("operator", 300, "someone-else"), SECRET),
            401,
            "wrong audience",
        ),
        (
            token(claims("viewer", 300, "flotilla"), SECRET),
            403,
            "operator",
        ),
        (
            token(
                json!({"sub": "x", "iss": "flotilla-tests", "aud": "flotilla", "exp": now() + 300}),
                SECRET,
            ),
            403,
            "operator",
        ),
        ("not.a.token".to_owned(), 401, "invalid token"),
    ];
    for (t, code, words) in cases {
        let (got, body, _) = exec(t).await;
        assert_eq!(got, code, "{body}");
        assert!(body["message"].as_str().unwrap().contains(words), "{body}");
    }
    assert!(
        !app.log_text().contains(SECRET),
        "the JWT secret never reaches the logs"
    );
}

#[tokio::test]
async fn rs256_tokens_with_a_public_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private.pem");
    let public = dir.path().join("public.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(ok.success());
    let app = spawn_app(&format!(
        "auth:\n  mode: jwt\n  jwt: {{ algorithm: RS256, public_key: \"file:{}\" }}\nagents:\n  echo: {{ kind: builtin, builtin: echo }}\n",
        public.display()
    ))
    .await;
    let key = EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let t = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({"sub": "svc", "role": "operator", "exp": now() + 300}),
        &key,
    )
    .unwrap();
    assert_eq!(call(&app, "POST", "/api/v1/execute", Some(&t)).await.0, 200);
    let forged = token(
        json!({"sub": "svc", "role": "admin", "exp": now() + 300}),
        "guess",
    );
    assert_eq!(
        call(&app, "POST", "/api/v1/execute", Some(&forged)).await.0,
        401,
        "HS256 is not accepted for RS256"
    );
}

#[tokio::test]
async fn rate_limits_per_principal_answer_429_with_retry_after() {
    let app = spawn_app(&config(
        // One token each 10 s: the four requests below need not land within a tight window.
        "rate_limits:\n  groups: { read: { per_second: 0.1, burst: 3 } }\n",
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(call(&app, "GET", "/api/v1/runs", Some(VIEWER)).await.0, 200);
    }
    let (code, body, headers) = call(&app, "GET", "/api/v1/runs", Some(VIEWER)).await;
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["error"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=10).contains(&retry),
        "a token returns within 10 s at 0.1/s: {retry}"
    );
    assert_eq!(
        call(&app, "GET", "/api/v1/runs", Some(ADMIN)).await.0,
        200,
        "another principal has its own bucket"
    );
    assert_eq!(
        call(&app, "POST", "/api/v1/execute", Some(OPERATOR))
            .await
            .0,
        200,
        "other groups are not limited"
    );
    tokio::time::sleep(std::time::Duration::from_secs(retry)).await;
    // Admitted again once Retry-After has passed (polled, in case this machine is slow).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut limited = 0.0;
    loop {
        let code = call(&app, "GET", "/api/v1/runs", Some(VIEWER)).await.0;
        if code == 200 {
            break;
        }
        assert_eq!(code, 429);
        limited += 1.0;
        assert!(
            std::time::Instant::now() < deadline,
            "never admitted after Retry-After"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let text = app.text("/metrics").await;
    assert_eq!(
        metric(&text, "rate_limited_requests_total", &[("group", "read")]),
        1.0 + limited
    );
}

#[tokio::test]
async fn protected_metrics_and_created_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (code, key, err) = flotilla(
        dir.path(),
        &["keys", "create", "--name", "ci", "--role", "operator"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let key = key.trim().to_owned();
    let entry = err
        .lines()
        .find(|l| l.contains("hash:"))
        .unwrap()
        .trim()
        .trim_start_matches("- ")
        .to_owned();
    assert!(!err.contains(&key), "only the hash goes to the config");
    let app = spawn_app(&format!(
        "auth:\n  mode: api_key\n  protect_metrics: true\n  api_keys:\n    - {entry}\nagents:\n  echo: {{ kind: builtin, builtin: echo }}\n"
    ))
    .await;
    assert_eq!(call(&app, "GET", "/metrics", None).await.0, 401);
    assert_eq!(
        call(&app, "POST", "/api/v1/execute", Some(&key)).await.0,
        200
    );
    let r = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn auth_off_is_loud_and_bad_auth_config_exits_2() {
    let app = spawn_app("agents: { echo: { kind: builtin, builtin: echo } }\n").await;
    assert!(app.log_text().contains("AUTHENTICATION IS OFF"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "auth:\n  mode: api_key\n  api_keys:\n    - { name: x, role: admin, hash: \"md5:abc\" }\n",
    )
    .unwrap();
    let (code, _, err) = flotilla(
        dir.path(),
        &["validate", "--config", bad.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.yaml:4:") && err.contains("sha256:"),
        "{err}"
    );
}

#[tokio::test]
async fn cors_for_configured_origins_and_compression_on_request() {
    let app = spawn_app(
        "server: { cors_origins: [\"https://console.example\"] }\nagents: { echo: { kind: builtin, builtin: echo } }\n",
    )
    .await;
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/execute"))
        .header("origin", "https://console.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://console.example"
    );
    let r = app
        .client
        .get(app.url("/api/v1/agents"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    let r = app
        .client
        .get(app.url("/openapi.json"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let r = app
        .client
        .get(app.url("/openapi.json"))
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "br");
}

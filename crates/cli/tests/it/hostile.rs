//! What a hostile user tries: forged tokens, guessed keys, shared idempotency keys, leaks,
//! template injection, slow and many connections, huge lists, invented methods, YAML
//! bombs, unbounded limiter maps, a full disk, lagging event streams, absurd settings.
//! Every loop here is bounded and every address is loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use crate::app::{TestApp, flotilla, spawn_app, spawn_app_in};

const OPERATOR: &str = "flk_operator_key_for_hostile_tests";
const OTHER: &str = "flk_second_operator_for_hostile_tests";

fn keys() -> String {
    format!(
        "auth:\n  mode: api_key\n  api_keys:\n    - {{ name: op-one, role: operator, hash: \"{}\" }}\n    - {{ name: op-two, role: operator, hash: \"{}\" }}\n",
        flotilla_server::auth::hash_key(OPERATOR),
        flotilla_server::auth::hash_key(OTHER)
    )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Polls `f` until it returns `Some`, for at most `within`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// 1. An empty or short HS256 secret is refused with its position, by validate and serve.
#[test]
fn short_or_empty_hs256_secrets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, "\n").unwrap();
    let config = dir.path().join("flotilla.yaml");
    std::fs::write(
        &config,
        format!(
            "storage: {{ url: \"sqlite://{}\" }}\nauth:\n  mode: jwt\n  jwt: {{ algorithm: HS256, secret: \"file:{}\" }}\n",
            dir.path().join("f.db").display(),
            secret.display()
        ),
    )
    .unwrap();
    let path = config.to_str().unwrap();
    for args in [
        vec!["validate", "--config", path],
        vec!["serve", "--config", path, "--listen", "127.0.0.1:0"],
    ] {
        let (code, _, err) = flotilla(dir.path(), &args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("flotilla.yaml:4:"), "{err}");
        assert!(err.contains("at least 32"), "{err}");
    }
    std::fs::write(&secret, "short-secret\n").unwrap();
    let (code, _, err) = flotilla(dir.path(), &["validate", "--config", path], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        !err.contains("short-secret"),
        "the secret is never shown: {err}"
    );
}

// 2. `nbf` in the future, and tokens without the configured `aud` or `iss`, are 401.
#[tokio::test]
async fn jwt_nbf_and_required_issuer_and_audience() {
    let secret = "a-secret-that-is-long-enough-for-hs256-tokens";
    let app = spawn_app(&format!(
        "auth:\n  mode: jwt\n  jwt: {{ algorithm: HS256, secret: \"{secret}\", issuer: iss-x, audience: aud-x }}\n"
    ))
    .await;
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let status = |token: String| {
        let req = app.client.get(app.url("/api/v1/runs")).bearer_auth(token);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let exp = now() + 600;
    let good = json!({"sub": "s", "role": "viewer", "iss": "iss-x", "aud": "aud-x", "exp": exp});
    assert_eq!(status(sign(good.clone())).await, 200);
    let mut later = good.clone();
    later["nbf"] = json!(now() + 3600);
    assert_eq!(status(sign(later)).await, 401, "nbf in the future");
    let mut no_aud = good.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_eq!(status(sign(no_aud)).await, 401, "no aud");
    let mut no_iss = good;
    no_iss.as_object_mut().unwrap().remove("iss");
    assert_eq!(status(sign(no_iss)).await, 401, "no iss");
}

// 3. Guessing keys is throttled per client address, before credentials are checked.
#[tokio::test]
async fn failed_authentications_are_throttled() {
    let app = spawn_app(&keys()).await;
    let mut codes = Vec::new();
    for i in 0..40 {
        let r = app
            .client
            .get(app.url("/api/v1/runs"))
            .header("x-api-key", format!("guess-{i}"))
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
    }
    assert!(codes[..10].iter().all(|c| *c == 401), "{codes:?}");
    assert!(codes[20..].iter().all(|c| *c == 429), "{codes:?}");
    // While throttled, even a right key is not looked at.
    let r = app
        .client
        .get(app.url("/api/v1/runs"))
        .header("x-api-key", OPERATOR)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
}

// 4. Idempotency keys are scoped to (caller, workflow); another body is 422, a run in
// progress 409, a finished one is replayed.
#[tokio::test]
async fn idempotency_keys_never_cross_callers_or_workflows() {
    let app = spawn_app(&format!(
        "{}agents:\n  echo: {{ kind: builtin, builtin: echo }}\n  nap: {{ kind: builtin, builtin: sleep, delay: 3s }}\nworkflows:\n  a: {{ steps: [ {{ id: s, agent: echo }} ] }}\n  b: {{ steps: [ {{ id: s, agent: echo }} ] }}\n  slow: {{ steps: [ {{ id: s, agent: nap }} ] }}\n",
        keys()
    ))
    .await;
    let post = |key: &str, wf: &str, input: Value| {
        let req = app
            .client
            .post(app.url(&format!("/api/v1/workflows/{wf}/runs?wait=10s")))
            .header("x-api-key", key)
            .header("idempotency-key", "k")
            .json(&json!({"input": input}));
        async move {
            let r = req.send().await.unwrap();
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap())
        }
    };
    let (code, first) = post(OPERATOR, "a", json!({"secret": "one"})).await;
    assert_eq!(code, 200, "{first}");
    let (code, other) = post(OTHER, "b", json!({"x": 2})).await;
    assert_eq!(code, 200, "{other}");
    assert_ne!(other["id"], first["id"]);
    assert_eq!(other["input"], json!({"x": 2}));
    let (code, same_key_other_wf) = post(OPERATOR, "b", json!({"secret": "one"})).await;
    assert_eq!(code, 200);
    assert_ne!(same_key_other_wf["id"], first["id"]);
    let (code, other_caller) = post(OTHER, "a", json!({"secret": "one"})).await;
    assert_eq!(code, 200);
    assert_ne!(other_caller["id"], first["id"]);
    let (code, replay) = post(OPERATOR, "a", json!({"secret": "one"})).await;
    assert_eq!(code, 200);
    assert_eq!(replay["id"], first["id"]);
    let (code, body) = post(OPERATOR, "a", json!({"secret": "two"})).await;
    assert_eq!(code, 422, "{body}");
    // In progress: the first submission is accepted (202); its repeat is 409.
    let slow = || {
        app.client
            .post(app.url("/api/v1/workflows/slow/runs"))
            .header("x-api-key", OPERATOR)
            .header("idempotency-key", "slow-1")
            .json(&json!({"input": {}}))
            .send()
    };
    assert_eq!(slow().await.unwrap().status(), 202);
    assert_eq!(slow().await.unwrap().status(), 409);
}

// 5. Credentials in agent URLs and headers never show: agents list, run errors, /execute,
// logs, config show.
#[tokio::test]
async fn agent_url_credentials_and_headers_stay_hidden() {
    let dead = crate::app::free_port();
    let yaml = format!(
        "agents:\n  remote:\n    kind: http\n    endpoints: [\"http://u:PWSECRET@127.0.0.1:{dead}/run?token=TOKSECRET\"]\n    headers: {{ X-Custom-Auth: HDRSECRET, Cookie: COOKIESECRET }}\n    timeout: 2s\n  talk: {{ kind: llm, provider: p, model: m }}\nllm:\n  providers: {{ p: {{ base_url: \"http://127.0.0.1:{dead}/v1\", api_key: \"${{MY_ODD_LLM_VAR}}\" }} }}\nworkflows:\n  w: {{ steps: [ {{ id: s, agent: remote }} ] }}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("f.db");
    let yaml = format!("storage: {{ url: \"sqlite://{}\" }}\n{yaml}", db.display());
    std::fs::write(dir.path().join("flotilla.yaml"), &yaml).unwrap();
    let (code, shown, err) = flotilla(
        dir.path(),
        &["config", "show", "--config", "flotilla.yaml"],
        &[("MY_ODD_LLM_VAR", "LLMSECRET")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(shown.contains("***"), "{shown}");
    assert!(shown.contains("token=***"), "{shown}");
    let app = spawn_app_in(dir, &yaml.replace("${MY_ODD_LLM_VAR}", "LLMSECRET")).await;
    let mut answers = vec![shown, app.text("/api/v1/agents").await];
    let (code, body) = app
        .post("/api/v1/execute", json!({"agent": "remote", "input": {}}))
        .await;
    assert_eq!(code, 502, "{body}");
    answers.push(body.to_string());
    let id = app.start_run("w", json!({})).await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "failed", "{run}");
    answers.push(run.to_string());
    answers.push(app.log_text());
    for secret in [
        "PWSECRET",
        "TOKSECRET",
        "HDRSECRET",
        "COOKIESECRET",
        "LLMSECRET",
    ] {
        for (i, a) in answers.iter().enumerate() {
            assert!(!a.contains(secret), "answer {i} shows {secret}: {a}");
        }
    }
}

// 6. Interpolated input cannot add fields to a JSON template's output.
#[tokio::test]
async fn template_agents_escape_what_they_interpolate() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("f.db");
    // The embedded demo, on a fresh database.
    let demo = include_str!("../../../../examples/demo.yaml").replace(
        "sqlite://flotilla.db",
        &format!("sqlite://{}", db.display()),
    );
    let app = spawn_app_in(dir, &demo).await;
    let evil = r#"Lisbon", "paid": true, "x": ""#;
    let id = app
        .start_run("travel_planning", json!({"destination": evil}))
        .await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let hotel = &crate::app::step(&run, "accommodation_search")["output"];
    assert!(hotel.get("paid").is_none(), "{hotel}");
    assert_eq!(hotel["hotel"], format!("Hotel {evil}"));
}

/// Reads from a raw connection until the server closes it; the time that took.
fn time_to_close(mut s: TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

// 7. Silent and dribbling connections are closed; past the cap, new ones are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_many_connections_are_bounded() {
    let app = spawn_app("server: { header_read_timeout: 1s, max_connections: 8 }\n").await;
    let host = app.addr.trim_start_matches("http://").to_owned();
    let silent = TcpStream::connect(&host).unwrap();
    let closed =
        tokio::task::spawn_blocking(move || time_to_close(silent, Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(closed < Duration::from_secs(15), "silent: {closed:?}");
    // One header byte a second never completes a head within the timeout.
    let h = host.clone();
    let dribble = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&h).unwrap();
        let started = Instant::now();
        for b in b"GET /health HTTP/1.1\r\nHost: x\r\n" {
            if s.write_all(&[*b]).is_err() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(300));
            if started.elapsed() > Duration::from_secs(20) {
                break;
            }
        }
        time_to_close(s, Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert!(dribble < Duration::from_secs(15), "dribble: {dribble:?}");
    // Fill the cap with idle connections: the next one is closed at once, unanswered.
    let idle: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(&host).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(&host).unwrap();
    let _ = extra.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = Vec::new();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = extra.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "served past the cap"
    );
    drop(idle);
    // Capacity comes back once the idle ones are gone.
    eventually(
        Duration::from_secs(20),
        "health after the idle ones left",
        || async {
            app.client
                .get(app.url("/health"))
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
        },
    )
    .await;
}

/// Sends `GET /health` on `s` and reads the whole response (headers and the body their
/// Content-Length announces).
fn health_on(s: &mut TcpStream) -> String {
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|n| n.trim().parse::<usize>().ok())
                .expect("a Content-Length");
            if body.len() >= length {
                return text;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => panic!("closed mid-response: {text}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

// 7b. The header timeout starts at a request's first byte: an idle keep-alive connection
// waits for its next request up to idle_timeout, so a client reusing it is not cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_outlives_the_header_timeout() {
    let app = spawn_app("server: { header_read_timeout: 1s, idle_timeout: 4s }\n").await;
    let host = app.addr.trim_start_matches("http://").to_owned();
    let idle = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&host).unwrap();
        assert!(health_on(&mut s).starts_with("HTTP/1.1 200"));
        // Idle for longer than the header timeout, well inside the idle one.
        std::thread::sleep(Duration::from_millis(2500));
        assert!(
            health_on(&mut s).starts_with("HTTP/1.1 200"),
            "the reused connection was closed"
        );
        time_to_close(s, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert!(
        idle >= Duration::from_secs(3) && idle < Duration::from_secs(20),
        "an idle connection closes after idle_timeout: {idle:?}"
    );
}

// 8. Lists are summaries, capped in size; the full run is one GET away.
#[tokio::test]
async fn lists_carry_no_bodies() {
    let app = spawn_app(
        "server: { body_limit: 4MiB }\nagents: { echo: { kind: builtin, builtin: echo } }\nworkflows: { w: { steps: [ { id: s, agent: echo } ] } }\n",
    )
    .await;
    let big = "x".repeat(2 * 1024 * 1024);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.start_run("w", json!({ "blob": big })).await);
    }
    for id in &ids {
        app.finished(id).await;
    }
    let text = app.text("/api/v1/runs?limit=20").await;
    assert!(text.len() < 64 * 1024, "{} bytes", text.len());
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["runs"].as_array().unwrap().len(), 3);
    assert!(list["runs"][0].get("input").is_none(), "{list}");
    let (_, run) = app.get(&format!("/api/v1/runs/{}", ids[0])).await;
    assert_eq!(run["input"]["blob"].as_str().unwrap().len(), big.len());
    let (code, body) = app
        .post(
            "/api/v1/workflows/w/runs",
            json!({"input": {}, "metadata": {"m": "y".repeat(20_000)}}),
        )
        .await;
    assert_eq!(code, 400, "{body}");
}

// 9. Invented methods share one label value.
#[tokio::test]
async fn invented_methods_do_not_grow_metrics() {
    let app = spawn_app("").await;
    for i in 0..20 {
        let method = reqwest::Method::from_bytes(format!("INVENTED{i:03}XYZ").as_bytes()).unwrap();
        let _ = app
            .client
            .request(method, app.url("/api/v1/runs"))
            .send()
            .await
            .unwrap();
    }
    let metrics = app.text("/metrics").await;
    assert!(
        !metrics.contains("INVENTED"),
        "invented methods became labels"
    );
    assert!(metrics.contains("method=\"other\""));
}

const BILLION_LAUGHS: &str = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n";

// 10. A YAML bomb is refused by validate, and as a flags file the server keeps its flags.
#[tokio::test]
async fn yaml_alias_bombs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bomb.yaml"), BILLION_LAUGHS).unwrap();
    let (code, _, err) = flotilla(dir.path(), &["validate", "--config", "bomb.yaml"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("expands to more than"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let flags = dir.path().join("flags.yaml");
    std::fs::write(&flags, "beta: { enabled: true }\n").unwrap();
    let yaml = format!(
        "storage: {{ url: \"sqlite://{}\" }}\nflags: {{ file: \"{}\" }}\n",
        dir.path().join("f.db").display(),
        flags.display()
    );
    let app = spawn_app_in(dir, &yaml).await;
    std::fs::write(&flags, BILLION_LAUGHS).unwrap();
    eventually(Duration::from_secs(20), "the reload error", || async {
        app.log_text()
            .contains("expands to more than")
            .then_some(())
    })
    .await;
    let (code, body) = app.get("/api/v1/flags").await;
    assert_eq!(code, 200);
    assert!(body.to_string().contains("beta"), "{body}");
}

// 11. The limiter forgets idle clients. A bucket is forgotten once it has refilled: one
// request's cell comes back after 1 / per_second = 30 s, longer than the 200 requests take
// even on a loaded machine (the server prunes every 10 s, which may fall inside the loop),
// and short enough that all are forgotten within the wait below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiter_memory_is_pruned() {
    let app = spawn_app("rate_limits: { default: { per_second: 0.0333, burst: 1000 } }\n").await;
    let port: u16 = app.addr.rsplit(':').next().unwrap().parse().unwrap();
    for last in 1..=200u8 {
        let client = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 1, last]))
            .build()
            .unwrap();
        let r = client
            .get(format!("http://127.0.0.1:{port}/api/v1/runs"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (_, health) = app.get("/health").await;
    assert!(
        health["components"]["rate_limits"]["tracked_clients"]
            .as_u64()
            .unwrap()
            >= 200,
        "{health}"
    );
    eventually(
        Duration::from_secs(120),
        "the limiter to forget",
        || async {
            let (_, health) = app.get("/health").await;
            (health["components"]["rate_limits"]["tracked_clients"].as_u64() < Some(10))
                .then_some(())
        },
    )
    .await;
}

// 12. A full disk turns readiness off while commits fail, and back on after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_readiness_off_and_back_on() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but a tmpfs cannot be mounted (the test needs root)"
        );
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let yaml = format!(
        "storage: {{ url: \"sqlite://{}\" }}\nagents: {{ echo: {{ kind: builtin, builtin: echo }} }}\nworkflows: {{ w: {{ steps: [ {{ id: s, agent: echo }} ] }} }}\n",
        mnt.join("f.db").display()
    );
    let app = spawn_app_in(tempfile::tempdir().unwrap(), &yaml).await;
    let id = app.start_run("w", json!({})).await;
    app.finished(&id).await;
    // Fill the disk.
    let filler = mnt.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
    }
    let input = json!({"pad": "p".repeat(200_000)});
    let mut refused = false;
    for _ in 0..20 {
        let (code, _) = app
            .post("/api/v1/workflows/w/runs", json!({ "input": input }))
            .await;
        if code == 503 {
            refused = true;
            break;
        }
    }
    assert!(refused, "submissions never failed on a full disk");
    let (code, body) = app.get("/ready").await;
    assert_eq!(code, 503, "{body}");
    std::fs::remove_file(&filler).unwrap();
    eventually(Duration::from_secs(30), "readiness back", || async {
        (app.get("/ready").await.0 == 200).then_some(())
    })
    .await;
    let id = app.start_run("w", json!({})).await;
    assert_eq!(app.finished(&id).await["status"], "succeeded");
}

/// The events of a stream, read to its end (bounded).
async fn read_stream(app: &TestApp, id: &str, last_event_id: Option<&str>) -> Vec<String> {
    let mut req = app
        .client
        .get(app.url(&format!("/api/v1/runs/{id}/events")));
    if let Some(l) = last_event_id {
        req = req.header("last-event-id", l);
    }
    let text = tokio::time::timeout(Duration::from_secs(60), async {
        req.send().await.unwrap().text().await.unwrap()
    })
    .await
    .expect("the stream ends");
    text.lines()
        .filter_map(|l| {
            l.strip_prefix("event: ")
                .or_else(|| l.strip_prefix("event:"))
        })
        .map(|s| s.trim().to_owned())
        .collect()
}

// 13. Streams of finished runs end; a lagging subscriber is told and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_end_and_never_drop_silently() {
    let width = 2500;
    let steps: Vec<String> = (0..width)
        .map(|i| format!("    - {{ id: s{i}, agent: echo }}"))
        .collect();
    let app = spawn_app(&format!(
        "agents: {{ echo: {{ kind: builtin, builtin: echo }} }}\nengine: {{ max_concurrency: 4096 }}\nworkflows:\n  one: {{ steps: [ {{ id: s, agent: echo }} ] }}\n  wide:\n    steps:\n{}\n",
        steps.join("\n")
    ))
    .await;
    let id = app.start_run("one", json!({})).await;
    app.finished(&id).await;
    let events = read_stream(&app, &id, Some("999999")).await;
    assert!(events.is_empty(), "{events:?}");

    // Subscribe to a wide fan-out and read slowly: every event arrives, in order.
    let id = app.start_run("wide", json!({})).await;
    let resp = app
        .client
        .get(app.url(&format!("/api/v1/runs/{id}/events")))
        .send()
        .await
        .unwrap();
    let mut resp = resp;
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut first = true;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), resp.chunk())
        .await
        .expect("the stream moves")
        .unwrap()
    {
        if first {
            // Fall behind the broadcast while the run races ahead.
            tokio::time::sleep(Duration::from_secs(3)).await;
            first = false;
        }
        text.push_str(&String::from_utf8_lossy(&chunk));
        assert!(Instant::now() < deadline, "the stream never ended");
    }
    let ids: Vec<i64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "succeeded");
    let stored = app
        .client
        .get(app.url(&format!("/api/v1/runs/{id}/events")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stored_ids = stored.lines().filter(|l| l.starts_with("id:")).count();
    assert_eq!(ids.len(), stored_ids, "events were lost");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "out of order");
}

// 14. Absurd rates and durations are refused by validate, never a panic in serve.
#[test]
fn absurd_rates_and_durations_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (yaml, field) in [
        (
            "rate_limits: { default: { per_second: 1e-20, burst: 1 } }\n",
            "per_second",
        ),
        ("server: { request_timeout: 9999999999999s }\n", "100 years"),
        ("server: { max_connections: 0 }\n", "max_connections"),
    ] {
        std::fs::write(dir.path().join("flotilla.yaml"), yaml).unwrap();
        for cmd in [
            vec!["validate", "--config", "flotilla.yaml"],
            vec![
                "serve",
                "--config",
                "flotilla.yaml",
                "--listen",
                "127.0.0.1:0",
            ],
        ] {
            let (code, _, err) = flotilla(dir.path(), &cmd, &[]);
            assert_eq!(code, 2, "{yaml} {cmd:?}: {err}");
            assert!(err.contains(field), "{err}");
        }
    }
}

// 15. A wait longer than the request timeout answers 202 with the run id, never 504.
#[tokio::test]
async fn a_long_wait_answers_with_the_run_id() {
    let app = spawn_app(
        "server: { request_timeout: 2s }\nagents: { nap: { kind: builtin, builtin: sleep, delay: 4s } }\nworkflows: { slow: { steps: [ { id: s, agent: nap } ] } }\n",
    )
    .await;
    let (code, body) = app
        .post("/api/v1/workflows/slow/runs?wait=60s", json!({"input": {}}))
        .await;
    assert_eq!(code, 202, "{body}");
    let id = body["id"].as_str().unwrap();
    assert_eq!(app.finished(id).await["status"], "succeeded");
    let (_, runs) = app.get("/api/v1/runs").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);
}

// 16. Seed 003's batch contract.
#[tokio::test]
async fn batch_answers_match_seed_003() {
    let app = spawn_app("agents: { echo: { kind: builtin, builtin: echo } }\n").await;
    let (code, body) = app
        .post(
            "/api/v1/batch",
            json!({"tasks": [{"agent": "echo", "input": 1}, {"agent": "nope", "input": 2}]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(body["timestamp"].as_str().is_some(), "{body}");
    assert_eq!(body["results"][0]["taskIndex"], 0);
    assert_eq!(body["results"][1]["taskIndex"], 1);
    assert_eq!(body["results"][1]["status"], "rejected");
    assert!(body["results"][1]["taskId"].as_str().is_some(), "{body}");
    assert!(body["results"][0]["taskId"].as_str().is_some(), "{body}");
}

// 17. Every error is JSON, with no Rust names; unknown query parameters are refused.
#[tokio::test]
async fn every_error_is_json_without_internal_names() {
    let app = spawn_app(
        "agents: { echo: { kind: builtin, builtin: echo } }\nworkflows: { w: { steps: [ { id: s, agent: echo } ] } }\n",
    )
    .await;
    let r = app
        .client
        .delete(app.url("/api/v1/runs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "method_not_allowed"
    );
    let long = format!("/api/v1/runs/{}", "a".repeat(10_000));
    let r = app.client.get(app.url(&long)).send().await.unwrap();
    assert_eq!(r.status(), 414);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "uri_too_long");
    let r = app
        .client
        .get(app.url("/api/v1/runs/%ff%fe"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    let (code, body) = app
        .post(
            "/api/v1/workflows/w/runs",
            json!({"input": {}, "priority": 7}),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(!body.to_string().contains("StartBody"), "{body}");
    assert!(!body.to_string().contains("enum Priority"), "{body}");
    let (code, body) = app.post("/api/v1/workflows/w/runs", json!([{}])).await;
    assert_eq!(code, 422, "{body}");
    let (code, body) = app
        .post("/api/v1/workflows/w/runs?wiat=30s", json!({"input": {}}))
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("wiat"), "{body}");
    let (code, body) = app.get("/api/v1/agents?x=1").await;
    assert_eq!(code, 400, "{body}");
    let (_, runs) = app.get("/api/v1/runs").await;
    assert_eq!(
        runs["runs"].as_array().unwrap().len(),
        0,
        "nothing was stored"
    );
    let (_, doc) = app.get("/openapi.json").await;
    let cancel = doc["paths"]["/api/v1/runs/{id}/cancel"]["post"].to_string();
    assert!(cancel.contains("no compensation"), "{cancel}");
}

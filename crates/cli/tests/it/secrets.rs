//! A canary secret in config, environment and an LLM api_key never shows up in any log line
//! or response.

use serde_json::json;

use crate::app::{flotilla, spawn_app_in};
use crate::fakes::fake_llm;

const CANARY: &str = "canary-5f1d9c2e-secret-long-enough-for-hs256";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_secret_appears_nowhere() {
    let llm = fake_llm("fine").await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("jwt.secret");
    std::fs::write(&secret_file, CANARY).unwrap();
    let yaml = format!(
        r#"
storage: {{ url: "sqlite://{db}" }}
auth:
  mode: any
  api_keys: [ {{ name: ops, role: admin, hash: "{hash}" }} ]
  jwt: {{ algorithm: HS256, secret: "file:{secret}" }}
llm:
  providers: {{ fake: {{ base_url: "{base}", api_key: "{CANARY}" }} }}
agents:
  talk: {{ kind: llm, provider: fake, model: m }}
  remote: {{ kind: http, endpoints: ["http://user:{CANARY}@127.0.0.1:9/run"], timeout: 1s }}
workflows:
  chat:
    steps: [ {{ id: say, agent: talk, prompt: "hi" }} ]
"#,
        db = dir.path().join("f.db").display(),
        hash = flotilla_server::auth::hash_key("ops-key"),
        secret = secret_file.display(),
        base = llm.base_url,
    );
    let app = spawn_app_in(dir, &yaml).await;
    let mut answers = Vec::new();
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth("ops-key");
    // Each answer is the one expected, so that an error page cannot pass for "no leak".
    for (path, expected) in [
        ("/api/v1/agents", 200),
        ("/api/v1/runs", 200),
        ("/health", 200),
        ("/metrics", 200),
        ("/openapi.json", 200),
        ("/api/v1/status/nope", 404),
    ] {
        let r = auth(app.client.get(app.url(path))).send().await.unwrap();
        assert_eq!(r.status(), expected, "{path}");
        answers.push(r.text().await.unwrap());
    }
    for (body, expected) in [
        (json!({"agent": "talk", "input": "x"}), 200),
        (json!({"agent": "remote", "input": {}}), 502),
        (json!({"agent": "nope", "input": 1}), 404),
    ] {
        let r = auth(app.client.post(app.url("/api/v1/execute")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected, "{body}");
        answers.push(r.text().await.unwrap());
    }
    let r = auth(
        app.client
            .post(app.url("/api/v1/workflows/chat/runs?wait=10s")),
    )
    .json(&json!({"input": {}}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    answers.push(r.text().await.unwrap());
    let bad_token = app
        .client
        .get(app.url("/api/v1/runs"))
        .bearer_auth(format!("a.{CANARY}.b"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_token.status(), 401);
    answers.push(bad_token.text().await.unwrap());
    let (code, shown, err) = flotilla(
        app.dir.path(),
        &["config", "show", "--config", app.config.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "config show: {err}");
    assert!(
        shown.contains("secret: '***'")
            || shown.contains("secret: \"***\"")
            || shown.contains("secret: ***"),
        "config show marks the secret as redacted: {shown}"
    );
    assert!(shown.contains("user:***@"), "{shown}");
    answers.push(shown);
    assert_eq!(
        llm.requests.lock().unwrap().last().unwrap().1,
        format!("Bearer {CANARY}"),
        "the key is used"
    );
    for (i, a) in answers.iter().enumerate() {
        assert!(!a.contains(CANARY), "answer {i} leaks the canary: {a}");
    }
    let logs = app.log_text();
    assert!(!logs.is_empty());
    assert!(
        !logs.contains(CANARY),
        "a log line leaks the canary:\n{logs}"
    );
}

//! LLM agents: structured output across providers (against fakes that speak each way of
//! asking for a schema) and answers validated against it.

use serde_json::{Value, json};

use crate::app::{TestApp, metric, spawn_app};
use crate::fakes::fake_llm_picky;

const SCHEMA: &str = r#"{ type: object, required: [intent], properties: { intent: { type: string, enum: [booking, complaint] } } }"#;

async fn app_for(base_url: &str, mode: &str) -> TestApp {
    spawn_app(&format!(
        r#"llm:
  providers: {{ p: {{ base_url: "{base_url}", structured_output: {mode} }} }}
agents:
  classify: {{ kind: llm, provider: p, model: m, response_schema: {SCHEMA} }}
"#
    ))
    .await
}

async fn classify(app: &TestApp) -> (u16, Value) {
    app.post(
        "/api/v1/execute",
        json!({"agent": "classify", "input": "my room was cold"}),
    )
    .await
}

fn modes(requests: &[(Value, String)]) -> Vec<String> {
    requests
        .iter()
        .map(|(b, _)| match b["response_format"]["type"].as_str() {
            Some(t) => t.to_owned(),
            None if b.get("format").is_some() => "ollama".into(),
            None => "prompt".into(),
        })
        .collect()
}

#[tokio::test]
async fn auto_falls_back_to_what_the_provider_takes_and_remembers_it() {
    let llm = fake_llm_picky("json_object", vec![r#"{"intent": "complaint"}"#]).await;
    let app = app_for(&llm.base_url, "auto").await;
    let (code, body) = classify(&app).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"]["intent"], "complaint");
    let (code, _) = classify(&app).await;
    assert_eq!(code, 200);
    let requests = llm.requests.lock().unwrap().clone();
    assert_eq!(
        modes(&requests),
        ["json_schema", "json_object", "json_object"]
    );
    // llama.cpp's form: the schema beside the type.
    assert_eq!(
        requests[1].0["response_format"]["schema"]["required"][0],
        "intent"
    );
}

#[tokio::test]
async fn a_provider_that_takes_no_response_format_gets_the_schema_in_the_prompt() {
    let llm = fake_llm_picky(
        "prompt",
        vec![
            r#"```json
{"intent": "booking"}
```"#,
        ],
    )
    .await;
    let app = app_for(&llm.base_url, "auto").await;
    let (code, body) = classify(&app).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"]["intent"], "booking");
    let requests = llm.requests.lock().unwrap().clone();
    assert_eq!(modes(&requests), ["json_schema", "json_object", "prompt"]);
    let prompt = requests[2].0["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        prompt.contains("JSON Schema") && prompt.contains("complaint"),
        "{prompt}"
    );
}

#[tokio::test]
async fn ollama_and_json_schema_are_sent_as_configured() {
    let ollama = fake_llm_picky("ollama", vec![r#"{"intent": "booking"}"#]).await;
    let app = app_for(&ollama.base_url, "ollama").await;
    let (code, body) = classify(&app).await;
    assert_eq!(code, 200, "{body}");
    let requests = ollama.requests.lock().unwrap().clone();
    assert_eq!(requests[0].0["format"]["required"][0], "intent");
    // A fixed mode the provider refuses is an error that says so, not a fallback.
    let picky = fake_llm_picky("json_object", vec![r#"{"intent": "booking"}"#]).await;
    let app = app_for(&picky.base_url, "json_schema").await;
    let (code, body) = classify(&app).await;
    assert_eq!(code, 502, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("refused structured output"),
        "{body}"
    );
    assert_eq!(picky.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_answer_that_misses_the_schema_is_asked_again_with_the_errors() {
    let llm = fake_llm_picky(
        "json_schema",
        vec![
            "sure! it is a complaint",
            r#"{"intent": "angry"}"#,
            r#"{"intent": "complaint"}"#,
        ],
    )
    .await;
    let app = app_for(&llm.base_url, "json_schema").await;
    let (code, body) = classify(&app).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"]["intent"], "complaint");
    let requests = llm.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3);
    let last = requests[2].0["messages"].as_array().unwrap();
    assert_eq!(last[last.len() - 2]["content"], r#"{"intent": "angry"}"#);
    assert!(
        last[last.len() - 1]["content"]
            .as_str()
            .unwrap()
            .contains("angry"),
        "the validation errors go back to the model: {last:?}"
    );
    let text = app.text("/metrics").await;
    assert_eq!(
        metric(
            &text,
            "llm_structured_output_retries_total",
            &[("agent", "classify")]
        ),
        2.0
    );
    // Tokens of all three answers are counted.
    assert_eq!(
        metric(
            &text,
            "llm_tokens_total",
            &[("agent", "classify"), ("kind", "prompt")]
        ),
        30.0
    );
    // Never right: the call fails with the errors after three answers.
    let wrong = fake_llm_picky("json_schema", vec![r#"{"intent": 7}"#]).await;
    let app = app_for(&wrong.base_url, "json_schema").await;
    let (code, body) = classify(&app).await;
    assert_eq!(code, 502, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("after 3 answers") && message.contains("7"),
        "{message}"
    );
    assert_eq!(wrong.requests.lock().unwrap().len(), 3);
}

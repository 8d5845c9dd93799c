//! Traces over OTLP/HTTP: an in-test receiver decodes the protobuf the server exports and
//! finds request → run → step → agent call, continuing the caller's `traceparent`, with the
//! agent call's context propagated to the http agent; log lines carry the ids.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};

use crate::app::spawn_app;
use crate::fakes::fake_agent;

/// A fake OTLP/HTTP collector: keeps every span it receives.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn collector() -> Collector {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let keep = spans.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let keep = keep.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut all = keep.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        all.extend(ss.spans);
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Collector {
        url,
        spans,
        _task: task,
    }
}

fn attr(span: &Span, key: &str) -> Option<Any> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone()?.value)
}

fn string(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(Any::StringValue(s)) => s,
        other => panic!("{key} on {}: {other:?}", span.name),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_form_a_tree_under_the_callers_traceparent_and_reach_the_agent() {
    let otlp = collector().await;
    let agent = fake_agent().await;
    let mut app = spawn_app(&format!(
        r#"
observability: {{ otlp: {{ endpoint: "{otlp}" }}, service_name: flotilla-test }}
agents:
  remote: {{ kind: http, endpoints: ["{agent}"] }}
workflows:
  traced:
    steps:
      - {{ id: fetch, agent: remote, input: {{ fail_times: 1 }}, retry: {{ attempts: 2, initial: 10ms }} }}
"#,
        otlp = otlp.url,
        agent = agent.url
    ))
    .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let r = app
        .client
        .post(app.url("/api/v1/workflows/traced/runs?wait=20s"))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .json(&json!({"input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let run: Value = r.json().await.unwrap();
    assert_eq!(run["status"], "succeeded", "{run}");
    // A clean stop flushes the exporter.
    assert!(app.terminate().success());

    let spans = otlp.spans.lock().unwrap().clone();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let in_trace: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == trace).collect();
    let by_name = |name: &str| -> Vec<&Span> {
        in_trace
            .iter()
            .copied()
            .filter(|s| s.name == name)
            .collect()
    };
    let names: Vec<&str> = in_trace.iter().map(|s| s.name.as_str()).collect();

    let request = by_name("POST /api/v1/workflows/{name}/runs");
    assert_eq!(request.len(), 1, "{names:?}");
    let request = request[0];
    assert_eq!(
        hex(&request.parent_span_id),
        caller,
        "the caller's span is the parent"
    );
    assert_eq!(
        string(request, "http.route"),
        "/api/v1/workflows/{name}/runs"
    );
    assert_eq!(
        attr(request, "http.response.status_code"),
        Some(Any::IntValue(200))
    );

    let run_span = by_name("run traced");
    assert_eq!(run_span.len(), 1, "{names:?}");
    let run_span = run_span[0];
    assert_eq!(run_span.parent_span_id, request.span_id);
    assert_eq!(
        string(run_span, "flotilla.run.id"),
        run["id"].as_str().unwrap()
    );
    assert_eq!(string(run_span, "flotilla.workflow.name"), "traced");
    assert_eq!(string(run_span, "flotilla.run.status"), "succeeded");

    let steps = by_name("step fetch");
    assert_eq!(steps.len(), 2, "two attempts: {names:?}");
    let outcomes: HashMap<i64, String> = steps
        .iter()
        .map(|s| {
            assert_eq!(s.parent_span_id, run_span.span_id);
            assert_eq!(string(s, "flotilla.agent.name"), "remote");
            let Some(Any::IntValue(attempt)) = attr(s, "flotilla.attempt") else {
                panic!("no attempt on {s:?}")
            };
            (attempt, string(s, "flotilla.outcome"))
        })
        .collect();
    assert_eq!(outcomes[&1], "agent_error");
    assert_eq!(outcomes[&2], "succeeded");

    let calls = by_name("call remote");
    assert_eq!(calls.len(), 2, "{names:?}");
    let seen = agent.seen.lock().unwrap();
    for call in &calls {
        assert!(steps.iter().any(|s| s.span_id == call.parent_span_id));
        assert_eq!(call.kind, 3, "SPAN_KIND_CLIENT");
        // The agent received this call's context.
        let expected = format!("00-{trace}-{}-01", hex(&call.span_id));
        assert!(
            seen.log
                .iter()
                .any(|(_, _, h)| h["traceparent"] == expected),
            "{expected} not among {:?}",
            seen.log
        );
    }
    // Log lines written inside the run carry its trace id.
    let logs = app.log_text();
    let retry_line = logs
        .lines()
        .find(|l| l.contains("attempt failed; retrying"))
        .unwrap_or_else(|| panic!("no retry log line:\n{logs}"));
    let line: Value = serde_json::from_str(retry_line).unwrap();
    assert_eq!(line["trace_id"], trace, "{line}");
    assert_eq!(line["span_id"].as_str().unwrap().len(), 16, "{line}");
}

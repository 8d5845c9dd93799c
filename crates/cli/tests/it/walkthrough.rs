//! The README's demo walk-through, request by request, against the demo fleet: each
//! request is checked to be in the README as written, and each answer field by field.

use serde_json::{Value, json};

use crate::app::{TestApp, spawn_app_in};

const README: &str = include_str!("../../../../README.md");
const DEMO: &str = include_str!("../../../../examples/demo.yaml");

/// The walk-through says exactly this.
fn says(text: &str) {
    assert!(README.contains(text), "the README no longer says:\n{text}");
}

async fn post(app: &TestApp, path: &str, body: &str) -> (u16, Value) {
    let r = app
        .client
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn the_demo_walk_through_answers_what_the_readme_says() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let yaml = DEMO.replace(
        "url: \"sqlite://flotilla.db\"",
        &format!("url: \"sqlite://{}\"", db.display()),
    );
    assert_ne!(yaml, DEMO);
    let app = spawn_app_in(dir, &yaml).await;

    // A travel plan, waited for.
    let trip = r#"{"input": {"destination": "Lisbon", "budget": 900, "nights": 4}}"#;
    says(&format!(
        "runs?wait=30s' \\\n  -H 'content-type: application/json' \\\n  -d '{trip}'"
    ));
    let (code, run) = post(
        &app,
        "/api/v1/workflows/travel_planning/runs?wait=30s",
        trip,
    )
    .await;
    assert_eq!(code, 200, "{run}");
    assert_eq!(run["status"], "succeeded");
    let steps: Vec<(&str, &str)> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    for id in ["weather_check", "route_planning", "accommodation_search"] {
        assert!(steps.contains(&(id, "succeeded")), "{id}: {steps:?}");
    }
    let out = &run["output"];
    assert_eq!(out["destination"], "Lisbon");
    assert_eq!(
        out["forecast"],
        json!({"city": "Lisbon", "forecast": "sunny", "temperature_c": 21, "wind_kph": 12})
    );
    assert_eq!(out["accommodation"]["nights"], 4, "{out}");
    assert!(out["route"].is_object(), "{out}");

    // A customer-service run, followed and inspected.
    let inquiry = r#"{"input": {"message": "My invoice is wrong", "urgency": "high"}}"#;
    says(&format!("-d '{inquiry}' | jq -r .run_id)"));
    let (code, accepted) = post(&app, "/api/v1/workflows/customer_service/runs", inquiry).await;
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["run_id"].as_str().unwrap().to_owned();
    let events = app
        .client
        .get(app.url(&format!("/api/v1/runs/{id}/events")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for kind in ["run_started", "step_succeeded", "run_finished"] {
        assert!(events.contains(&format!("event: {kind}")), "{events}");
    }
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let classified = &crate::app::step(&run, "inquiry_classification")["output"];
    assert_eq!(
        classified,
        &json!({"category": "billing", "urgency": "high"})
    );
    let resolved = &crate::app::step(&run, "issue_resolution")["output"];
    assert_eq!(
        resolved,
        &json!({"resolution": "Answered the billing inquiry", "resolved": true})
    );
    let assessed = &crate::app::step(&run, "quality_assessment")["output"];
    assert_eq!(assessed, &json!({"quality_score": 0.92, "resolved": true}));
    says("curl -s 'localhost:8080/api/v1/runs?workflow=customer_service&limit=10' | jq");
    let (_, list) = app
        .get("/api/v1/runs?workflow=customer_service&limit=10")
        .await;
    assert_eq!(list["runs"][0]["id"], id.as_str());

    // Invalid input: every violation listed.
    says(r#"-d '{"input": {"budget": -1}}' | jq"#);
    says(
        r#"# 400 {"error": "invalid_request", "details": ["/: \"destination\" is a required property", "/budget: -1 is less than the minimum of 0"], ...}"#,
    );
    let (code, err) = post(
        &app,
        "/api/v1/workflows/travel_planning/runs",
        r#"{"input": {"budget": -1}}"#,
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(err["error"], "invalid_request");
    assert_eq!(
        err["details"],
        json!([
            "/: \"destination\" is a required property",
            "/budget: -1 is less than the minimum of 0"
        ])
    );

    // One task, and a batch.
    let task = r#"{"capability": "get_forecast", "input": {"city": "Oslo"}}"#;
    says(&format!("-d '{task}' | jq"));
    let (code, answer) = post(&app, "/api/v1/execute", task).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["agentId"], "weather_primary");
    assert_eq!(answer["result"]["city"], "Oslo");
    assert_eq!(answer["result"]["forecast"], "sunny");
    for field in ["taskId", "duration", "timestamp"] {
        assert!(!answer[field].is_null(), "{field}: {answer}");
    }
    let batch = r#"{"tasks": [{"agent": "echo", "input": 1}, {"agent": "chaos", "input": {"fail": true}}]}"#;
    says(&format!("-d '{batch}' | jq"));
    let (code, answer) = post(&app, "/api/v1/batch", batch).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["totalTasks"], 2);
    assert_eq!(answer["successCount"], 1);
    assert_eq!(answer["errorCount"], 1);

    // The read-only endpoints answer as described.
    let (code, agents) = app.get("/api/v1/agents").await;
    assert_eq!(code, 200);
    assert!(
        agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "chaos")
    );
    let (code, health) = app.get("/health").await;
    assert_eq!(code, 200);
    assert_eq!(
        health["components"]["store"]["status"], "healthy",
        "{health}"
    );
    assert_eq!(app.get("/ready").await.0, 200);
    assert!(app.text("/metrics").await.contains("circuit_breaker_state"));
}

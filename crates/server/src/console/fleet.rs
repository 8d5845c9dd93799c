//! The fleet pages: agents, flags (with an evaluate form) and rollouts (with their
//! measurements, decisions and commands).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use flotilla_rollout::store::{Command, StateStore};
use minijinja::{Value, context};
use serde::Deserialize;

use super::error::ConsoleError;
use super::graph;
use super::page::render;
use super::session::{User, Verified};
use crate::AppState;

/// `GET /ui/agents`.
pub(crate) async fn agents(
    State(state): State<AppState>,
    user: User,
) -> Result<Response, ConsoleError> {
    let engine = state.engine()?;
    let now = super::format::now_ms();
    let agents: Vec<Value> = engine
        .agents()
        .iter()
        .map(|a| {
            context! {
                id => a.id.clone(), kind => serde_json::to_value(a.kind).ok().and_then(|k| k.as_str().map(str::to_owned)), description => a.description.clone(),
                capabilities => a.capabilities.clone(), status => a.status, circuit => a.circuit,
                retry_in => a.circuit_retry_in_ms.map(|ms| super::format::duration(ms as i64)),
                opened => a.circuit_opened_at, closed => a.circuit_closed_at,
                opened_ago => a.circuit_opened_at.map(|t| super::format::duration(now - t)),
                in_flight => a.in_flight, calls => a.calls, error_pct => format!("{:.1}", a.error_rate * 100.0),
                p95 => a.latency_p95_ms.map(|ms| if ms < 10.0 { format!("{ms:.2} ms") } else { format!("{ms:.0} ms") }), remote => a.remote,
                ttl => a.expires_in_s, endpoints => a.endpoints.clone(),
                budget => a.budget.map(|b| match (b.tokens, b.usd) {
                    (Some(t), Some(u)) => format!("{t} tokens, {u} USD per run"),
                    (Some(t), None) => format!("{t} tokens per run"),
                    (None, Some(u)) => format!("{u} USD per run"),
                    (None, None) => String::new(),
                }),
                spent_tokens => a.spent_tokens, spent_usd => format!("{:.4}", a.spent_usd),
            }
        })
        .collect();
    render(
        "agents.html",
        "agents",
        "Agents",
        &user,
        context! { agents },
    )
}

#[derive(Deserialize)]
pub(crate) struct Evaluate {
    flag: Option<String>,
    /// JSON object: `{"user_id": "u1", "plan": "pro"}`.
    context: Option<String>,
}

/// `GET /ui/flags`: every flag with its rules; `?flag=&context=` evaluates one.
pub(crate) async fn flags(
    State(state): State<AppState>,
    user: User,
    Query(q): Query<Evaluate>,
) -> Result<Response, ConsoleError> {
    let engine = state.engine()?;
    let set = engine.flags().snapshot();
    let flags: Vec<Value> = set
        .list()
        .iter()
        .map(|f| {
            context! {
                name => f.name.clone(), enabled => f.enabled, percentage => f.percentage,
                environment => f.environment.clone(), rules => f.rule_text.clone(), description => f.description.clone(),
            }
        })
        .collect();
    let context_text = q
        .context
        .clone()
        .unwrap_or_else(|| "{\"user_id\": \"user-1\"}".into());
    let (result, problem) = match q.flag.as_deref().filter(|f| !f.is_empty()) {
        None => (None, None),
        Some(name) => match serde_json::from_str::<serde_json::Value>(&context_text) {
            Ok(serde_json::Value::Object(fields)) => {
                let ctx = flotilla_flags::Context::from_json(&fields);
                match engine.flags().evaluate(name, &ctx) {
                    Some(e) => (
                        Some(context! {
                            flag => name, enabled => e.enabled, variant => e.variant,
                            reason => format!("{:?}", e.reason),
                        }),
                        None,
                    ),
                    None => (None, Some(format!("There is no flag named `{name}`."))),
                }
            }
            Ok(_) => (None, Some("The context must be a JSON object.".to_owned())),
            Err(e) => (None, Some(format!("The context is not valid JSON: {e}"))),
        },
    };
    let status = if problem.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    super::page::render_status(
        status,
        "flags.html",
        "flags",
        "Flags",
        &user,
        context! { flags, result, problem, flag => q.flag, context => context_text },
    )
}

/// The rollout store the console reads: the server's own database unless configured.
pub struct Rollouts {
    url: String,
    store: tokio::sync::OnceCell<Arc<dyn StateStore>>,
}

impl Rollouts {
    /// Rollouts kept at `url` (`sqlite://…` or `postgres://…`), opened when first read.
    pub fn new(url: String) -> Self {
        Rollouts {
            url,
            store: tokio::sync::OnceCell::new(),
        }
    }

    async fn get(&self) -> Result<&Arc<dyn StateStore>, ConsoleError> {
        self.store
            .get_or_try_init(|| flotilla_rollout::store::open(&self.url))
            .await
            .map_err(|e| {
                ConsoleError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("The rollout store cannot be read: {e}"),
                )
            })
    }
}

fn state_view(s: &serde_json::Value) -> Value {
    let status = s["status"]["status"].as_str().unwrap_or("unknown");
    let reason = ["reason", "error"]
        .iter()
        .find_map(|k| s["status"][k].as_str())
        .map(str::to_owned);
    context! {
        name => s["name"].as_str(), strategy => s["strategy"].as_str().or_else(|| s["strategy"]["type"].as_str()),
        stable => s["stable_version"].as_str(), canary => s["canary_version"].as_str(),
        status, reason, step => s["step"].as_u64(), weight => s["weight"].as_u64(),
        updated => s["updated"].as_i64(), started => s["started"].as_i64(),
        paused => status == "paused", terminal => matches!(status, "promoted" | "rolled_back" | "aborted" | "failed"),
    }
}

/// `GET /ui/rollouts`.
pub(crate) async fn rollouts(
    State(state): State<AppState>,
    user: User,
) -> Result<Response, ConsoleError> {
    let store = state.rollouts.get().await?;
    let list = store
        .list(200)
        .await
        .map_err(|e| ConsoleError::internal(e.to_string()))?;
    let rollouts: Vec<Value> = list.iter().map(state_view).collect();
    render(
        "rollouts.html",
        "rollouts",
        "Rollouts",
        &user,
        context! { rollouts },
    )
}

/// `GET /ui/rollouts/{name}`.
pub(crate) async fn rollout(
    State(state): State<AppState>,
    user: User,
    Path(name): Path<String>,
) -> Result<Response, ConsoleError> {
    let store = state.rollouts.get().await?;
    let saved = store
        .load(&name)
        .await
        .map_err(|e| ConsoleError::internal(e.to_string()))?
        .ok_or_else(|| ConsoleError::not_found(format!("No rollout is named `{name}`.")))?;
    let history = store
        .history(&name, 1000)
        .await
        .map_err(|e| ConsoleError::internal(e.to_string()))?;
    let mut metrics: BTreeMap<String, Vec<(i64, Option<f64>, String)>> = BTreeMap::new();
    let mut decisions = Vec::new();
    for e in &history {
        match e.kind.as_str() {
            "measurement" => {
                let m = &e.body["measurement"];
                let value = match &m["value"] {
                    serde_json::Value::Number(n) => n.as_f64(),
                    serde_json::Value::Array(a) => a.first().and_then(|v| v.as_f64()),
                    _ => None,
                };
                let phase = m["phase"].as_str().unwrap_or("unknown").to_owned();
                let metric = e.body["metric"].as_str().unwrap_or("?").to_owned();
                let points = metrics.entry(metric).or_default();
                points.push((e.at, value, phase));
                if points.len() > 60 {
                    points.remove(0);
                }
            }
            "decision" => decisions.push(context! {
                at => e.at, decision => e.body["decision"].as_str(), cause => e.body["cause"].as_str(),
                message => e.body["message"].as_str(), step => e.body["step"].as_u64(), weight => e.body["weight"].as_u64(),
            }),
            _ => {}
        }
    }
    decisions.reverse();
    let charts: Vec<Value> = metrics
        .iter()
        .map(|(m, points)| {
            let last = points.last().map(|p| (p.1, p.2.clone()));
            context! {
                metric => m, svg => Value::from_safe_string(graph::sparkline(m, points)),
                last => last.as_ref().and_then(|l| l.0), phase => last.map(|l| l.1),
            }
        })
        .collect();
    let data = context! { r => state_view(&saved), charts, decisions, commands => ["promote", "pause", "resume", "abort"] };
    render(
        "rollout.html",
        "rollouts",
        &format!("Rollout {name}"),
        &user,
        data,
    )
}

/// `POST /ui/rollouts/{name}/{command}`: queues `promote`, `abort`, `pause` or `resume` for
/// the controller, as `flotilla rollout <command>` does.
pub(crate) async fn command(
    State(state): State<AppState>,
    Path((name, command)): Path<(String, String)>,
    Verified(user): Verified,
) -> Result<Response, ConsoleError> {
    let command = Command::parse(&command).ok_or_else(|| {
        ConsoleError::not_found(format!(
            "No rollout command `{command}`: use promote, abort, pause or resume."
        ))
    })?;
    let store = state.rollouts.get().await?;
    if store
        .load(&name)
        .await
        .map_err(|e| ConsoleError::internal(e.to_string()))?
        .is_none()
    {
        return Err(ConsoleError::not_found(format!(
            "No rollout is named `{name}`."
        )));
    }
    store
        .send(&name, command, super::format::now_ms())
        .await
        .map_err(|e| ConsoleError::internal(e.to_string()))?;
    tracing::info!(rollout = %name, command = command.name(), by = %user.name, "rollout command from the console");
    Ok(Redirect::to(&format!("/ui/rollouts/{name}?sent={}", command.name())).into_response())
}

//! The runs pages: a filtered, keyset-paged list with counts per status; a run with its DAG,
//! timeline, steps and actions; and the live feed both pages follow.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use flotilla_engine::Submission;
use flotilla_spec::Definition;
use flotilla_store::{MetadataMatch, RunQuery, RunStatus, RunSummary};
use futures_util::Stream;
use minijinja::{Value, context};
use serde::Deserialize;
use serde_json::json;

use super::error::ConsoleError;
use super::graph;
use super::page::render;
use super::session::{User, Verified};
use crate::AppState;

const PAGE: u32 = 50;

/// The list's filters, exactly as they sit in the URL.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Filters {
    #[serde(default)]
    workflow: String,
    #[serde(default)]
    status: String,
    /// `15m`, `1h`, `24h`, `7d`: created within that long.
    #[serde(default)]
    since: String,
    /// RFC 3339 bounds on the creation time.
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    /// `key=value` on the run's metadata.
    #[serde(default)]
    meta: String,
    /// The keyset cursor: runs older than this id.
    #[serde(default)]
    before: String,
}

fn parse_time(field: &str, text: &str) -> Result<Option<i64>, ConsoleError> {
    if text.is_empty() {
        return Ok(None);
    }
    let t = humantime::parse_rfc3339_weak(text.trim()).map_err(|_| {
        ConsoleError::bad_request(format!(
            "`{field}` must be a time such as 2026-12-01T09:30:00Z, not `{text}`"
        ))
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Ok(Some(ms))
}

impl Filters {
    fn query(&self, now: i64) -> Result<RunQuery, ConsoleError> {
        let status = match self.status.as_str() {
            "" => None,
            s => Some(
                RunStatus::parse(s)
                    .ok_or_else(|| ConsoleError::bad_request(format!("no run status `{s}`")))?,
            ),
        };
        let mut from = parse_time("from", &self.from)?;
        if !self.since.is_empty() {
            let d = humantime::parse_duration(&self.since).map_err(|_| {
                ConsoleError::bad_request(format!(
                    "`since` must be a duration such as 1h, not `{}`",
                    self.since
                ))
            })?;
            let since = now - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2);
            from = Some(from.map_or(since, |f| f.max(since)));
        }
        let metadata = match self.meta.trim() {
            "" => None,
            m => {
                let (k, v) = m.split_once('=').unwrap_or((m, ""));
                Some(MetadataMatch::new(k.trim(), v.trim()).ok_or_else(|| {
                    ConsoleError::bad_request(
                        "`meta` must be key=value, the key made of letters, digits, `_`, `-` and `.`",
                    )
                })?)
            }
        };
        Ok(RunQuery {
            workflow: Some(self.workflow.clone()).filter(|w| !w.is_empty()),
            status,
            limit: PAGE,
            before: Some(self.before.clone()).filter(|b| !b.is_empty()),
            created_from: from,
            created_to: parse_time("to", &self.to)?,
            metadata,
            // Tasks (`POST /api/v1/execute`) are runs too: the console shows both.
            kind: None,
        })
    }

    /// The URL of the list with these filters: `status` replaced when given, and the page
    /// that starts after `before` (the first page without it).
    fn url(&self, status: Option<&str>, before: Option<&str>) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        let status = status.unwrap_or(&self.status);
        for (k, v) in [
            ("workflow", self.workflow.as_str()),
            ("status", status),
            ("since", &self.since),
            ("from", &self.from),
            ("to", &self.to),
            ("meta", &self.meta),
            ("before", before.unwrap_or_default()),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        let q = q.finish();
        if q.is_empty() {
            "/ui/runs".into()
        } else {
            format!("/ui/runs?{q}")
        }
    }
}

fn summary(r: &RunSummary, now: i64, back: &str) -> Value {
    let mut metadata = r.metadata.clone();
    flotilla_spec::redact::redact_value(&mut metadata);
    let meta = match &metadata {
        serde_json::Value::Object(m) if !m.is_empty() => {
            super::format::clip(&serde_json::to_string(&metadata).unwrap_or_default(), 80)
        }
        _ => String::new(),
    };
    context! {
        id => r.id.clone(), href => format!("/ui/runs/{}?back={}", r.id, url::form_urlencoded::byte_serialize(back.as_bytes()).collect::<String>()),
        workflow => r.workflow.clone(), status => r.status.as_str(),
        created => r.created_at, took => r.finished_at.unwrap_or(now) - r.created_at,
        version => r.version.clone(), error => r.error.as_deref().map(|e| super::format::clip(&flotilla_spec::redact::redact_text(e), 120)), meta,
    }
}

/// `GET /ui/runs`.
pub(crate) async fn list(
    State(state): State<AppState>,
    user: User,
    Query(f): Query<Filters>,
) -> Result<Response, ConsoleError> {
    let engine = state.engine()?;
    let now = super::format::now_ms();
    let query = f.query(now)?;
    let (runs, counts) = tokio::try_join!(engine.list(&query), async {
        Ok(engine.store().count_runs(&query).await?)
    })?;
    let here = f.url(None, Some(&f.before));
    let next = (runs.len() == PAGE as usize)
        .then(|| runs.last().map(|r| f.url(None, Some(&r.id))))
        .flatten();
    let total: u64 = counts.iter().map(|c| c.1).sum();
    let statuses: Vec<Value> =
        std::iter::once(("all", total, f.url(Some(""), None), f.status.is_empty()))
            .chain(RunStatus::ALL.iter().map(|s| {
                let n = counts.iter().find(|c| c.0 == *s).map_or(0, |c| c.1);
                (
                    s.as_str(),
                    n,
                    f.url(Some(s.as_str()), None),
                    f.status == s.as_str(),
                )
            }))
            .map(|(name, n, href, on)| context! { name, n, href, on })
            .collect();
    let data = context! {
        runs => runs.iter().map(|r| summary(r, now, &here)).collect::<Vec<_>>(),
        statuses, next, first => (!f.before.is_empty()).then(|| f.url(None, None)),
        workflows => engine.workflow_names(),
        f => context! { workflow => f.workflow, status => f.status, since => f.since, from => f.from, to => f.to, meta => f.meta },
        status_names => RunStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    };
    render("runs.html", "runs", "Runs", &user, data)
}

#[derive(Deserialize)]
pub(crate) struct Back {
    #[serde(default)]
    back: String,
}

fn redacted(v: &serde_json::Value) -> String {
    let mut v = v.clone();
    flotilla_spec::redact::redact_value(&mut v);
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// `GET /ui/runs/{id}`.
pub(crate) async fn detail(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
    Query(b): Query<Back>,
) -> Result<Response, ConsoleError> {
    let engine = state.engine()?;
    let now = super::format::now_ms();
    let run = engine
        .run(&id)
        .await?
        .ok_or_else(|| ConsoleError::not_found(format!("No run has the id `{id}`.")))?;
    let events = engine.events(&id, 0).await?;
    let definition = engine
        .store()
        .definition(&run.definition_hash)
        .await
        .map_err(flotilla_engine::EngineError::from)?
        .and_then(|d| Definition::parse(&d).ok());
    let dag = definition.as_ref().map(|d| {
        let nodes: Vec<graph::Node<'_>> = d
            .workflow
            .steps
            .iter()
            .map(|s| graph::Node {
                id: &s.id,
                needs: &s.needs,
            })
            .collect();
        Value::from_safe_string(graph::dag(&nodes, &run, now))
    });
    let attempts = graph::attempts(&events);
    let gantt =
        (!attempts.is_empty()).then(|| Value::from_safe_string(graph::gantt(&attempts, &run, now)));
    // What each step was given, as its definition writes it (templates unrendered): the
    // store keeps outputs, not rendered inputs.
    let given = |id: &str| {
        let spec = definition
            .as_ref()?
            .workflow
            .steps
            .iter()
            .find(|s| s.id == id)?;
        let mut written = serde_json::Map::new();
        if let Some(i) = &spec.input {
            written.insert("input".into(), i.clone());
        }
        for (k, v) in [
            ("prompt", &spec.prompt),
            ("instructions", &spec.instructions),
        ] {
            if let Some(v) = v {
                written.insert(k.into(), json!(v));
            }
        }
        Some(if written.is_empty() {
            "the run's input".to_owned()
        } else {
            redacted(&serde_json::Value::Object(written))
        })
    };
    let steps: Vec<Value> = run
        .steps
        .iter()
        .map(|s| {
            context! {
                given => given(&s.step_id),
                id => s.step_id.clone(), status => s.status.as_str(), attempts => s.attempts, agent => s.agent.clone(),
                started => s.started_at, took => s.started_at.map(|t| s.finished_at.unwrap_or(now) - t),
                tokens => s.usage.map(|u| u.tokens()), cost => s.usage.map(|u| format!("{:.4}", u.cost_usd)),
                error => s.error.as_deref().map(flotilla_spec::redact::redact_text),
                output => s.output.as_ref().map(redacted),
            }
        })
        .collect();
    let title = format!("Run {}", run.id);
    let back = if b.back.starts_with("/ui/runs") {
        b.back
    } else {
        "/ui/runs".into()
    };
    let data = context! {
        id => run.id, workflow => run.workflow, status => run.status.as_str(), terminal => run.status.is_terminal(),
        kind => run.kind.as_str(), hash => run.definition_hash, version => run.version, priority => run.priority,
        created => run.created_at, finished => run.finished_at, took => run.finished_at.unwrap_or(now) - run.created_at,
        error => run.error.as_deref().map(flotilla_spec::redact::redact_text),
        input => redacted(&run.input), output => run.output.as_ref().map(redacted), metadata => redacted(&run.metadata),
        tokens => run.usage.tokens(), cost => format!("{:.4}", run.usage.cost_usd),
        dag, gantt, steps, back, rerun => run.kind == flotilla_store::RunKind::Workflow,
    };
    render("run.html", "runs", &title, &user, data)
}

/// `POST /ui/runs/{id}/cancel`.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Verified(user): Verified,
) -> Result<Response, ConsoleError> {
    let engine = state.engine()?;
    engine.cancel(&id).await?;
    tracing::info!(run_id = %id, by = %user.name, "run cancelled from the console");
    Ok(Redirect::to(&format!("/ui/runs/{id}")).into_response())
}

/// `POST /ui/runs/{id}/rerun`: a new run of the same workflow with the same input, priority
/// and metadata (plus `rerun_of`).
pub(crate) async fn rerun(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Verified(user): Verified,
) -> Result<Response, ConsoleError> {
    let engine = state.engine()?;
    let run = engine
        .run(&id)
        .await?
        .ok_or_else(|| ConsoleError::not_found(format!("No run has the id `{id}`.")))?;
    if run.kind != flotilla_store::RunKind::Workflow {
        return Err(ConsoleError::bad_request(
            "Only workflow runs can be run again.",
        ));
    }
    let mut metadata = match run.metadata {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    metadata.insert("rerun_of".into(), json!(run.id));
    let submitted = engine
        .submit(
            &run.workflow,
            Submission {
                input: run.input,
                priority: serde_json::from_value(json!(run.priority)).ok(),
                metadata: serde_json::Value::Object(metadata),
                idempotency: None,
                id: None,
            },
        )
        .await?;
    tracing::info!(run_id = %submitted.run_id, rerun_of = %id, by = %user.name, "run started again from the console");
    Ok(Redirect::to(&format!("/ui/runs/{}", submitted.run_id)).into_response())
}

#[derive(Deserialize)]
pub(crate) struct LiveQuery {
    run: Option<String>,
}

/// `GET /ui/live`: a `change` event whenever runs change (of one run with `?run=`), at most
/// one a second: the page re-renders its content on each.
pub(crate) async fn live(
    State(state): State<AppState>,
    Query(q): Query<LiveQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ConsoleError> {
    let engine = state.engine()?;
    let rx = engine.subscribe();
    let shutdown = state.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (rx, shutdown, q.run),
        |(mut rx, mut shutdown, run)| async move {
            use tokio::sync::broadcast::error::RecvError;
            // Wait for a change that concerns this page…
            loop {
                let got = tokio::select! {
                    got = rx.recv() => got,
                    _ = shutdown.wait_for(|s| *s) => return None,
                };
                match got {
                    Ok(e) if run.as_ref().is_none_or(|r| *r == e.run_id) => break,
                    Ok(_) | Err(RecvError::Lagged(_)) if run.is_none() => break,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return None,
                }
            }
            // …then let a second's worth of changes gather into one.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait_for(|s| *s) => return None,
            }
            rx = rx.resubscribe();
            let event = Event::default().event("change").data("{}");
            Some((Ok(event), (rx, shutdown, run)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

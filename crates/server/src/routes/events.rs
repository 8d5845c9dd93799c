//! `GET /api/v1/runs/{id}/events`: server-sent events of a run's transitions.
//!
//! Stored events are replayed first (after `Last-Event-ID` when the client resumes), then
//! live ones follow; the stream ends after `run_finished` or when the server shuts down.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use flotilla_store::EventRecord;
use futures_util::stream::{self, Stream, StreamExt};
use tokio_stream::wrappers::BroadcastStream;

use crate::AppState;
use crate::error::ApiError;

/// One server-sent event, as a client's parser sees it.
#[derive(utoipa::ToSchema)]
#[expect(
    dead_code,
    reason = "describes the wire format; events are built by `to_sse`"
)]
pub struct SseEvent {
    /// The kind: `run_started`, `step_succeeded`, `run_finished`, …
    event: String,
    /// The event's sequence number within its run; send it back as `Last-Event-ID`.
    id: String,
    /// The event as a JSON-encoded EventRecord.
    #[schema(content_media_type = "application/json")]
    data: String,
}

fn to_sse(e: &EventRecord) -> Event {
    Event::default()
        .event(e.kind.clone())
        .id(e.seq.to_string())
        .json_data(e)
        .unwrap_or_else(|_| Event::default().comment("unserializable event"))
}

/// Server-sent events of a run's transitions.
///
/// Each event's `id` is its sequence number; reconnect with `Last-Event-ID` to resume. The
/// stream ends after `run_finished`.
#[utoipa::path(get, path = "/api/v1/runs/{id}/events", operation_id = "streamRunEvents", tag = "runs",
    params(("id" = String, Path, description = "Run id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this sequence number")),
    responses((status = 200, description = "An event stream; each event's `data:` is an EventRecord", content_type = "text/event-stream", body = SseEvent),
        (status = "default", description = "An error", body = crate::error::ErrorBody)))]
pub async fn stream(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let engine = state.engine()?.clone();
    // Subscribe before reading the store so that nothing falls between the two.
    let live = BroadcastStream::new(engine.subscribe());
    let run = engine
        .run(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run with id `{id}`")))?;
    let after: i64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stored = engine.events(&id, after).await?;
    let last_seq = stored.last().map_or(after, |e| e.seq);
    let finished = run.status.is_terminal() && !engine.is_active(&id)
        || stored.iter().any(|e| e.kind == "run_finished");
    let replay = stream::iter(stored.iter().map(|e| Ok(to_sse(e))).collect::<Vec<_>>());
    let shutdown = state.shutdown.clone();
    let follow = stream::unfold(
        (live, shutdown, finished),
        move |(mut live, mut shutdown, done)| {
            let run_id = id.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    let next = tokio::select! {
                        next = live.next() => next?,
                        _ = shutdown.wait_for(|s| *s) => return None,
                    };
                    // A lagging receiver skips what it missed; the client can resume with Last-Event-ID.
                    let Ok(e) = next else { continue };
                    if e.run_id == run_id && e.seq > last_seq {
                        let end = e.kind == "run_finished";
                        return Some((Ok(to_sse(&e)), (live, shutdown, end)));
                    }
                }
            }
        },
    );
    Ok(Sse::new(replay.chain(follow))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

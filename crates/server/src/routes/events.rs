//! `GET /api/v1/runs/{id}/events`: server-sent events of a run's transitions.
//!
//! Stored events are replayed first (after `Last-Event-ID` when the client resumes), then
//! live ones follow; the stream ends after `run_finished` or when the server shuts down.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use flotilla_store::{EventKind, EventRecord};
use futures_util::stream::{self, Stream, StreamExt};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiPath, NoQuery};

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
        .event(e.kind.as_str())
        .id(e.seq.to_string())
        .json_data(e)
        .unwrap_or_else(|_| Event::default().comment("unserializable event"))
}

/// The live part of a stream: events from the broadcast, and from the store when this
/// subscriber fell behind the broadcast (it is told so with a `lagged` event, then gets what
/// it missed in order).
struct Follow {
    live: BroadcastStream<EventRecord>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    engine: flotilla_engine::Engine,
    run_id: String,
    last_seq: i64,
    done: bool,
    backlog: std::collections::VecDeque<EventRecord>,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Follow)> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                return Some(self.emit(&e));
            }
            if self.done {
                return None;
            }
            let next = tokio::select! {
                next = self.live.next() => next?,
                _ = self.shutdown.wait_for(|s| *s) => return None,
            };
            match next {
                Ok(e) if e.run_id == self.run_id && e.seq == self.last_seq + 1 => {
                    return Some(self.emit(&e));
                }
                Ok(e) if e.run_id == self.run_id && e.seq > self.last_seq => {
                    // A gap: events went by while this subscriber caught up from the store,
                    // which may not hold the newest yet (a step's start is written a moment
                    // after it is announced). Fill it from the store, then go on.
                    self.fill_gap(e).await?;
                }
                Ok(_) => {}
                Err(BroadcastStreamRecvError::Lagged(missed)) => {
                    // Catch up from the store, which has every event in order.
                    let Ok(stored) = self.engine.events(&self.run_id, self.last_seq).await else {
                        return None;
                    };
                    self.backlog.extend(stored);
                    let marker = Event::default().event("lagged").data(
                        serde_json::json!({
                            "missed_live_events": missed,
                            "resumed_from_store_after": self.last_seq,
                        })
                        .to_string(),
                    );
                    return Some((Ok(marker), self));
                }
            }
        }
    }

    /// Queues the stored events before `next`, then `next`: waits (bounded) for the store to
    /// hold them all. Ends the stream when the store cannot be read.
    async fn fill_gap(&mut self, next: EventRecord) -> Option<()> {
        let mut delay = Duration::from_millis(5);
        for _ in 0..40 {
            let stored = self.engine.events(&self.run_id, self.last_seq).await.ok()?;
            let have: Vec<EventRecord> = stored.into_iter().filter(|e| e.seq < next.seq).collect();
            if have.len() as i64 == next.seq - self.last_seq - 1 {
                self.backlog.extend(have);
                self.backlog.push_back(next);
                return Some(());
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
        // Not stored after ~15 s: say so rather than skip silently.
        tracing::warn!(run_id = %self.run_id, after = self.last_seq, "events missing from the store; the stream ends");
        None
    }

    fn emit(mut self, e: &EventRecord) -> (Result<Event, Infallible>, Follow) {
        self.last_seq = e.seq;
        if e.kind == EventKind::RunFinished {
            self.done = true;
            self.backlog.clear();
        }
        (Ok(to_sse(e)), self)
    }
}

/// Server-sent events of a run's transitions.
///
/// Each event's `id` is its sequence number; reconnect with `Last-Event-ID` to resume. The
/// stream ends after `run_finished` (at once for a finished run). A subscriber that falls
/// behind gets a `lagged` event, then the events it missed, read from the store.
#[utoipa::path(get, path = "/api/v1/runs/{id}/events", operation_id = "streamRunEvents", tag = "runs",
    params(("id" = String, Path, description = "Run id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this sequence number")),
    responses((status = 200, description = "An event stream; each event's `data:` is an EventRecord", content_type = "text/event-stream", body = SseEvent),
        (status = "default", description = "An error", body = crate::error::ErrorBody)))]
pub async fn stream(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    _: NoQuery,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let engine = state.engine()?.clone();
    // Subscribe before reading the store so that nothing falls between the two.
    let live = BroadcastStream::new(engine.subscribe());
    let run = engine.run(&id).await?.ok_or_else(|| engine.missing(&id))?;
    let after: i64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stored = engine.events(&id, after).await?;
    let last_seq = stored.last().map_or(after, |e| e.seq);
    // The store holds every event of a run it shows as finished (the last one is committed
    // with the status): replay them and end, wherever `Last-Event-ID` pointed.
    let finished =
        run.status.is_terminal() || stored.iter().any(|e| e.kind == EventKind::RunFinished);
    let replay = stream::iter(stored.iter().map(|e| Ok(to_sse(e))).collect::<Vec<_>>());
    let follow = stream::unfold(
        Follow {
            live,
            shutdown: state.shutdown.clone(),
            engine,
            run_id: id,
            last_seq,
            done: finished,
            backlog: std::collections::VecDeque::new(),
        },
        Follow::next,
    );
    Ok(Sse::new(replay.chain(follow))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

//! Group commit: durable commits that arrive while earlier ones are in flight are merged
//! into one statement (one round trip, one transaction, one WAL flush for all of them).
//! At most `slots` statements are in flight; while all are busy, the next batch grows.
//!
//! A merged statement is all or nothing, so one caller's bad write must not fail the others:
//! when a merged statement fails, each commit in it is retried on its own. A run fenced off
//! (another replica's claim raised its epoch) fails only its own commit.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use super::commit_batch;
use crate::record::Write;
use crate::{Result, StoreError};

/// Most writes merged into one statement.
const MAX_WRITES: usize = 4096;

struct Pending {
    writes: Vec<Write>,
    reply: oneshot::Sender<Result<()>>,
}

/// The group committer; its task and the statements in flight stop when it is dropped.
pub(super) struct Committer {
    tx: mpsc::UnboundedSender<Pending>,
    task: tokio::task::JoinHandle<()>,
}

impl Committer {
    pub(super) fn start(pool: PgPool, slots: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(pool, rx, slots.max(1)));
        Self { tx, task }
    }

    /// Commits `writes` in the next statement, and returns when it committed.
    pub(super) async fn commit(&self, writes: Vec<Write>) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Pending { writes, reply })
            .map_err(|_| StoreError::Closed)?;
        done.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(pool: PgPool, mut rx: mpsc::UnboundedReceiver<Pending>, slots: usize) {
    let slots = Arc::new(Semaphore::new(slots));
    // Owned here: aborting this task drops the set, which aborts the statements in flight.
    let mut statements = JoinSet::new();
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        while statements.try_join_next().is_some() {}
        let mut writes = first.writes.len();
        let mut batch = vec![first];
        while writes < MAX_WRITES {
            match rx.try_recv() {
                Ok(p) => {
                    writes += p.writes.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        statements.spawn(async move {
            let _slot = slot;
            apply(&pool, batch).await;
        });
    }
}

async fn apply(pool: &PgPool, batch: Vec<Pending>) {
    let all: Vec<&Write> = batch.iter().flat_map(|p| &p.writes).collect();
    match commit_batch(pool, &all).await {
        Ok(stale) => {
            for p in batch {
                let fenced = p.writes.iter().find_map(|w| match w {
                    Write::Fence { run_id, .. } if stale.contains(run_id) => Some(run_id.clone()),
                    _ => None,
                });
                let _ = p
                    .reply
                    .send(fenced.map_or(Ok(()), |r| Err(StoreError::Fenced(r))));
            }
        }
        Err(e) if batch.len() == 1 => {
            if let Some(p) = batch.into_iter().next() {
                let _ = p.reply.send(Err(e));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, commits = batch.len(), "a merged commit failed; committing each on its own");
            for p in batch {
                let r = super::commit_on(pool, &p.writes).await;
                let _ = p.reply.send(r);
            }
        }
    }
}

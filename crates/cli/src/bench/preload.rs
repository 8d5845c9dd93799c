//! `--preload`: a store holding finished runs before the workload starts.

use std::sync::Arc;

use flotilla_store::RunStatus;
use serde_json::json;

/// Stores `n` succeeded 10-step chain runs, with their steps and events, finished a day ago.
pub async fn preload(store: Arc<dyn flotilla_store::Store>, n: usize) -> anyhow::Result<()> {
    use flotilla_store::{EventKind, EventRecord, NewRun, RunKind, StepRecord, StepStatus, Write};
    let day_ago = flotilla_engine::now_ms() - 86_400_000;
    let limit = Arc::new(tokio::sync::Semaphore::new(512));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = limit.clone().acquire_owned().await?;
        let store = store.clone();
        tasks.spawn(async move {
            let id = uuid::Uuid::now_v7().to_string();
            store
                .create_run(NewRun {
                    id: id.clone(),
                    kind: RunKind::Workflow,
                    workflow: "chain".into(),
                    definition_hash: "bench-preload".into(),
                    definition: (i == 0).then(|| "{}".into()),
                    priority: "normal".into(),
                    input: json!({"i": i}),
                    metadata: json!({}),
                    idempotency_key: None,
                    created_at: day_ago,
                    deadline_at: None,
                    owner: None,
                    lease_until: None,
                    version: None,
                })
                .await?;
            let event = |seq: i64, kind, step: Option<String>| {
                Write::Event(EventRecord {
                    run_id: id.clone(),
                    seq,
                    at: day_ago,
                    kind,
                    step_id: step,
                    data: json!({}),
                })
            };
            let mut writes = vec![event(1, EventKind::RunStarted, None)];
            for s in 0..10 {
                let step_id = format!("s{s}");
                writes.push(Write::Step {
                    run_id: id.clone(),
                    step: StepRecord {
                        step_id: step_id.clone(),
                        status: StepStatus::Succeeded,
                        attempts: 1,
                        output: Some(json!({"i": i})),
                        error: None,
                        started_at: Some(day_ago),
                        finished_at: Some(day_ago),
                        agent: Some("noop".into()),
                        usage: None,
                    },
                });
                writes.push(event(2 + s, EventKind::StepSucceeded, Some(step_id)));
            }
            writes.push(event(12, EventKind::RunFinished, None));
            writes.push(Write::Run {
                run_id: id.clone(),
                status: RunStatus::Succeeded,
                output: Some(json!({"i": i})),
                error: None,
                at: day_ago,
            });
            store.enqueue(writes);
            drop(permit);
            anyhow::Ok(())
        });
        if i == 0 {
            // The first run stores the definition the others point at.
            while let Some(r) = tasks.join_next().await {
                r??;
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    store.commit(Vec::new()).await?;
    Ok(())
}

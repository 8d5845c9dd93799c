//! What every `Store` must do, whatever the backend.

use flotilla_store::*;
use serde_json::json;

pub fn new_run(id: &str, key: Option<&str>) -> NewRun {
    NewRun {
        id: id.into(),
        kind: RunKind::Workflow,
        workflow: "w".into(),
        definition_hash: "h1".into(),
        definition: Some("{\"steps\":[]}".into()),
        priority: "medium".into(),
        input: json!({"city": "Oslo"}),
        metadata: json!({}),
        idempotency_key: key.map(Into::into),
        created_at: 1,
        deadline_at: None,
        owner: None,
        lease_until: None,
        version: None,
    }
}

fn step(id: &str, status: StepStatus) -> StepRecord {
    StepRecord {
        step_id: id.into(),
        status,
        attempts: 1,
        output: Some(json!({"ok": id})),
        error: None,
        started_at: Some(2),
        finished_at: Some(3),
        agent: Some("planner".into()),
        usage: Some(Usage {
            prompt_tokens: 120,
            completion_tokens: 30,
            cost_usd: 0.25,
        }),
    }
}

pub async fn create_and_read_back(store: &dyn Store) {
    store.migrate().await.unwrap();
    assert_eq!(
        store.create_run(new_run("r1", None)).await.unwrap(),
        CreateOutcome::Created
    );
    let run = store.run("r1").await.unwrap().expect("stored");
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.input, json!({"city": "Oslo"}));
    assert!(run.steps.is_empty());
    assert_eq!(
        store.definition("h1").await.unwrap().as_deref(),
        Some("{\"steps\":[]}")
    );
    assert!(store.run("nope").await.unwrap().is_none());
}

pub async fn idempotency_key_finds_first_run(store: &dyn Store) {
    store.migrate().await.unwrap();
    assert_eq!(
        store.create_run(new_run("a", Some("k"))).await.unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(
        store.create_run(new_run("b", Some("k"))).await.unwrap(),
        CreateOutcome::Existing("a".into())
    );
    assert!(
        store.run("b").await.unwrap().is_none(),
        "nothing half-stored"
    );
}

pub async fn transitions_and_recovery_view(store: &dyn Store) {
    store.migrate().await.unwrap();
    store.create_run(new_run("r1", None)).await.unwrap();
    store.create_run(new_run("r2", None)).await.unwrap();
    store
        .commit(vec![
            Write::Run {
                run_id: "r1".into(),
                status: RunStatus::Running,
                output: None,
                error: None,
                at: 5,
            },
            Write::Step {
                run_id: "r1".into(),
                step: step("a", StepStatus::Succeeded),
            },
            Write::Event(EventRecord {
                run_id: "r1".into(),
                seq: 1,
                at: 5,
                kind: EventKind::StepSucceeded,
                step_id: Some("a".into()),
                data: json!({}),
            }),
            Write::Run {
                run_id: "r2".into(),
                status: RunStatus::Succeeded,
                output: Some(json!(1)),
                error: None,
                at: 6,
            },
        ])
        .await
        .unwrap();
    let unfinished = store.unfinished_runs().await.unwrap();
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].id, "r1");
    assert_eq!(unfinished[0].steps, vec![step("a", StepStatus::Succeeded)]);
    // A run's usage is the sum of its steps'.
    assert_eq!(unfinished[0].usage.tokens(), 150);
    assert_eq!(unfinished[0].usage.cost_usd, 0.25);
    let r2 = store.run("r2").await.unwrap().unwrap();
    assert_eq!(r2.finished_at, Some(6));
    assert_eq!(r2.output, Some(json!(1)));
    let events = store.events("r1", 0).await.unwrap();
    assert_eq!(events.len(), 1);
    assert!(store.events("r1", 1).await.unwrap().is_empty());
}

pub async fn list_pages_newest_first(store: &dyn Store) {
    store.migrate().await.unwrap();
    for id in ["01", "02", "03"] {
        store.create_run(new_run(id, None)).await.unwrap();
    }
    let page = store
        .list_runs(&RunQuery {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["03", "02"]
    );
    let next = store
        .list_runs(&RunQuery {
            limit: 2,
            before: Some("02".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["01"]
    );
    let none = store
        .list_runs(&RunQuery {
            limit: 5,
            status: Some(RunStatus::Failed),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
}

pub async fn enqueued_writes_land_before_later_commits(store: &dyn Store) {
    store.migrate().await.unwrap();
    store.create_run(new_run("r", None)).await.unwrap();
    store.enqueue(vec![Write::Step {
        run_id: "r".into(),
        step: step("a", StepStatus::Running),
    }]);
    store
        .commit(vec![Write::Step {
            run_id: "r".into(),
            step: step("b", StepStatus::Succeeded),
        }])
        .await
        .unwrap();
    let run = store.run("r").await.unwrap().unwrap();
    assert_eq!(run.steps.len(), 2);
}

/// A late record of an earlier state never overwrites a later one: a step that succeeded
/// stays succeeded, a finished run stays finished.
pub async fn transitions_never_go_backwards(store: &dyn Store) {
    store.migrate().await.unwrap();
    store.create_run(new_run("r", None)).await.unwrap();
    let done = Write::Run {
        run_id: "r".into(),
        status: RunStatus::Succeeded,
        output: Some(json!(1)),
        error: None,
        at: 9,
    };
    store
        .commit(vec![
            Write::Step {
                run_id: "r".into(),
                step: step("a", StepStatus::Succeeded),
            },
            done,
        ])
        .await
        .unwrap();
    store
        .commit(vec![
            Write::Step {
                run_id: "r".into(),
                step: step("a", StepStatus::Running),
            },
            Write::Run {
                run_id: "r".into(),
                status: RunStatus::Running,
                output: None,
                error: None,
                at: 10,
            },
        ])
        .await
        .unwrap();
    let run = store.run("r").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.steps[0].status, StepStatus::Succeeded);
    store
        .commit(vec![Write::Step {
            run_id: "r".into(),
            step: step("a", StepStatus::Compensated),
        }])
        .await
        .unwrap();
    assert_eq!(
        store.run("r").await.unwrap().unwrap().steps[0].status,
        StepStatus::Compensated
    );
}

/// Unfinished runs can be claimed; a claim is renewed by its holder only.
pub async fn claims_and_leases(store: &dyn Store) {
    store.migrate().await.unwrap();
    store.create_run(new_run("r1", None)).await.unwrap();
    store.create_run(new_run("r2", None)).await.unwrap();
    let claimed = store
        .claim_runs("a", 100, 1_000, 10, &|_| true)
        .await
        .unwrap();
    assert_eq!(
        claimed
            .iter()
            .map(|c| c.run.id.as_str())
            .collect::<Vec<_>>(),
        ["r1", "r2"]
    );
    assert_eq!(
        store
            .renew_leases("a", &["r1".into()], 2_000)
            .await
            .unwrap(),
        vec!["r1".to_owned()]
    );
    if store.is_shared() {
        assert!(
            store
                .claim_runs("b", 500, 5_000, 10, &|_| true)
                .await
                .unwrap()
                .is_empty(),
            "leases hold"
        );
        // r2's lease (1,000) has expired at 1,500; r1's (2,000) has not.
        let taken = store
            .claim_runs("b", 1_500, 5_000, 10, &|_| true)
            .await
            .unwrap();
        assert_eq!(
            taken.iter().map(|c| c.run.id.as_str()).collect::<Vec<_>>(),
            ["r2"]
        );
        // Each claim raised the epoch: a's writes under its old claim are refused whole,
        // b's land.
        let (old, new) = (claimed[1].epoch, taken[0].epoch);
        assert!(new > old, "epochs {old} then {new}");
        let batch = |epoch| {
            vec![
                Write::Fence {
                    run_id: "r2".into(),
                    epoch,
                },
                Write::Step {
                    run_id: "r2".into(),
                    step: step("a", StepStatus::Running),
                },
            ]
        };
        let refused = store.commit(batch(old)).await;
        assert!(
            matches!(refused, Err(StoreError::Fenced(ref r)) if r == "r2"),
            "{refused:?}"
        );
        assert!(store.run("r2").await.unwrap().unwrap().steps.is_empty());
        store.commit(batch(new)).await.unwrap();
        assert_eq!(store.run("r2").await.unwrap().unwrap().steps.len(), 1);
        assert!(
            store
                .renew_leases("a", &["r2".into()], 9_000)
                .await
                .unwrap()
                .is_empty(),
            "a lost r2"
        );
        store.release_leases("b").await.unwrap();
        let again = store
            .claim_runs("c", 1_500, 5_000, 10, &|_| true)
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
    }
}

/// Commits in flight together (which a store may merge into one transaction) land or fail
/// each on its own: on a shared store, a commit under a stale epoch fails alone and the
/// others land (a store one process owns has no claims, and lands them all).
pub async fn concurrent_commits_fail_only_the_fenced_run(store: &dyn Store) {
    store.migrate().await.unwrap();
    let fences = store.is_shared();
    let ids: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
    for id in &ids {
        store.create_run(new_run(id, None)).await.unwrap();
    }
    // A new run's epoch is 0: odd runs commit under an epoch no claim ever gave.
    let commits = ids.iter().enumerate().map(|(i, id)| {
        store.commit(vec![
            Write::Fence {
                run_id: id.clone(),
                epoch: if i % 2 == 0 { 0 } else { 7 },
            },
            Write::Step {
                run_id: id.clone(),
                step: step("a", StepStatus::Succeeded),
            },
        ])
    });
    let outcomes = futures_util::future::join_all(commits).await;
    for (i, (id, outcome)) in ids.iter().zip(outcomes).enumerate() {
        let steps = store.run(id).await.unwrap().unwrap().steps;
        if i % 2 == 0 || !fences {
            assert!(outcome.is_ok(), "{id}: {outcome:?}");
            assert_eq!(steps.len(), 1, "{id}");
        } else {
            assert!(
                matches!(outcome, Err(StoreError::Fenced(ref r)) if r == id),
                "{id}: {outcome:?}"
            );
            assert!(steps.is_empty(), "{id}");
        }
    }
}

/// A run whose stored status was set to `exploded` (outside flotilla) reads as a corrupt
/// record, alone and in lists.
pub async fn exploded_status_reads_as_corrupt(store: &dyn Store) {
    let err = store.run("r").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(w) if w.contains("exploded")),
        "{err:?}"
    );
    let query = RunQuery {
        limit: 10,
        ..Default::default()
    };
    let err = store.list_runs(&query).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
}

/// Runs carry the version that started them; a claim takes only the versions it accepts
/// (runs without a version are anyone's). A store one process owns takes them all.
pub async fn claims_by_version(store: &dyn Store) {
    store.migrate().await.unwrap();
    for (id, version) in [
        ("old", Some("1.0.0")),
        ("new", Some("2.0.0")),
        ("none", None),
    ] {
        let mut run = new_run(id, None);
        run.version = version.map(Into::into);
        store.create_run(run).await.unwrap();
    }
    let listed = store
        .list_runs(&RunQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let old = listed.iter().find(|r| r.id == "old").unwrap();
    assert_eq!(old.version.as_deref(), Some("1.0.0"));
    assert_eq!(
        store.run("new").await.unwrap().unwrap().version.as_deref(),
        Some("2.0.0")
    );
    let only_new = |v: Option<&str>| v.is_none_or(|v| v == "2.0.0");
    let mut taken: Vec<String> = store
        .claim_runs("b", 100, 1_000, 10, &only_new)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.run.id)
        .collect();
    taken.sort();
    if store.is_shared() {
        assert_eq!(taken, ["new", "none"]);
    } else {
        assert_eq!(taken, ["new", "none", "old"]);
    }
}

/// Unfinished runs move from one definition to another; finished ones stay.
pub async fn runs_move_between_definitions(store: &dyn Store) {
    store.migrate().await.unwrap();
    store.create_run(new_run("a", None)).await.unwrap();
    store.create_run(new_run("b", None)).await.unwrap();
    store
        .commit(vec![Write::Run {
            run_id: "b".into(),
            status: RunStatus::Succeeded,
            output: None,
            error: None,
            at: 5,
        }])
        .await
        .unwrap();
    let on = store.runs_on_definition("h1").await.unwrap();
    assert_eq!(on, [("a".to_owned(), "w".to_owned())]);
    let moved = store
        .move_runs(MoveRuns {
            from_hash: "h1".into(),
            to_hash: "h2".into(),
            workflow: "w".into(),
            body: "{\"workflow\":{\"steps\":[]}}".into(),
            at: 10,
        })
        .await
        .unwrap();
    assert_eq!(moved, ["a"]);
    assert_eq!(store.run("a").await.unwrap().unwrap().definition_hash, "h2");
    assert_eq!(store.run("b").await.unwrap().unwrap().definition_hash, "h1");
    assert!(store.definition("h2").await.unwrap().is_some());
    assert!(store.runs_on_definition("h1").await.unwrap().is_empty());
}

/// Lists filter by creation time and a metadata key, page within the filter, and counts
/// per status follow the same filters.
pub async fn list_filters_and_counts(store: &dyn Store) {
    use flotilla_store::MetadataMatch;
    store.migrate().await.unwrap();
    for (i, team) in ["red", "blue", "red", "blue", "red"].iter().enumerate() {
        let mut run = new_run(&format!("0{i}"), None);
        run.created_at = 100 * i as i64;
        run.metadata = json!({"team": team, "n": i, "a.b": "dotted"});
        store.create_run(run).await.unwrap();
    }
    store
        .commit(vec![Write::Run {
            run_id: "04".into(),
            status: RunStatus::Failed,
            output: None,
            error: Some("boom".into()),
            at: 500,
        }])
        .await
        .unwrap();
    let ids = |runs: Vec<RunSummary>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let red = RunQuery {
        limit: 10,
        metadata: MetadataMatch::new("team", "red"),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_runs(&red).await.unwrap()),
        ["04", "02", "00"]
    );
    let numeric = RunQuery {
        limit: 10,
        metadata: MetadataMatch::new("n", "3"),
        ..Default::default()
    };
    assert_eq!(ids(store.list_runs(&numeric).await.unwrap()), ["03"]);
    let dotted = RunQuery {
        limit: 10,
        metadata: MetadataMatch::new("a.b", "dotted"),
        ..Default::default()
    };
    assert_eq!(store.list_runs(&dotted).await.unwrap().len(), 5);
    let window = RunQuery {
        limit: 1,
        created_from: Some(100),
        created_to: Some(400),
        ..Default::default()
    };
    assert_eq!(ids(store.list_runs(&window).await.unwrap()), ["03"]);
    let next = RunQuery {
        before: Some("03".into()),
        limit: 10,
        ..window.clone()
    };
    assert_eq!(ids(store.list_runs(&next).await.unwrap()), ["02", "01"]);
    let mut counts = store.count_runs(&red).await.unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(counts, [(RunStatus::Failed, 1), (RunStatus::Queued, 2)]);
    let all = RunQuery {
        status: Some(RunStatus::Failed),
        before: Some("00".into()),
        ..Default::default()
    };
    let total: u64 = store
        .count_runs(&all)
        .await
        .unwrap()
        .iter()
        .map(|c| c.1)
        .sum();
    assert_eq!(total, 5, "counts ignore the status filter and the cursor");
    assert!(MetadataMatch::new("bad key", "x").is_none());
    assert!(MetadataMatch::new("", "x").is_none());
}

/// Stores run `id` of `workflow`, with a step and an event, ending in `status` at `at`
/// (`running` leaves it in flight).
async fn run_ending(store: &dyn Store, id: &str, workflow: &str, status: RunStatus, at: i64) {
    let mut run = new_run(id, Some(&format!("key-{id}")));
    run.workflow = workflow.into();
    store.create_run(run).await.unwrap();
    store
        .commit(vec![
            Write::Step {
                run_id: id.into(),
                step: step("a", StepStatus::Succeeded),
            },
            Write::Event(EventRecord {
                run_id: id.into(),
                seq: 1,
                at,
                kind: EventKind::StepSucceeded,
                step_id: Some("a".into()),
                data: json!({}),
            }),
            Write::Run {
                run_id: id.into(),
                status,
                output: None,
                error: None,
                at,
            },
        ])
        .await
        .unwrap();
}

pub async fn prune_deletes_expired_runs_with_their_steps_and_events(store: &dyn Store) {
    store.migrate().await.unwrap();
    for i in 0..5 {
        run_ending(
            store,
            &format!("old-{i}"),
            "w",
            RunStatus::Succeeded,
            100 + i,
        )
        .await;
    }
    run_ending(store, "old-failed", "w", RunStatus::Failed, 100).await;
    run_ending(store, "old-audit", "audit", RunStatus::Succeeded, 100).await;
    run_ending(store, "new", "w", RunStatus::Succeeded, 5_000).await;
    run_ending(store, "in-flight", "w", RunStatus::Running, 50).await;
    let rule = PruneRule {
        status: RunStatus::Succeeded,
        finished_before: 1_000,
        workflows: WorkflowMatch::Except(vec!["audit".into()]),
    };
    assert_eq!(store.count_prunable(&rule).await.unwrap(), 5);
    // Two at a time: each call deletes a batch, oldest first.
    assert_eq!(store.prune(&rule, 2).await.unwrap(), 2);
    assert!(store.run("old-0").await.unwrap().is_none());
    assert!(store.run("old-2").await.unwrap().is_some());
    assert_eq!(store.prune(&rule, 2).await.unwrap(), 2);
    assert_eq!(store.prune(&rule, 2).await.unwrap(), 1);
    assert_eq!(store.prune(&rule, 2).await.unwrap(), 0);
    for i in 0..5 {
        let id = format!("old-{i}");
        assert!(store.run(&id).await.unwrap().is_none(), "{id}");
        assert!(store.events(&id, 0).await.unwrap().is_empty(), "{id}");
    }
    // The idempotency key went with the run: it starts a new run now.
    assert_eq!(
        store
            .create_run(new_run("again", Some("key-old-0")))
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    // Other statuses, workflows left out, newer runs and runs in flight stay.
    for id in ["old-failed", "old-audit", "new", "in-flight"] {
        let run = store.run(id).await.unwrap().expect(id);
        assert_eq!(run.steps.len(), 1, "{id}");
        assert_eq!(store.events(id, 0).await.unwrap().len(), 1, "{id}");
    }
    let audit = PruneRule {
        status: RunStatus::Succeeded,
        finished_before: 1_000,
        workflows: WorkflowMatch::Only("audit".into()),
    };
    assert_eq!(store.prune(&audit, 10).await.unwrap(), 1);
    assert!(store.run("old-audit").await.unwrap().is_none());
    // A rule can never reach runs in flight, whatever it says.
    let running = PruneRule {
        status: RunStatus::Running,
        finished_before: i64::MAX,
        workflows: WorkflowMatch::All,
    };
    assert_eq!(store.prune(&running, 10).await.unwrap(), 0);
    assert!(store.run("in-flight").await.unwrap().is_some());
    assert!(store.size_bytes().await.unwrap() > 0);
}

//! The behaviour suite on SQLite, plus what only SQLite does.

use flotilla_store::{SqliteOptions, SqliteStore, Store, StoreError};

use crate::behaviour;

async fn fresh() -> Option<(tempfile::TempDir, SqliteStore)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = SqliteStore::open(&url, SqliteOptions::default())
        .await
        .unwrap();
    Some((dir, store))
}

crate::all_behaviours!();

/// Stores run `r` in the database at `url`, then closes it.
async fn create_run_r(url: &str) {
    let store = SqliteStore::open(url, SqliteOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
        .create_run(behaviour::new_run("r", None))
        .await
        .unwrap();
}

#[tokio::test]
async fn second_process_is_refused_by_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let _first = SqliteStore::open(&url, SqliteOptions::default())
        .await
        .unwrap();
    let err = SqliteStore::open(&url, SqliteOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
    assert!(
        err.to_string()
            .contains("in use by another flotilla process")
    );
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    create_run_r(&url).await;
    let store = SqliteStore::open(&url, SqliteOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    assert!(store.run("r").await.unwrap().is_some());
}

#[tokio::test]
async fn memory_urls_are_refused_with_a_reason() {
    let err = SqliteStore::open("sqlite::memory:", SqliteOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not durable"), "{err}");
}

// `storage.durability: durable` fsyncs every commit (synchronous = FULL on the write
// connection); `relaxed` does not (NORMAL); both run in WAL mode.
#[tokio::test]
async fn durable_fsyncs_every_commit_and_relaxed_does_not() {
    for (durable, level) in [(true, 2), (false, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteStore::open(
            &url,
            SqliteOptions {
                durable,
                ..SqliteOptions::default()
            },
        )
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let (mode, sync) = store.write_pragmas().await.unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, level, "durable: {durable}");
    }
}

#[tokio::test]
async fn a_status_flotilla_never_writes_reads_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.db");
    let url = format!("sqlite://{}", file.display());
    create_run_r(&url).await;
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute("UPDATE runs SET status = 'exploded'", [])
        .unwrap();
    let store = SqliteStore::open(&url, SqliteOptions::default())
        .await
        .unwrap();
    behaviour::exploded_status_reads_as_corrupt(&store).await;
}

#[tokio::test]
async fn the_file_shrinks_after_a_large_prune() {
    use flotilla_store::{PruneRule, RunStatus, WorkflowMatch, Write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let url = format!("sqlite://{}", path.display());
    let open = || SqliteStore::open(&url, SqliteOptions::default());
    {
        let store = open().await.unwrap();
        store.migrate().await.unwrap();
        let big = "x".repeat(8 * 1024);
        for i in 0..2_000 {
            let id = format!("r{i:05}");
            let mut run = behaviour::new_run(&id, None);
            run.input = serde_json::json!({ "text": big });
            store.create_run(run).await.unwrap();
            store.enqueue(vec![Write::Run {
                run_id: id,
                status: RunStatus::Succeeded,
                output: None,
                error: None,
                at: 10,
            }]);
        }
        store.commit(Vec::new()).await.unwrap();
    }
    let full = std::fs::metadata(&path).unwrap().len();
    assert!(full > 16 << 20, "{full} bytes");
    {
        let store = open().await.unwrap();
        let rule = PruneRule {
            status: RunStatus::Succeeded,
            finished_before: 1_000,
            workflows: WorkflowMatch::All,
        };
        while store.prune(&rule, 200).await.unwrap() > 0 {}
        assert_eq!(store.count_prunable(&rule).await.unwrap(), 0);
    }
    let pruned = std::fs::metadata(&path).unwrap().len();
    assert!(
        pruned < full / 10,
        "{full} bytes before the prune, {pruned} after"
    );
}

//! The behaviour suite on a real PostgreSQL (started by `scripts/test`), plus what only
//! PostgreSQL does.

use flotilla_store::{PostgresOptions, PostgresStore, Store};

/// A fresh database on the test cluster. Outside CI without a cluster, the tests skip with
/// a note; under `CI=true` a missing cluster fails them.
pub async fn fresh() -> Option<((), PostgresStore)> {
    let url = fresh_database().await?;
    Some((
        (),
        PostgresStore::connect(&url, PostgresOptions::default()).unwrap(),
    ))
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> Option<String> {
    let Ok(admin) = std::env::var("POSTGRES_TEST_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but POSTGRES_TEST_URL is not set: run the tests through scripts/test, which starts PostgreSQL"
        );
        eprintln!("skipped: POSTGRES_TEST_URL is not set (scripts/test starts PostgreSQL)");
        return None;
    };
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("the test cluster answers");
    let name = format!("t_{:016x}", rand_u64());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    Some(format!("{base}/{name}"))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

crate::all_behaviours!();

#[tokio::test]
async fn migrations_run_once_when_replicas_start_together() {
    let Some(url) = fresh_database().await else {
        return;
    };
    let a = PostgresStore::connect(&url, PostgresOptions::default()).unwrap();
    let b = PostgresStore::connect(&url, PostgresOptions::default()).unwrap();
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.unwrap();
    rb.unwrap();
    a.migrate().await.unwrap();
    assert!(a.unfinished_runs().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_unreachable_server_is_an_error_not_a_hang() {
    let store = PostgresStore::connect(
        "postgres://nobody@127.0.0.1:9/none",
        PostgresOptions {
            connect_timeout: std::time::Duration::from_millis(500),
            ..Default::default()
        },
    )
    .unwrap();
    let err = store.ping().await.unwrap_err();
    assert!(err.to_string().contains("unavailable"), "{err}");
}

#[tokio::test]
async fn a_status_flotilla_never_writes_reads_as_corrupt() {
    let Some(url) = fresh_database().await else {
        return;
    };
    let store = PostgresStore::connect(&url, PostgresOptions::default()).unwrap();
    store.migrate().await.unwrap();
    store
        .create_run(crate::behaviour::new_run("r", None))
        .await
        .unwrap();
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE runs SET status = 'exploded'")
        .execute(&mut conn)
        .await
        .unwrap();
    crate::behaviour::exploded_status_reads_as_corrupt(&store).await;
}

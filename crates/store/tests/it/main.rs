//! Store behaviour tests: one suite (`behaviour`), run against every backend.

mod behaviour;
mod postgres;
mod sqlite;

/// Generates one test per behaviour function for a backend whose `fresh()` returns
/// `Option<(guard, store)>` (`None`: the backend is not available outside CI).
macro_rules! behaviour_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let Some((_guard, store)) = fresh().await else { return };
            crate::behaviour::$name(&store).await;
        }
    )*};
}
pub(crate) use behaviour_tests;

/// Every behaviour, for each backend's module to instantiate.
macro_rules! all_behaviours {
    () => {
        crate::behaviour_tests!(
            create_and_read_back,
            idempotency_key_finds_first_run,
            transitions_and_recovery_view,
            list_pages_newest_first,
            enqueued_writes_land_before_later_commits,
            transitions_never_go_backwards,
            claims_and_leases,
            concurrent_commits_fail_only_the_fenced_run,
            claims_by_version,
            runs_move_between_definitions,
            list_filters_and_counts,
            prune_deletes_expired_runs_with_their_steps_and_events,
        );
    };
}
pub(crate) use all_behaviours;

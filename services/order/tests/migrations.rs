//! Several replicas starting at once on an empty PostgreSQL database all come up, and each
//! migration is applied once (the migrator's advisory lock, not luck).

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_migrate_an_empty_database_once() {
    msa_service_kit::testing::migrate_concurrently(&msa_order::MIGRATOR, "order", 8).await;
}

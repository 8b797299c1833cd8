//! Several replicas starting at once on an empty PostgreSQL database all come up, and each
//! migration is applied once (the migrator's advisory lock, not luck).

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_migrate_an_empty_database_once() {
    msa_service_kit::testing::migrate_concurrently(&msa_product::MIGRATOR, "product", 8).await;
}

/// Upgrading a database made by the first schema keeps every row, repairs a stock the old
/// overflow left as a float (SQLite; PostgreSQL refused it), and from then on refuses such writes.
async fn an_old_database_is_upgraded_in_place(backend: msa_service_kit::testing::TestBackend) {
    use msa_service_kit::testing::{TestBackend, fresh_database};
    use sqlx::Row;

    let url = fresh_database(backend, "product").await;
    // The first schema alone, as a database made before the upgrade has it.
    let old = tempdir_with_first_migration();
    let first = sqlx::migrate::Migrator::new(old.as_path()).await.unwrap();
    let db = msa_service_kit::db::Database::connect(&url, &first)
        .await
        .unwrap();
    let (product, broken, reservation) = ("p-1", "p-2", "r-1");
    for (id, stock) in [(product, 5i64), (broken, 9_223_372_036_854_775_800)] {
        sqlx::query("INSERT INTO products VALUES ($1, 'A', '', 100, $2, 't', 't')")
            .bind(id)
            .bind(stock)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO reservations VALUES ($1, 'reserved', 't', 't')")
        .bind(reservation)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO reservation_items VALUES ($1, $2, 2, 100)")
        .bind(reservation)
        .bind(product)
        .execute(&db.pool)
        .await
        .unwrap();
    if matches!(backend, TestBackend::Sqlite) {
        // What the defect did: an integer overflow SQLite stores as a float.
        sqlx::query("UPDATE products SET stock = stock + 100 WHERE id = $1")
            .bind(broken)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    db.pool.close().await;

    let db = msa_service_kit::db::Database::connect(&url, &msa_product::MIGRATOR)
        .await
        .expect("the upgrade applies");
    let stock = |id: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query("SELECT stock FROM products WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
                .try_get::<i64, _>("stock")
                .expect("an integer again")
        }
    };
    assert_eq!(stock(product).await, 5);
    assert_eq!(
        stock(broken).await,
        1_000_000_000,
        "a stock past the exact range comes back as the API's maximum"
    );
    let items: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM reservation_items WHERE reservation_id = $1")
            .bind(reservation)
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
    assert_eq!(items, 1, "reservations survive the copy");
    let overflow =
        sqlx::query("UPDATE products SET stock = stock + 9223372036854775000 WHERE id = $1")
            .bind(product)
            .execute(&db.pool)
            .await;
    assert!(overflow.is_err());
    let committed = sqlx::query("UPDATE reservations SET state = 'committed' WHERE id = $1")
        .bind(reservation)
        .execute(&db.pool)
        .await;
    assert!(committed.is_ok(), "the new state is allowed");
}

/// A folder holding a copy of the first migration only.
fn tempdir_with_first_migration() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("msa-product-migrations-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/0001_products.sql");
    std::fs::copy(source, dir.join("0001_products.sql")).unwrap();
    dir
}

msa_service_kit::on_both_backends!(an_old_database_is_upgraded_in_place);

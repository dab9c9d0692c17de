//! `adopt` on SQLite files that already hold rows placed by hand: every row is found afterwards,
//! keys on two files are reported (never dropped), composite keys are skipped, and a second run
//! changes nothing.

use collegedb_tests::*;
use pollster::block_on;

fn seed(dir: &std::path::Path) {
    for shard in 0..3 {
        let conn = rusqlite::Connection::open(dir.join(format!("s{shard}.sqlite"))).unwrap();
        conn.execute_batch(
            "CREATE TABLE users (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, email TEXT);
             CREATE TABLE items (sku INTEGER PRIMARY KEY, label TEXT);
             CREATE TABLE pairs (a TEXT, b TEXT, PRIMARY KEY (a, b));",
        )
        .unwrap();
        for i in (0..900).filter(|i| i % 3 == shard) {
            conn.execute(
                "INSERT INTO users (id, name, email) VALUES (?1, ?2, NULL)",
                (format!("old-{i}"), format!("name {i}")),
            )
            .unwrap();
            conn.execute(
                "INSERT INTO items (sku, label) VALUES (?1, ?2)",
                (i as i64 * 7 - 3000, format!("item {i}")),
            )
            .unwrap();
        }
    }
    // The same key in two files: a conflict adopt must report.
    for shard in [0, 2] {
        rusqlite::Connection::open(dir.join(format!("s{shard}.sqlite")))
            .unwrap()
            .execute(
                "INSERT INTO users (id, name, email) VALUES ('twice', ?1, NULL)",
                [format!("copy on s{shard}")],
            )
            .unwrap();
    }
}

#[test]
fn adopted_rows_are_all_found_and_conflicts_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let db = open(dir.path(), 3);
    let report = block_on(db.adopt()).unwrap();
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert_eq!(report.skipped[0].0, "pairs");
    let users = report.tables.iter().find(|t| t.table == "users").unwrap();
    assert_eq!(users.rows, 902);
    assert_eq!(users.conflicts.len(), 1, "{users:?}");
    assert_eq!(users.conflicts[0].0.to_string(), "\"twice\"");
    assert_eq!(users.on_hash_shard + users.recorded + 1, 902, "{users:?}");
    assert!(
        users.recorded > 500 && users.on_hash_shard > 250,
        "{users:?}"
    );
    let items = report.tables.iter().find(|t| t.table == "items").unwrap();
    assert_eq!((items.rows, items.key_column.as_str()), (900, "sku"));
    assert!(items.conflicts.is_empty());

    // Every pre-existing row is found, by the typed layer and by raw reads, from a cold handle.
    let cold = open(dir.path(), 3);
    block_on(async {
        for i in 0..900 {
            let user = User::find(&cold, format!("old-{i}")).await.unwrap();
            assert_eq!(user.unwrap().name, format!("name {i}"));
            let sku = i as i64 * 7 - 3000;
            let row = cold
                .table("items")
                .first(sku, "SELECT label FROM items WHERE sku = ?", &[sku.into()])
                .await
                .unwrap();
            assert_eq!(
                row.unwrap().get::<String>("label").unwrap(),
                format!("item {i}")
            );
        }
        assert!(
            User::find(&cold, "twice").await.unwrap().is_some(),
            "a copy is still served"
        );
        let items = cold.verify_table("items", "sku").await.unwrap();
        assert!(items.is_clean(), "{items}");
        let users = cold.verify_table("users", "id").await.unwrap();
        assert_eq!(users.duplicated.len(), 1, "only the conflict: {users}");
    });

    // A second run records nothing new.
    let entries = directory_entries(dir.path());
    let again = block_on(cold.adopt()).unwrap();
    assert_eq!(again, report);
    assert_eq!(directory_entries(dir.path()), entries);
}

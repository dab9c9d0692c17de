//! The typed layer end to end on the embedded backend: every operation, every column type,
//! every strategy.

use collegedb::{Region, ShardConfig, Strategy};
use collegedb_tests::*;
use pollster::block_on;

#[test]
fn insert_find_update_delete_upsert_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        User::create_table(&db).await.unwrap();
        let mut alice = User::new("alice");
        User::insert(&db, &alice).await.unwrap();
        assert_eq!(User::find(&db, "alice").await.unwrap(), Some(alice.clone()));
        assert_eq!(User::find(&db, "bob").await.unwrap(), None);

        let err = User::insert(&db, &alice).await.unwrap_err();
        assert_eq!(err.code(), "DUPLICATE_KEY", "{err}");

        alice.email = None;
        User::update(&db, &alice).await.unwrap();
        assert_eq!(
            User::find(&db, &alice.id).await.unwrap().unwrap().email,
            None
        );

        let err = User::update(&db, &User::new("ghost")).await.unwrap_err();
        assert_eq!(err.code(), "ROW_NOT_FOUND");

        alice.name = "Alice II".into();
        User::upsert(&db, &alice).await.unwrap();
        User::upsert(&db, &User::new("carol")).await.unwrap();
        assert_eq!(
            User::find(&db, "alice").await.unwrap().unwrap().name,
            "Alice II"
        );
        assert!(User::find(&db, "carol").await.unwrap().is_some());
        assert_eq!(User::count(&db).await.unwrap(), 2);

        assert!(User::delete(&db, "alice").await.unwrap());
        assert!(!User::delete(&db, "alice").await.unwrap());
        assert_eq!(User::find(&db, "alice").await.unwrap(), None);
        assert_eq!(User::count(&db).await.unwrap(), 1);
    });
}

fn order(id: i64) -> Order {
    Order {
        id,
        customer: format!("customer {id}"),
        quantity: -(id as i32),
        units: u32::MAX,
        total: id as f64 * 1.5,
        paid: id % 2 == 0,
        receipt: vec![0, 1, 2, 255, id as u8],
        note_id: (id % 3 == 0).then_some(collegedb::MAX_SAFE_INTEGER),
        meta: serde_json::json!({ "id": id, "nested": [1, "two", null] }),
        prefs: Prefs {
            theme: "dark".into(),
            tags: vec![format!("t{id}")],
        },
    }
}

#[test]
fn every_column_type_round_trips_and_round_robin_spreads_evenly() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        Order::create_table(&db).await.unwrap();
        for id in 0..300 {
            Order::insert(&db, &order(id)).await.unwrap();
        }
        for id in 0..300 {
            assert_eq!(Order::find(&db, id).await.unwrap(), Some(order(id)));
        }
    });
    // Round-robin placement: exactly 100 per shard, each recorded in the directory.
    assert_eq!(rows_per_shard(dir.path(), 3, "orders"), [100, 100, 100]);
    assert_eq!(directory_entries(dir.path()), 300);
}

#[test]
fn json_columns_are_text_and_readable_with_plain_sql() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1);
    block_on(async {
        Order::create_table(&db).await.unwrap();
        Order::insert(&db, &order(7)).await.unwrap();
        let row = db
            .first_shard("s0", "SELECT json_extract(preferences, '$.theme') AS theme, typeof(meta) AS t FROM orders", &[])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.get::<String>("theme").unwrap(), "dark");
        assert_eq!(row.get::<String>("t").unwrap(), "text");
    });
}

#[test]
fn random_placement_records_entries_and_reads_hash_first_still_find_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 4);
    block_on(async {
        Event::create_table(&db).await.unwrap();
        for id in 0..400u32 {
            Event::insert(
                &db,
                &Event {
                    id,
                    body: format!("e{id}"),
                },
            )
            .await
            .unwrap();
        }
        for id in 0..400u32 {
            assert_eq!(
                Event::find(&db, id).await.unwrap().unwrap().body,
                format!("e{id}")
            );
        }
    });
    let counts = rows_per_shard(dir.path(), 4, "events");
    assert!(
        counts.iter().all(|&c| (60..=140).contains(&c)),
        "{counts:?}"
    );
    assert_eq!(directory_entries(dir.path()), 400);
}

#[test]
fn location_strategy_places_near_the_target_region() {
    let dir = tempfile::tempdir().unwrap();
    let config = collegedb::Config::new()
        .shard(ShardConfig::new("us").region(Region::Enam))
        .shard(ShardConfig::new("eu1").region(Region::Weur))
        .shard(ShardConfig::new("eu2").region(Region::Weur).priority(3))
        .with_target_region(Region::Enam);
    let db = collegedb::CollegeDb::open_embedded(config, dir.path()).unwrap();
    block_on(async {
        Session::create_table(&db).await.unwrap();
        let eu = db.near(Region::Eeur);
        for i in 0..200 {
            let s = Session {
                token: format!("eu-{i}"),
                user_id: "u".into(),
            };
            Session::insert(&eu, &s).await.unwrap();
            let s = Session {
                token: format!("us-{i}"),
                user_id: "u".into(),
            };
            Session::insert(&db, &s).await.unwrap();
        }
        for i in 0..200 {
            assert_eq!(
                Session::locate(&db, format!("us-{i}"))
                    .await
                    .unwrap()
                    .as_deref(),
                Some("us")
            );
            let shard = Session::locate(&db, format!("eu-{i}"))
                .await
                .unwrap()
                .unwrap();
            assert!(shard == "eu1" || shard == "eu2", "{shard}");
        }
        let stats = db.get_shard_stats().await.unwrap();
        let rows: Vec<u64> = stats.iter().map(|s| s.rows).collect();
        assert_eq!(rows[0], 200);
        // Priorities 1 : 3 over 200 keys: about 50 : 150.
        assert!((25..=75).contains(&rows[1]), "{rows:?}");
        assert_eq!(rows[1] + rows[2], 200);
    });
}

#[test]
fn insert_many_chunks_within_the_parameter_limit_and_lands_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    // Orders have 10 columns: 10 rows per statement; 1,005 rows need many chunks and a remainder.
    let orders: Vec<Order> = (0..1005).map(order).collect();
    block_on(async {
        Order::create_table(&db).await.unwrap();
        assert_eq!(Order::insert_many(&db, &orders).await.unwrap(), 1005);
        assert_eq!(Order::count(&db).await.unwrap(), 1005);
        assert_eq!(Order::find(&db, 1004).await.unwrap(), Some(order(1004)));
        // A duplicate inside a shard's batch rolls that shard's whole batch back.
        let before = Order::count(&db).await.unwrap();
        let err = Order::insert_many(&db, &[order(2000), order(5)])
            .await
            .unwrap_err();
        assert_eq!(err.code(), "DUPLICATE_KEY");
        assert!(Order::count(&db).await.unwrap() <= before + 1);
    });
}

#[test]
fn model_strategy_overrides_the_config_default() {
    let dir = tempfile::tempdir().unwrap();
    // Config says round-robin; User inherits it, Order keeps its own (read hash).
    let db = open_with(dir.path(), 2, |c| c.with_strategy(Strategy::RoundRobin));
    block_on(async {
        User::create_table(&db).await.unwrap();
        for i in 0..10 {
            User::insert(&db, &User::new(format!("u{i}")))
                .await
                .unwrap();
        }
    });
    assert_eq!(rows_per_shard(dir.path(), 2, "users"), [5, 5]);
    assert_eq!(directory_entries(dir.path()), 10);
}

#[test]
fn scan_pages_through_every_shard_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 4);
    block_on(async {
        Order::create_table(&db).await.unwrap();
        User::create_table(&db).await.unwrap();
        // Inserted out of order, spread round-robin over 4 shards.
        let mut ids: Vec<i64> = (0..257).map(|i| (i * 7919) % 1000 - 500).collect();
        ids.sort();
        ids.dedup();
        for &id in ids.iter().rev() {
            Order::insert(&db, &order(id)).await.unwrap();
        }
        let (mut seen, mut after, mut pages) = (Vec::new(), None, 0);
        loop {
            let page = Order::scan(&db, after, 50).await.unwrap();
            assert!(page.rows.len() <= 50);
            pages += 1;
            seen.extend(page.rows.iter().map(|o| o.id));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, ids, "every row once, in key order");
        assert_eq!(pages, ids.len().div_ceil(50));
        // Text keys sort bytewise, as SQLite's BINARY collation does.
        for id in ["b", "a", "B", "é", "aa"] {
            User::insert(&db, &User::new(id)).await.unwrap();
        }
        let page = User::scan(&db, None, 10).await.unwrap();
        let keys: Vec<&str> = page.rows.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(keys, ["B", "a", "aa", "b", "é"]);
        assert_eq!(page.next, None);
        let page = User::scan(&db, Some("aa".into()), 1).await.unwrap();
        assert_eq!(page.rows[0].id, "b");
        assert_eq!(page.next.as_deref(), Some("b"));
    });
}

#[test]
fn scan_does_not_stop_early_when_one_shard_holds_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1);
    block_on(async {
        User::create_table(&db).await.unwrap();
        for id in ["a", "b", "c"] {
            User::insert(&db, &User::new(id)).await.unwrap();
        }
        let (mut seen, mut after) = (Vec::new(), None);
        loop {
            let page = User::scan(&db, after, 1).await.unwrap();
            seen.extend(page.rows.into_iter().map(|u| u.id));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, ["a", "b", "c"]);
    });
}

#[test]
fn scatter_gather_reports_failing_shards_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        // The table exists on s0 and s2 only: s1 fails the query.
        for shard in ["s0", "s2"] {
            db.run_shard(
                shard,
                "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)",
                &[],
            )
            .await
            .unwrap();
            db.run_shard(
                shard,
                "INSERT INTO notes VALUES (?, ?)",
                &[shard.into(), "x".into()],
            )
            .await
            .unwrap();
        }
        let scatter = db.all_shards("SELECT id FROM notes", &[]).await.unwrap();
        let shards: Vec<&str> = scatter
            .rows
            .iter()
            .map(|(shard, _)| shard.as_str())
            .collect();
        assert_eq!(shards, ["s0", "s2"]);
        assert_eq!(scatter.failures.len(), 1);
        assert_eq!(scatter.failures[0].0, "s1");
        assert_eq!(scatter.failures[0].1.code(), "QUERY_FAILED");
        assert_eq!(scatter.complete().unwrap_err().code(), "QUERY_FAILED");
        let whole = db
            .all_shards("SELECT 1 AS one", &[])
            .await
            .unwrap()
            .complete()
            .unwrap();
        assert_eq!(whole.len(), 3);
    });
}

#[test]
fn a_model_with_only_a_key_supports_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 2);
    block_on(async {
        Tag::create_table(&db).await.unwrap();
        let rust = Tag {
            name: "rust".into(),
        };
        Tag::insert(&db, &rust).await.unwrap();
        assert_eq!(Tag::find(&db, "rust").await.unwrap(), Some(rust.clone()));
        Tag::update(&db, &rust).await.unwrap();
        let err = Tag::update(
            &db,
            &Tag {
                name: "missing".into(),
            },
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), "ROW_NOT_FOUND");
        Tag::upsert(&db, &rust).await.unwrap();
        Tag::upsert(&db, &Tag { name: "new".into() }).await.unwrap();
        assert_eq!(Tag::count(&db).await.unwrap(), 2);
        assert!(Tag::delete(&db, "rust").await.unwrap());
        assert_eq!(Tag::count(&db).await.unwrap(), 1);
    });
}

#[test]
fn raw_routing_names_the_owner_shard() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        User::create_table(&db).await.unwrap();
        for i in 0..30 {
            let id = format!("u{i}");
            User::insert(&db, &User::new(id.as_str())).await.unwrap();
            let owner = db.table("users").shard_for(id.as_str()).await.unwrap();
            assert_eq!(
                Some(owner.to_owned()),
                User::locate(&db, id.as_str()).await.unwrap()
            );
            let row = db
                .table("users")
                .first(
                    id.as_str(),
                    "SELECT name FROM users WHERE id = ?",
                    &[id.as_str().into()],
                )
                .await
                .unwrap();
            assert_eq!(
                row.unwrap().get::<String>("name").unwrap(),
                format!("name of {id}")
            );
        }
        let changed = db
            .table("users")
            .run(
                "u3",
                "UPDATE users SET name = 'x' WHERE id = ?",
                &["u3".into()],
            )
            .await
            .unwrap();
        assert_eq!(changed, 1);
        let missing = db
            .table("users")
            .run(
                "nobody",
                "UPDATE users SET name = 'x' WHERE id = ?",
                &["nobody".into()],
            )
            .await
            .unwrap();
        assert_eq!(missing, 0);
    });
}

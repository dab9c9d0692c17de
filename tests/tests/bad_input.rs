//! Bad input gets a typed error and loses nothing; hostile values round-trip unchanged.

use collegedb::{Strategy, Value, MAX_SAFE_INTEGER};
use collegedb_tests::*;
use pollster::block_on;

#[test]
fn empty_and_oversized_keys_are_refused_before_any_io() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with(dir.path(), 3, |c| c.with_strategy(Strategy::RoundRobin));
    block_on(async {
        User::create_table(&db).await.unwrap();
        let err = User::insert(&db, &User::new("")).await.unwrap_err();
        assert_eq!(err.code(), "KEY_INVALID");
        let err = User::insert(&db, &User::new("k".repeat(513)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "KEY_TOO_LARGE");
        assert!(err.to_string().contains("513 bytes"), "{err}");
        assert_eq!(User::find(&db, "").await.unwrap_err().code(), "KEY_INVALID");
        assert_eq!(
            User::find(&db, "k".repeat(600)).await.unwrap_err().code(),
            "KEY_TOO_LARGE"
        );
        // Exactly 512 bytes is fine.
        User::insert(&db, &User::new("k".repeat(512)))
            .await
            .unwrap();
        assert!(User::find(&db, "k".repeat(512)).await.unwrap().is_some());
    });
    assert_eq!(directory_entries(dir.path()), 1);
}

#[test]
fn integers_d1_cannot_carry_exactly_are_refused_in_keys_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 2);
    let mut order = Order {
        id: MAX_SAFE_INTEGER + 1,
        customer: "c".into(),
        quantity: 1,
        units: 1,
        total: 1.0,
        paid: false,
        receipt: vec![],
        note_id: None,
        meta: serde_json::Value::Null,
        prefs: Prefs::default(),
    };
    block_on(async {
        Order::create_table(&db).await.unwrap();
        assert_eq!(
            Order::insert(&db, &order).await.unwrap_err().code(),
            "INTEGER_OUT_OF_RANGE"
        );
        assert_eq!(
            Order::find(&db, i64::MAX).await.unwrap_err().code(),
            "INTEGER_OUT_OF_RANGE"
        );
        assert_eq!(
            Order::find(&db, -MAX_SAFE_INTEGER - 1)
                .await
                .unwrap_err()
                .code(),
            "INTEGER_OUT_OF_RANGE"
        );
        order.id = MAX_SAFE_INTEGER;
        order.note_id = Some(i64::MIN);
        assert_eq!(
            Order::insert(&db, &order).await.unwrap_err().code(),
            "INTEGER_OUT_OF_RANGE"
        );
        assert_eq!(Order::count(&db).await.unwrap(), 0, "nothing half-written");
        order.note_id = Some(-MAX_SAFE_INTEGER);
        Order::insert(&db, &order).await.unwrap();
        assert_eq!(
            Order::find(&db, MAX_SAFE_INTEGER).await.unwrap(),
            Some(order.clone())
        );
        // Raw parameters are checked too.
        let err = db
            .run_shard("s0", "SELECT ?", &[Value::Integer(1 << 60)])
            .await
            .unwrap_err();
        assert_eq!(err.code(), "INTEGER_OUT_OF_RANGE");
    });
    // Round-robin claims happen after validation: the refused inserts left no entries behind.
    assert_eq!(directory_entries(dir.path()), 1);
}

#[test]
fn more_than_100_bound_parameters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 2);
    block_on(async {
        let placeholders = vec!["?"; 101].join(", ");
        let sql = format!("SELECT {placeholders}");
        let params: Vec<Value> = (0..101).map(Value::Integer).collect();
        let err = db.all_shard("s0", &sql, &params).await.unwrap_err();
        assert_eq!(err.code(), "TOO_MANY_PARAMETERS");
        assert!(err.to_string().contains("101"), "{err}");
        let err = db.table("t").all("k", &sql, &params).await.unwrap_err();
        assert_eq!(err.code(), "TOO_MANY_PARAMETERS");
        let err = db.all_shards(&sql, &params).await.unwrap_err();
        assert_eq!(err.code(), "TOO_MANY_PARAMETERS");
        // 100 is the limit, and it works.
        let sql = format!("SELECT {}", vec!["?"; 100].join(", "));
        let row = db
            .first_shard("s0", &sql, &params[..100])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.values().len(), 100);
    });
}

#[test]
fn unknown_shards_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 2);
    block_on(async {
        let err = db.run_shard("s9", "SELECT 1", &[]).await.unwrap_err();
        assert_eq!(err.code(), "SHARD_NOT_FOUND");
        assert!(
            err.to_string().contains("s9") && err.to_string().contains("s0, s1"),
            "{err}"
        );
        assert_eq!(
            db.all_shard("'; DROP TABLE x; --", "SELECT 1", &[])
                .await
                .unwrap_err()
                .code(),
            "SHARD_NOT_FOUND"
        );
    });
}

#[test]
fn hostile_strings_round_trip_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    // About 0.9 MB: two of them in one row stay within D1's 2 MB per row.
    let megabyte: String = "ab'\"\\\0ç🦀".chars().cycle().take(600_000).collect();
    let hostile = [
        "'; DROP TABLE users; --".to_string(),
        "\" OR 1=1 --".to_string(),
        "nul\0inside".to_string(),
        "\0".to_string(),
        "emoji 🦀 and RTL \u{202e} text".to_string(),
        "back\\slash and %_ wildcards".to_string(),
        "line\nbreaks\r\n\ttabs".to_string(),
        megabyte,
    ];
    block_on(async {
        User::create_table(&db).await.unwrap();
        for (i, text) in hostile.iter().enumerate() {
            // Hostile text as the key, and as values.
            let key: String = text.chars().take(100).collect();
            let user = User {
                id: key.clone(),
                name: text.clone(),
                email: Some(format!("{i}{text}")),
            };
            User::insert(&db, &user).await.unwrap();
            assert_eq!(User::find(&db, &key).await.unwrap(), Some(user), "case {i}");
        }
        assert_eq!(User::count(&db).await.unwrap(), hostile.len() as u64);
    });
}

#[test]
fn flush_is_refused_unless_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 2);
    block_on(async {
        User::create_table(&db).await.unwrap();
        User::insert(&db, &User::new("keep")).await.unwrap();
        assert_eq!(db.flush().await.unwrap_err().code(), "FLUSH_DISABLED");
        assert_eq!(User::count(&db).await.unwrap(), 1, "nothing deleted");
    });
    drop(db);
    let db = open_with(dir.path(), 2, |c| {
        c.allow_flush(true).with_strategy(Strategy::Random)
    });
    block_on(async {
        User::insert(&db, &User::new("placed")).await.unwrap();
        db.flush().await.unwrap();
        assert_eq!(User::count(&db).await.unwrap(), 0);
    });
    assert_eq!(directory_entries(dir.path()), 0);
}

#[test]
fn configuration_and_shard_list_mismatches_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err =
        collegedb::CollegeDb::open_embedded(collegedb::Config::new(), dir.path()).unwrap_err();
    assert_eq!(err.code(), "CONFIG_INVALID");
    let err = collegedb::Config::from_json(
        r#"{"shards":[{"name":"a"}],"strategy":{"read":"hash","write":"sideways"}}"#,
    )
    .unwrap_err();
    assert_eq!(err.code(), "CONFIG_INVALID");
    assert!(err.to_string().contains("sideways"), "{err}");
}

#[test]
fn location_without_regions_is_a_clear_error_not_a_silent_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 2);
    block_on(async {
        Session::create_table(&db).await.unwrap();
        let err = Session::insert(
            &db,
            &Session {
                token: "t".into(),
                user_id: "u".into(),
            },
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), "CONFIG_INVALID");
        assert!(err.to_string().contains("target region"), "{err}");
    });
}

#[test]
fn stats_count_real_rows_per_table_and_shard() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        User::create_table(&db).await.unwrap();
        Order::create_table(&db).await.unwrap();
        for i in 0..90 {
            User::insert(&db, &User::new(format!("u{i}")))
                .await
                .unwrap();
        }
        let stats = db.get_shard_stats().await.unwrap();
        let from_files = rows_per_shard(dir.path(), 3, "users");
        for (shard, expected) in stats.iter().zip(from_files) {
            assert_eq!(shard.tables["users"], expected as u64);
            assert_eq!(shard.tables["orders"], 0);
            assert!(shard.size_bytes > 0);
        }
        assert_eq!(stats.iter().map(|s| s.rows).sum::<u64>(), 90);
    });
}

#[test]
fn values_that_do_not_fit_the_field_are_decode_errors_naming_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1);
    block_on(async {
        Order::create_table(&db).await.unwrap();
        db.run_shard(
            "s0",
            "INSERT INTO orders (id, customer, quantity, units, total, paid, receipt, note_id, meta, preferences) \
             VALUES (1, 'c', 'not a number', 1, 1.0, 0, x'00', NULL, 'null', '{\"theme\":\"x\",\"tags\":[]}'), \
                    (2, 'c', 1, -5, 1.0, 0, x'00', NULL, 'null', '{\"theme\":\"x\",\"tags\":[]}'), \
                    (3, 'c', 1, 1, 1.0, 7, x'00', NULL, 'null', '{\"theme\":\"x\",\"tags\":[]}'), \
                    (4, 'c', 1, 1, 1.0, 0, x'00', NULL, 'null', 'not json')",
            &[],
        )
        .await
        .unwrap();
        for (id, column, code) in [
            (1, "quantity", "DECODE_FAILED"),
            (2, "units", "INTEGER_OUT_OF_RANGE"),
            (3, "paid", "DECODE_FAILED"),
            (4, "preferences", "DECODE_FAILED"),
        ] {
            let err = Order::find(&db, id).await.unwrap_err();
            assert_eq!(err.code(), code, "{err}");
            if code == "DECODE_FAILED" {
                assert!(err.to_string().contains(column), "{err}");
            }
        }
    });
}

/// Breaks the real coordinator (its counter table is dropped under it) and checks both fallbacks:
/// a local counter keeps round-robin writes going; `Error` refuses them with a typed code.
#[test]
fn coordinator_failure_follows_the_configured_fallback() {
    use collegedb::CoordinatorFallback;
    let dir = tempfile::tempdir().unwrap();
    // Opening a handle creates the counter table if missing: break it after each opens.
    let break_coordinator = || {
        let conn = rusqlite::Connection::open(dir.path().join("_directory.db")).unwrap();
        conn.execute_batch("DROP TABLE IF EXISTS counters").unwrap();
    };

    let strict = open_with(dir.path(), 3, |c| {
        c.with_strategy(Strategy::RoundRobin)
            .with_coordinator_fallback(CoordinatorFallback::Error)
    });
    block_on(User::create_table(&strict)).unwrap();
    break_coordinator();
    let err = block_on(User::insert(&strict, &User::new("refused"))).unwrap_err();
    assert_eq!(err.code(), "COORDINATOR_UNAVAILABLE", "{err}");
    assert!(err.is_retryable());
    assert_eq!(directory_entries(dir.path()), 0, "nothing claimed");

    let lenient = open_with(dir.path(), 3, |c| c.with_strategy(Strategy::RoundRobin));
    break_coordinator();
    block_on(async {
        for i in 0..9 {
            User::insert(&lenient, &User::new(format!("kept-{i}")))
                .await
                .unwrap();
        }
        for i in 0..9 {
            assert!(User::find(&lenient, format!("kept-{i}"))
                .await
                .unwrap()
                .is_some());
        }
    });
    // The local counter is still round-robin: 3 per shard.
    assert_eq!(rows_per_shard(dir.path(), 3, "users"), [3, 3, 3]);
}

#[derive(collegedb::Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "readings")]
struct Reading {
    #[sharded(key)]
    id: i64,
    maybe: Option<f64>,
    exact: f64,
}

#[test]
fn nan_is_refused_everywhere_and_negative_zero_reads_back_as_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 2);
    block_on(async {
        Reading::create_table(&db).await.unwrap();
        for (maybe, exact) in [(Some(f64::NAN), 1.0), (None, f64::NAN)] {
            let err = Reading::insert(
                &db,
                &Reading {
                    id: 1,
                    maybe,
                    exact,
                },
            )
            .await
            .unwrap_err();
            assert_eq!(err.code(), "VALUE_UNSUPPORTED", "{err}");
            assert_eq!(err.http_status(), 400);
            assert!(!err.is_retryable());
        }
        let err = db
            .run_shard("s0", "SELECT ?", &[Value::Real(f64::NAN)])
            .await
            .unwrap_err();
        assert_eq!(err.code(), "VALUE_UNSUPPORTED");
        assert_eq!(Reading::count(&db).await.unwrap(), 0, "nothing was stored");

        // Infinities are kept; -0.0 comes back as 0.0 (SQLite stores it as zero), as documented.
        let row = Reading {
            id: 2,
            maybe: Some(f64::INFINITY),
            exact: -0.0,
        };
        Reading::insert(&db, &row).await.unwrap();
        let back = Reading::find(&db, 2).await.unwrap().unwrap();
        assert_eq!(back.maybe, Some(f64::INFINITY));
        assert_eq!(back.exact, 0.0);
        assert!(
            !back.exact.is_sign_negative(),
            "the sign of zero is not kept"
        );
    });
}

#[test]
fn a_directory_entry_naming_an_unconfigured_shard_is_not_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with(dir.path(), 2, |c| c.with_strategy(Strategy::RoundRobin));
    block_on(User::create_table(&db)).unwrap();
    rusqlite::Connection::open(dir.path().join("_directory.db"))
        .unwrap()
        .execute(
            "INSERT INTO directory (scope, key, shard) VALUES ('users', CAST('sghost' AS BLOB), 'gone')",
            [],
        )
        .unwrap();
    let err = block_on(User::find(&db, "ghost")).unwrap_err();
    assert_eq!(err.code(), "DIRECTORY_INCONSISTENT", "{err}");
    assert!(!err.is_retryable(), "retrying can never succeed");
    assert_eq!(err.http_status(), 500);
    assert!(err.to_string().contains("`gone`"), "{err}");
}

#[test]
fn config_that_cannot_work_is_refused_at_open() {
    use collegedb::{Config, Region, ShardConfig};
    let dir = tempfile::tempdir().unwrap();
    let open = |config: Config| collegedb::CollegeDb::open_embedded(config, dir.path());

    let err = open(Config::with_shard_names(["a", "A"])).unwrap_err();
    assert_eq!(err.code(), "CONFIG_INVALID");
    assert!(err.to_string().contains("differ only in case"), "{err}");

    let err =
        open(Config::with_shard_names(["a", "b"]).with_strategy(Strategy::Location)).unwrap_err();
    assert_eq!(err.code(), "CONFIG_INVALID");
    assert!(err.to_string().contains("region"), "{err}");

    let regional = Config::new()
        .shard(ShardConfig::new("east").region(Region::Enam))
        .with_strategies(Strategy::Hash, Strategy::Location);
    let err = open(regional.clone()).unwrap_err();
    assert!(err.to_string().contains("target_region"), "{err}");
    assert!(open(regional.with_target_region(Region::Weur)).is_ok());
    assert!(
        dir.path().read_dir().unwrap().all(|f| {
            let name = f.unwrap().file_name();
            name != "a.sqlite" && name != "A.sqlite"
        }),
        "refused configurations create no shard files"
    );
}

/// A configuration that leaves out a shard of the stored map would strand its rows: refused with
/// a message naming the operation to use. Reordering changes nothing (placement follows the map),
/// and an extra shard is standby until `add_shard`. An empty deployment may change its list.
#[test]
fn a_shard_list_that_would_strand_rows_is_refused_and_order_does_not_matter() {
    use collegedb::{CollegeDb, Config};
    let dir = tempfile::tempdir().unwrap();
    let open = |names: &[&str]| {
        CollegeDb::open_embedded(Config::with_shard_names(names.iter().copied()), dir.path())
    };

    // While empty, the list may change.
    open(&["a", "b"]).unwrap();
    let db = open(&["a", "b", "c"]).unwrap();
    block_on(async {
        User::create_table(&db).await.unwrap();
        for i in 0..30 {
            User::insert(&db, &User::new(format!("u{i}")))
                .await
                .unwrap();
        }
    });
    drop(db);
    for (names, expected) in [
        (&["a", "b"][..], "drain_shard"),
        (&["a", "b", "x"][..], "missing from the configuration: c"),
        (&["a", "b", "x"][..], "run `add_shard` for it"),
    ] {
        let err = open(names).unwrap_err();
        assert_eq!(err.code(), "CONFIG_INVALID", "{names:?}");
        assert!(err.to_string().contains(expected), "{names:?}: {err}");
        assert!(err.to_string().contains("version 2: a, b, c"), "{err}");
    }
    assert!(
        !dir.path().join("x.sqlite").exists(),
        "a refused list creates no file"
    );
    // Another order, or a standby shard not in the map yet, routes exactly as before: every
    // row is found, and an upsert of an existing key writes no second copy.
    for names in [&["c", "a", "b"][..], &["a", "b", "c", "d"][..]] {
        let db = open(names).unwrap();
        assert_eq!(db.shard_map().version(), 2, "{names:?}");
        block_on(async {
            for i in 0..30 {
                let user = User::new(format!("u{i}"));
                assert!(User::find(&db, user.id.clone()).await.unwrap().is_some());
                User::upsert(&db, &user).await.unwrap();
            }
            assert_eq!(User::count(&db).await.unwrap(), 30, "{names:?}");
        });
    }
}

/// D1's size limits hold natively too, with the same codes: a TEXT or BLOB value and a row of
/// at most `MAX_VALUE_BYTES`, a statement of at most `MAX_STATEMENT_BYTES`. Nothing is written.
#[test]
fn values_rows_and_statements_beyond_d1_sizes_are_refused_natively_too() {
    use collegedb::{MAX_STATEMENT_BYTES, MAX_VALUE_BYTES};
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 2);
    block_on(async {
        User::create_table(&db).await.unwrap();
        // At the limit: stored.
        let mut user = User::new("big");
        user.name = "n".repeat(MAX_VALUE_BYTES - 100);
        user.email = None;
        User::insert(&db, &user).await.unwrap();
        assert_eq!(User::find(&db, "big").await.unwrap(), Some(user.clone()));

        // One value too large, through every typed write.
        let mut huge = User::new("huge");
        huge.name = "n".repeat(MAX_VALUE_BYTES + 1);
        for err in [
            User::insert(&db, &huge).await.unwrap_err(),
            User::upsert(&db, &huge).await.unwrap_err(),
            User::insert_many(&db, &[User::new("ok"), huge.clone()])
                .await
                .unwrap_err(),
        ] {
            assert_eq!(err.code(), "VALUE_TOO_LARGE", "{err}");
            assert_eq!(err.http_status(), 413);
            assert!(err.to_string().contains("2000001 bytes"), "{err}");
        }
        let mut grown = user.clone();
        grown.name = huge.name.clone();
        assert_eq!(
            User::update(&db, &grown).await.unwrap_err().code(),
            "VALUE_TOO_LARGE"
        );
        // Two values each within the limit, together beyond it: the row is too large.
        let mut wide = User::new("wide");
        wide.name = "n".repeat(MAX_VALUE_BYTES / 2 + 10);
        wide.email = Some("e".repeat(MAX_VALUE_BYTES / 2 + 10));
        let err = User::insert(&db, &wide).await.unwrap_err();
        assert_eq!(err.code(), "VALUE_TOO_LARGE");
        assert!(err.to_string().starts_with("a row of"), "{err}");

        // Raw SQL: a parameter too large, and a statement too long.
        let blob = Value::Blob(vec![0; MAX_VALUE_BYTES + 1]);
        let err = db.run_shard("s0", "SELECT ?", &[blob]).await.unwrap_err();
        assert_eq!(err.code(), "VALUE_TOO_LARGE");
        let long = format!("SELECT '{}'", "x".repeat(MAX_STATEMENT_BYTES));
        let err = db.all_shards(&long, &[]).await.unwrap_err();
        assert_eq!(err.code(), "STATEMENT_TOO_LARGE");
        assert_eq!(err.http_status(), 400);
        let err = db.table("users").run("big", &long, &[]).await.unwrap_err();
        assert_eq!(err.code(), "STATEMENT_TOO_LARGE");

        // Nothing of it was written.
        assert_eq!(User::count(&db).await.unwrap(), 1);
        assert_eq!(User::find(&db, "big").await.unwrap(), Some(user));
    });
}

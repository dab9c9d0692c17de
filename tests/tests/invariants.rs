//! The directory invariants of the design, each tested against real SQLite files:
//!
//! 1. A row that was written is found by every later read, from any handle or thread, whatever
//!    the strategies.
//! 2. Reads never create directory entries.
//! 3. Concurrent first writes of one new key settle on one shard.

use std::sync::{Arc, Barrier};

use collegedb::{CollegeDb, Config, Embedded, Region, ShardConfig, Strategy};
use collegedb_tests::*;
use pollster::block_on;

const STRATEGIES: [Strategy; 4] = [
    Strategy::Hash,
    Strategy::RoundRobin,
    Strategy::Random,
    Strategy::Location,
];

fn regional(read: Strategy, write: Strategy) -> Config {
    Config::new()
        .shard(ShardConfig::new("s0").region(Region::Weur))
        .shard(ShardConfig::new("s1").region(Region::Weur).priority(2))
        .shard(ShardConfig::new("s2").region(Region::Enam))
        .with_target_region(Region::Weur)
        .with_strategies(read, write)
}

/// Invariant 1, for all 16 pairings of read and write strategy: rows written through one handle
/// are found through a second handle with its own (cold) cache, and from other threads.
#[test]
fn every_written_row_is_found_under_every_strategy_pairing() {
    for read in STRATEGIES {
        for write in STRATEGIES {
            let dir = tempfile::tempdir().unwrap();
            let writer = CollegeDb::open_embedded(regional(read, write), dir.path()).unwrap();
            let ids: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
            block_on(async {
                User::create_table(&writer).await.unwrap();
                for id in &ids {
                    User::insert(&writer, &User::new(id.as_str()))
                        .await
                        .unwrap();
                }
                // The writer itself, with a warm cache.
                for id in &ids {
                    assert!(
                        User::find(&writer, id).await.unwrap().is_some(),
                        "{read:?}/{write:?} {id}"
                    );
                }
            });
            // Other handles (cold caches, like other processes or isolates) on other threads.
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let ids = ids.clone();
                    let path = dir.path().to_owned();
                    std::thread::spawn(move || {
                        let reader =
                            CollegeDb::open_embedded(regional(read, write), &path).unwrap();
                        block_on(async {
                            for id in &ids {
                                let found = User::find(&reader, id).await.unwrap();
                                let mut changed = found
                                    .unwrap_or_else(|| panic!("{read:?}/{write:?}: {id} lost"));
                                assert_eq!(changed.email, User::new(id.as_str()).email);
                                changed.name = "renamed".into();
                                User::update(&reader, &changed).await.unwrap();
                            }
                        });
                    })
                })
                .collect();
            for handle in handles {
                handle.join().unwrap();
            }
            let total: i64 = rows_per_shard(dir.path(), 3, "users").iter().sum();
            assert_eq!(total, 60, "{read:?}/{write:?}: no row duplicated or lost");
            block_on(async {
                for id in &ids {
                    assert_eq!(
                        User::find(&writer, id).await.unwrap().unwrap().name,
                        "renamed"
                    );
                }
            });
            let expected_entries = if write == Strategy::Hash { 0 } else { 60 };
            assert_eq!(
                directory_entries(dir.path()),
                expected_entries,
                "{read:?}/{write:?}"
            );
        }
    }
}

/// Invariant 1 again, for a read strategy that differs from the one the rows were written with:
/// data written under one configuration stays reachable after the read strategy changes.
#[test]
fn changing_the_read_strategy_never_hides_rows() {
    let dir = tempfile::tempdir().unwrap();
    for write in STRATEGIES {
        let db = CollegeDb::open_embedded(regional(Strategy::Hash, write), dir.path()).unwrap();
        block_on(async {
            User::create_table(&db).await.unwrap();
            for i in 0..30 {
                User::insert(&db, &User::new(format!("{write:?}-{i}")))
                    .await
                    .unwrap();
            }
        });
    }
    for read in STRATEGIES {
        let db = CollegeDb::open_embedded(regional(read, Strategy::Hash), dir.path()).unwrap();
        block_on(async {
            for write in STRATEGIES {
                for i in 0..30 {
                    let id = format!("{write:?}-{i}");
                    assert!(
                        User::find(&db, &id).await.unwrap().is_some(),
                        "read {read:?}: {id}"
                    );
                }
            }
        });
    }
}

/// Invariant 2: 1,000 lookups of made-up ids, through every read path, write nothing.
#[test]
fn reads_of_unknown_keys_create_no_directory_entries() {
    for read in STRATEGIES {
        let dir = tempfile::tempdir().unwrap();
        let db =
            CollegeDb::open_embedded(regional(read, Strategy::RoundRobin), dir.path()).unwrap();
        block_on(async {
            User::create_table(&db).await.unwrap();
            for i in 0..10 {
                User::insert(&db, &User::new(format!("real-{i}")))
                    .await
                    .unwrap();
            }
        });
        let entries_before = directory_entries(dir.path());
        let rows_before = rows_per_shard(dir.path(), 3, "users");
        assert_eq!(entries_before, 10);
        block_on(async {
            let users = db.table("users");
            for i in 0..1_000 {
                let id = format!("made-up-{i}");
                assert_eq!(User::find(&db, &id).await.unwrap(), None);
                assert!(!User::delete(&db, &id).await.unwrap());
                assert_eq!(User::locate(&db, &id).await.unwrap(), None);
                let row = users
                    .first(
                        id.as_str(),
                        "SELECT * FROM users WHERE id = ?",
                        &[id.as_str().into()],
                    )
                    .await
                    .unwrap();
                assert!(row.is_none());
            }
        });
        assert_eq!(
            directory_entries(dir.path()),
            entries_before,
            "read strategy {read:?}"
        );
        assert_eq!(rows_per_shard(dir.path(), 3, "users"), rows_before);
    }
}

fn racing_handles(
    dir: &std::path::Path,
    threads: usize,
    write: Strategy,
) -> Vec<CollegeDb<Embedded>> {
    (0..threads)
        .map(|_| open_with(dir, 3, |c| c.with_strategies(Strategy::Hash, write)))
        .collect()
}

/// Invariant 3: 8 threads, each with its own handle and cache, insert the same new key at the
/// same moment, 150 times per strategy. Every round ends with one winner, one row on one shard,
/// and one directory entry.
#[test]
fn concurrent_first_writes_of_one_key_settle_on_one_shard() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 150;
    for write in [Strategy::Random, Strategy::RoundRobin, Strategy::Hash] {
        let dir = tempfile::tempdir().unwrap();
        let handles = racing_handles(dir.path(), THREADS, write);
        block_on(User::create_table(&handles[0])).unwrap();
        let handles = Arc::new(handles);
        for round in 0..ROUNDS {
            let barrier = Arc::new(Barrier::new(THREADS));
            let outcomes: Vec<Result<(), String>> = (0..THREADS)
                .map(|t| {
                    let (handles, barrier) = (handles.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let user = User::new(format!("contended-{round}"));
                        barrier.wait();
                        block_on(User::insert(&handles[t], &user)).map_err(|e| e.code().to_owned())
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect();
            let winners = outcomes.iter().filter(|o| o.is_ok()).count();
            assert_eq!(winners, 1, "{write:?} round {round}: {outcomes:?}");
            assert!(
                outcomes
                    .iter()
                    .all(|o| o.is_ok() || o.as_ref().unwrap_err() == "DUPLICATE_KEY"),
                "{outcomes:?}"
            );
        }
        let total: i64 = rows_per_shard(dir.path(), 3, "users").iter().sum();
        assert_eq!(total, ROUNDS as i64, "{write:?}: exactly one row per key");
        let conn = rusqlite::Connection::open(dir.path().join("_directory.db")).unwrap();
        let per_key: i64 = conn
            .query_row("SELECT COUNT(*) FROM (SELECT key FROM directory GROUP BY scope, key HAVING COUNT(*) > 1)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(per_key, 0);
        let expected = if write == Strategy::Hash {
            0
        } else {
            ROUNDS as i64
        };
        assert_eq!(directory_entries(dir.path()), expected, "{write:?}");
        // Every row is where a cold handle looks for it.
        let reader = open_with(dir.path(), 3, |c| c.with_strategies(Strategy::Hash, write));
        for round in 0..ROUNDS {
            assert!(block_on(User::find(&reader, format!("contended-{round}")))
                .unwrap()
                .is_some());
        }
    }
}

/// Directory entries are scoped per table: the same key in two tables is two entries, each
/// pointing at its own shard.
#[test]
fn directory_entries_are_scoped_per_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with(dir.path(), 3, |c| c.with_strategy(Strategy::RoundRobin));
    block_on(async {
        db.run_all_shards("CREATE TABLE a (id TEXT PRIMARY KEY)", &[])
            .await
            .unwrap();
        db.run_all_shards("CREATE TABLE b (id TEXT PRIMARY KEY)", &[])
            .await
            .unwrap();
        let (a, b) = (db.table("a"), db.table("b"));
        a.run("same", "INSERT INTO a (id) VALUES (?)", &["same".into()])
            .await
            .unwrap();
        b.run("same", "INSERT INTO b (id) VALUES (?)", &["same".into()])
            .await
            .unwrap();
        // Round-robin hands consecutive tickets per table, so both start at shard s0; what matters
        // is that both are recorded and resolve independently.
        assert_eq!(directory_entries(dir.path()), 2);
        let page_a = collegedb::directory::Directory::list(db.directory(), "a", None, 10)
            .await
            .unwrap();
        let page_b = collegedb::directory::Directory::list(db.directory(), "b", None, 10)
            .await
            .unwrap();
        assert_eq!(page_a.entries.len(), 1);
        assert_eq!(page_b.entries.len(), 1);
        assert!(a
            .first("same", "SELECT id FROM a WHERE id = ?", &["same".into()])
            .await
            .unwrap()
            .is_some());
        assert!(b
            .first("same", "SELECT id FROM b WHERE id = ?", &["same".into()])
            .await
            .unwrap()
            .is_some());
    });
}

/// Directory listing pages through every entry with a cursor (the seed saw only the first page).
#[test]
fn directory_listing_pages_with_a_cursor() {
    use collegedb::directory::Directory;
    let dir = tempfile::tempdir().unwrap();
    let db = open_with(dir.path(), 2, |c| c.with_strategy(Strategy::Random));
    block_on(async {
        User::create_table(&db).await.unwrap();
        for i in 0..2_345 {
            User::insert(&db, &User::new(format!("k{i:05}")))
                .await
                .unwrap();
        }
        let (mut seen, mut cursor, mut pages) = (Vec::new(), None, 0);
        loop {
            let page = db
                .directory()
                .list("users", cursor.as_deref(), 1_000)
                .await
                .unwrap();
            pages += 1;
            seen.extend(page.entries.into_iter().map(|(k, _)| k));
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen.len(), 2_345);
        seen.dedup();
        assert_eq!(seen.len(), 2_345);
    });
}

/// Invariant 2 for raw writes: an `UPDATE` or `DELETE` of a made-up key, under any strategy,
/// writes nothing to the directory; only an `INSERT` places a key.
#[test]
fn raw_updates_and_deletes_of_unknown_keys_create_no_directory_entries() {
    for write in STRATEGIES {
        let dir = tempfile::tempdir().unwrap();
        let db = CollegeDb::open_embedded(regional(write, write), dir.path()).unwrap();
        block_on(async {
            db.run_all_shards("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)", &[])
                .await
                .unwrap();
            let notes = db.table("notes").with_strategies(write, write);
            for i in 0..1_000 {
                let id = format!("made-up-{i}");
                let deleted = notes
                    .run(
                        id.as_str(),
                        "DELETE FROM notes WHERE id = ?",
                        &[id.as_str().into()],
                    )
                    .await
                    .unwrap();
                let updated = notes
                    .run(
                        id.as_str(),
                        "/* no INSERT here */ UPDATE notes SET body = 'x' WHERE id = ?",
                        &[id.as_str().into()],
                    )
                    .await
                    .unwrap();
                assert_eq!((deleted, updated), (0, 0));
            }
            assert_eq!(directory_entries(dir.path()), 0, "write strategy {write:?}");
            assert_eq!(db.directory_ops().writes, 0);

            // An INSERT places the key; a later UPDATE reaches it on its shard.
            notes
                .run(
                    "real",
                    "INSERT INTO notes (id, body) VALUES (?, ?)",
                    &["real".into(), "v1".into()],
                )
                .await
                .unwrap();
            let changed = notes
                .run(
                    "real",
                    "UPDATE notes SET body = 'v2' WHERE id = ?",
                    &["real".into()],
                )
                .await
                .unwrap();
            assert_eq!(changed, 1, "write strategy {write:?}");
            let expected = if write == Strategy::Hash { 0 } else { 1 };
            assert_eq!(directory_entries(dir.path()), expected);
        });
    }
}

/// A miss on a table that only ever had hash placement is final on the hash shard: no directory
/// read. Once a key of the table is placed off its hash shard, misses ask the directory again,
/// and such rows are found from cold handles.
#[test]
fn hash_misses_skip_the_directory_until_a_key_is_placed_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        User::create_table(&db).await.unwrap();
        for i in 0..100 {
            User::insert(&db, &User::new(format!("real-{i}")))
                .await
                .unwrap();
        }
        for i in 0..10_000 {
            let id = format!("made-up-{i}");
            assert_eq!(User::find(&db, &id).await.unwrap(), None);
            if i % 10 == 0 {
                assert!(!User::delete(&db, &id).await.unwrap());
            }
        }
        assert_eq!(
            db.directory_ops().reads,
            0,
            "10,000 misses, no directory read"
        );
        for i in 0..100 {
            assert!(User::find(&db, format!("real-{i}"))
                .await
                .unwrap()
                .is_some());
        }

        // Now rows of `users` placed by round-robin (another writer with other strategies).
        let users = db
            .table("users")
            .with_strategies(Strategy::RoundRobin, Strategy::RoundRobin);
        for i in 0..60 {
            let id = format!("placed-{i}");
            users
                .run(
                    id.as_str(),
                    "INSERT INTO users (id, name, email) VALUES (?, ?, NULL)",
                    &[id.as_str().into(), "placed".into()],
                )
                .await
                .unwrap();
        }
    });
    // A cold handle (another process) finds every one of them hash-first.
    let cold = open(dir.path(), 3);
    block_on(async {
        for i in 0..60 {
            let id = format!("placed-{i}");
            assert!(User::find(&cold, &id).await.unwrap().is_some(), "{id}");
        }
        let reads_before = cold.directory_ops().reads;
        assert!(
            reads_before > 0,
            "off-hash rows were found through the directory"
        );
        // And misses on marked shards consult the directory again.
        for i in 0..100 {
            assert_eq!(
                User::find(&cold, format!("made-up-{i}")).await.unwrap(),
                None
            );
        }
        assert!(cold.directory_ops().reads > reads_before);
    });
}

/// Adding a shard makes it the hash shard of keys placed on the others. Keys placed by the
/// directory and read hash-first stay reachable: the move hands the giving shard's markers to the
/// new shard with its slots.
#[test]
fn directory_placed_keys_read_hash_first_survive_an_appended_shard() {
    for create_tables_after_append in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let strategies = |c: Config| c.with_strategies(Strategy::Hash, Strategy::RoundRobin);
        let before = open_with(dir.path(), 2, strategies);
        let ids: Vec<String> = (0..300).map(|i| format!("key-{i}")).collect();
        block_on(async {
            User::create_table(&before).await.unwrap();
            for id in &ids {
                User::insert(&before, &User::new(id.as_str()))
                    .await
                    .unwrap();
            }
        });
        drop(before);
        let after = open_with(dir.path(), 3, strategies);
        block_on(async {
            let job = after.add_shard("s2").await.unwrap();
            assert!(job.is_finished());
            if create_tables_after_append {
                User::create_table(&after).await.unwrap();
            } else {
                // As a migration tool would: the model's table only, no marker table.
                let sql = &<User as collegedb::Model>::sql().create_table;
                after.run_shard("s2", sql, &[]).await.unwrap();
            }
            for id in &ids {
                let found = User::find(&after, id).await.unwrap();
                assert!(
                    found.is_some(),
                    "{id} (create_table: {create_tables_after_append})"
                );
                let mut user = found.unwrap();
                user.name = "renamed".into();
                User::update(&after, &user).await.unwrap();
            }
        });
        assert_eq!(
            rows_per_shard(dir.path(), 3, "users").iter().sum::<i64>(),
            300
        );
        let report = block_on(after.verify_table("users", "id")).unwrap();
        assert!(report.is_clean(), "{report}");
    }
}

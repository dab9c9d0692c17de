//! `reassign`: one key moves to a named shard, and every handle follows it, including handles
//! opened before (another process) whose caches and routes still point at the old shard.
//! Rows are counted in the shard files directly, with plain rusqlite connections.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use collegedb::{CollegeDb, Embedded, Error, GrowthOptions};
use collegedb_tests::{keys_per_shard, open, open_with, Note, User};
use pollster::block_on;

/// The shard files holding `key`, by index.
fn holders(dir: &std::path::Path, shards: usize, table: &str, key: &str) -> Vec<usize> {
    keys_per_shard(dir, shards, table)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, shard)| shard)
        .collect()
}

/// A shard name other than the one holding `key`.
fn elsewhere(db: &CollegeDb<Embedded>, key: &str) -> (usize, String) {
    let holder = block_on(User::locate(db, key)).unwrap().unwrap();
    let index: usize = holder[1..].parse().unwrap();
    let to = (index + 1) % 3;
    (to, format!("s{to}"))
}

fn assert_clean(db: &CollegeDb<Embedded>, table: &str, key: &str) {
    let report = block_on(db.verify_table(table, key)).unwrap();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn a_hash_placed_key_moves_and_a_handle_opened_before_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), 3);
    block_on(async {
        User::create_table(&a).await.unwrap();
        for i in 0..300 {
            User::insert(&a, &User::new(format!("u{i}"))).await.unwrap();
        }
    });
    // Another process, which has read the key before the move.
    let b = open(dir.path(), 3);
    let key = "u42";
    assert!(block_on(User::find(&b, key)).unwrap().is_some());
    let (to, to_name) = elsewhere(&a, key);

    let job = block_on(a.reassign("users", key, &to_name)).unwrap();
    assert!(job.is_finished());
    assert_eq!(job.rows_copied(), 1);
    assert_eq!(job.rows_deleted(), 1);
    assert_eq!(holders(dir.path(), 3, "users", key), [to]);
    assert_clean(&a, "users", "id");

    block_on(async {
        // Reads and writes through the old handle land on the new shard.
        assert_eq!(User::find(&b, key).await.unwrap(), Some(User::new(key)));
        let mut changed = User::new(key);
        changed.name = "changed through b".into();
        User::update(&b, &changed).await.unwrap();
        assert_eq!(User::find(&a, key).await.unwrap(), Some(changed.clone()));
        // An insert of the key through either handle is a duplicate, not a second copy.
        let again = User::insert(&b, &User::new(key)).await;
        assert!(
            matches!(again, Err(Error::DuplicateKey { .. })),
            "{again:?}"
        );
        let bulk = User::insert_many(&b, &[User::new(key)]).await;
        assert!(bulk.is_err(), "{bulk:?}");
        changed.name = "upserted through b".into();
        User::upsert(&b, &changed).await.unwrap();
        assert_eq!(User::find(&a, key).await.unwrap(), Some(changed));
        // Deleted, then inserted again: it keeps its entry, so it comes back on the new shard.
        assert!(User::delete(&b, key).await.unwrap());
        assert_eq!(User::find(&a, key).await.unwrap(), None);
        User::insert(&b, &User::new(key)).await.unwrap();
        assert_eq!(User::locate(&a, key).await.unwrap(), Some(to_name.clone()));
        // Raw routed SQL follows too.
        let users = b.table("users");
        let raw = users
            .run(
                key,
                "INSERT OR REPLACE INTO users (id, name) VALUES (?, 'raw')",
                &[collegedb::Value::Text(key.into())],
            )
            .await
            .unwrap();
        assert_eq!(raw, 1);
    });
    assert_eq!(holders(dir.path(), 3, "users", key), [to]);
    assert_eq!(keys_per_shard(dir.path(), 3, "users").len(), 300);
    assert_clean(&b, "users", "id");

    // Back to its hash shard: the tombstone there goes, and inserts land there again.
    let hash = a.hash_shard(&collegedb::Key::text(key).unwrap());
    block_on(a.reassign("users", key, &format!("s{hash}"))).unwrap();
    assert_eq!(holders(dir.path(), 3, "users", key), [hash]);
    block_on(async {
        assert!(User::delete(&b, key).await.unwrap());
        User::insert(&b, &User::new(key)).await.unwrap();
    });
    assert_eq!(holders(dir.path(), 3, "users", key), [hash]);
    assert_clean(&a, "users", "id");

    // `flush` takes the tombstones with the entries: the key is inserted on its hash shard.
    block_on(a.reassign("users", key, &to_name)).unwrap();
    let a = open_with(dir.path(), 3, |config| config.allow_flush(true));
    block_on(async {
        a.flush().await.unwrap();
        User::insert(&a, &User::new(key)).await.unwrap();
    });
    assert_eq!(holders(dir.path(), 3, "users", key), [hash]);
}

#[test]
fn a_directory_placed_key_moves_and_a_cached_entry_cannot_duplicate_or_lose_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), 3);
    let key = "note-0000007";
    block_on(async {
        Note::create_table(&a).await.unwrap();
        let notes: Vec<Note> = (0..30).map(Note::numbered).collect();
        Note::insert_many(&a, &notes).await.unwrap();
    });
    let b = open(dir.path(), 3);
    // b caches the entry.
    assert!(block_on(Note::find(&b, key)).unwrap().is_some());
    let from: usize = block_on(Note::locate(&a, key)).unwrap().unwrap()[1..]
        .parse()
        .unwrap();
    let to = (from + 2) % 3;
    block_on(a.reassign("notes", key, &format!("s{to}"))).unwrap();
    assert_eq!(holders(dir.path(), 3, "notes", key), [to]);

    block_on(async {
        let mut note = Note::numbered(7);
        note.body = "updated through a stale cache".into();
        Note::update(&b, &note).await.unwrap();
        assert_eq!(Note::find(&a, key).await.unwrap(), Some(note.clone()));
        note.body = "upserted through a stale cache".into();
        Note::upsert(&b, &note).await.unwrap();
        assert!(Note::delete(&b, key).await.unwrap());
        // b placed this key itself long ago: its insert must still follow the store.
        Note::insert(&b, &Note::numbered(7)).await.unwrap();
    });
    assert_eq!(holders(dir.path(), 3, "notes", key), [to]);
    assert_eq!(keys_per_shard(dir.path(), 3, "notes").len(), 30);
    assert_clean(&a, "notes", "id");
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        User::create_table(&db).await.unwrap();
        User::insert(&db, &User::new("alice")).await.unwrap();
    });
    let missing = block_on(db.reassign("users", "nobody", "s1"));
    assert!(
        matches!(missing, Err(Error::RowNotFound { .. })),
        "{missing:?}"
    );
    let unknown = block_on(db.reassign("users", "alice", "s9"));
    assert!(
        matches!(unknown, Err(Error::ShardNotFound { .. })),
        "{unknown:?}"
    );
    let no_table = block_on(db.reassign("nope", "alice", "s1"));
    assert!(no_table.is_err(), "{no_table:?}");
    drop(db);
    // A standby shard (configured, not in the map) is refused too.
    let db = open(dir.path(), 4);
    let standby = block_on(db.reassign("users", "alice", "s3"));
    match standby {
        Err(Error::ConfigInvalid(why)) => assert!(why.contains("add_shard"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Where it is already: nothing to do.
    let here = block_on(User::locate(&db, "alice")).unwrap().unwrap();
    let job = block_on(db.reassign("users", "alice", &here)).unwrap();
    assert!(job.transfers.is_empty() && job.is_finished());
    assert!(block_on(db.growth_status()).unwrap().running.is_none());
    assert_eq!(keys_per_shard(dir.path(), 3, "users").len(), 1);
}

#[test]
fn a_reassignment_stopped_after_any_step_is_finished_by_resume_and_reads_never_miss() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    let key = "u7";
    block_on(async {
        User::create_table(&db).await.unwrap();
        for i in 0..50 {
            User::insert(&db, &User::new(format!("u{i}")))
                .await
                .unwrap();
        }
    });
    let (to, to_name) = elsewhere(&db, key);
    let operation = collegedb::growth::Operation::Reassign {
        table: "users".into(),
        key: collegedb::Key::text(key).unwrap(),
        shard: to_name,
    };
    block_on(db.start_growth(operation)).unwrap();
    let mut steps = 0;
    loop {
        // One step, as a runner killed after it would leave it; then a fresh handle (another
        // process) reads the key: between steps, the row is always found, exactly once or
        // as a copy the router does not serve.
        let job = block_on(db.advance_growth(&GrowthOptions::default(), 1))
            .unwrap()
            .expect("journaled");
        steps += 1;
        let other = open(dir.path(), 3);
        let frozen = job.transfers[0].phase == collegedb::growth::Phase::Copy
            || job.transfers[0].phase == collegedb::growth::Phase::Switch
            || job.transfers[0].phase == collegedb::growth::Phase::Delete;
        if !frozen {
            assert_eq!(
                block_on(User::find(&other, key)).unwrap(),
                Some(User::new(key)),
                "after step {steps}"
            );
        }
        if job.is_finished() {
            break;
        }
        assert!(steps < 20);
    }
    assert_eq!(steps, 5, "prepare, freeze, copy, switch, delete");
    assert_eq!(holders(dir.path(), 3, "users", key), [to]);
    assert_clean(&db, "users", "id");
    // The freeze was given back: every key of every slot is writable.
    block_on(async {
        for i in 0..50 {
            let mut user = User::new(format!("u{i}"));
            user.name = "after".into();
            User::update(&db, &user).await.unwrap();
        }
    });
}

#[test]
fn writers_keep_writing_keys_while_they_move_back_and_forth_and_no_acknowledged_write_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    let keys: [&'static str; 2] = ["hot0", "hot1"];
    block_on(async {
        User::create_table(&db).await.unwrap();
        for key in keys {
            User::insert(&db, &User::new(key)).await.unwrap();
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    // One writer per key, each on its own handle opened before the moves: `hot0` by upserts,
    // `hot1` by updates, with increasing values; each records its last acknowledged value.
    let writers: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(w, &key)| {
            let handle = open(dir.path(), 3);
            let stop = stop.clone();
            let acknowledged = Arc::new(AtomicU64::new(0));
            let last = acknowledged.clone();
            let thread = std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let mut user = User::new(key);
                    user.name = format!("{n:012}");
                    if w == 0 {
                        block_on(User::upsert(&handle, &user)).unwrap();
                    } else {
                        block_on(User::update(&handle, &user)).unwrap();
                    }
                    acknowledged.store(n, Ordering::SeqCst);
                }
            });
            (thread, last)
        })
        .collect();
    let mut moves = 0;
    for round in 0..12 {
        let key = keys[round % 2];
        let to = format!("s{}", (round / 2) % 3);
        match block_on(db.reassign("users", key, &to)) {
            Ok(job) => moves += usize::from(!job.transfers.is_empty()),
            Err(e) => panic!("{e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let last: Vec<u64> = writers
        .into_iter()
        .map(|(thread, last)| {
            thread.join().unwrap();
            last.load(Ordering::SeqCst)
        })
        .collect();
    assert!(last.iter().all(|&n| n > 0), "{last:?}");
    assert!(moves >= 8, "{moves} moves");
    assert_eq!(
        keys_per_shard(dir.path(), 3, "users").len(),
        2,
        "one copy of each key"
    );
    for (key, last) in keys.iter().zip(last) {
        let stored = block_on(User::find(&db, *key)).unwrap().unwrap();
        assert_eq!(
            stored.name,
            format!("{last:012}"),
            "{key}: the last acknowledged write"
        );
    }
    assert_clean(&db, "users", "id");
}

#[test]
fn a_reassigned_key_stays_put_when_its_slot_moves_and_comes_home_when_its_shard_drains() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    let keys: Vec<String> = (0..400).map(|i| format!("u{i}")).collect();
    block_on(async {
        User::create_table(&db).await.unwrap();
        for key in &keys {
            User::insert(&db, &User::new(key.clone())).await.unwrap();
        }
    });
    // 40 keys reassigned off their hash shard; about a quarter of their slots go to s3 below.
    let mut moved = Vec::new();
    for key in keys.iter().take(40) {
        let hash = db.hash_shard(&collegedb::Key::text(key.clone()).unwrap());
        let to = if hash == 0 { "s1" } else { "s0" };
        block_on(db.reassign("users", key.as_str(), to)).unwrap();
        moved.push((key.clone(), to.to_owned()));
    }
    drop(db);
    let db = open(dir.path(), 4);
    // s3 is standby; adding it moves slots, tombstones go with them.
    let job = block_on(db.add_shard("s3")).unwrap_or_else(|e| panic!("{e}"));
    assert!(job.is_finished());
    block_on(async {
        for (key, to) in &moved {
            assert!(User::delete(&db, key.as_str()).await.unwrap());
            User::insert(&db, &User::new(key.clone())).await.unwrap();
            assert_eq!(
                User::locate(&db, key.as_str()).await.unwrap().as_deref(),
                Some(to.as_str())
            );
        }
    });
    assert_clean(&db, "users", "id");
    // Draining s0 sends its reassigned keys home to their slots' owners.
    block_on(db.drain_shard("s0")).unwrap();
    block_on(async {
        for (key, _) in &moved {
            let found = User::find(&db, key.as_str()).await.unwrap();
            assert_eq!(found, Some(User::new(key.clone())), "{key}");
            assert!(User::delete(&db, key.as_str()).await.unwrap());
            if let Err(e) = User::insert(&db, &User::new(key.clone())).await {
                let entry = db
                    .directory_lookup("users", &collegedb::Key::text(key.clone()).unwrap())
                    .await
                    .unwrap();
                let hash = db.hash_shard(&collegedb::Key::text(key.clone()).unwrap());
                for i in 0..4 {
                    let conn = rusqlite::Connection::open(dir.path().join(format!("s{i}.sqlite")))
                        .unwrap();
                    let n: i64 = conn
                        .query_row(
                            "SELECT COUNT(*) FROM _collegedb_moved WHERE key = ?",
                            [key],
                            |r| r.get(0),
                        )
                        .unwrap();
                    eprintln!("s{i}: tombstones of {key}: {n}");
                }
                panic!("{key}: {e}; entry {entry:?} hash {hash}");
            }
        }
    });
    assert_eq!(keys_per_shard(dir.path(), 4, "users").len(), 400);
    assert_clean(&db, "users", "id");
}

#[test]
fn verify_reports_a_tombstone_on_the_shard_that_places_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        User::create_table(&db).await.unwrap();
        User::insert(&db, &User::new("bob")).await.unwrap();
    });
    let at = block_on(User::locate(&db, "bob")).unwrap().unwrap();
    assert_clean(&db, "users", "id");
    // As a damaged or hand-edited file would hold it.
    let conn = rusqlite::Connection::open(dir.path().join(format!("{at}.sqlite"))).unwrap();
    conn.execute(
        "INSERT INTO _collegedb_moved (scope, key) VALUES ('users', 'bob')",
        [],
    )
    .unwrap();
    let report = block_on(db.verify_table("users", "id")).unwrap();
    assert!(!report.is_clean(), "{report}");
    assert_eq!(report.blocked, [(collegedb::Key::text("bob").unwrap(), at)]);
    assert!(report.to_string().contains("blocked: \"bob\""), "{report}");
}

#[test]
fn verify_reports_a_fence_that_disagrees_with_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        User::create_table(&db).await.unwrap();
        User::insert(&db, &User::new("carol")).await.unwrap();
    });
    assert_clean(&db, "users", "id");
    // As a freeze left behind by a runner that never resumed would leave it.
    let slot = collegedb::slots::slot_of(&collegedb::Key::text("carol").unwrap());
    let owner = db.shard_map().owner(slot).to_owned();
    let conn = rusqlite::Connection::open(dir.path().join(format!("{owner}.sqlite"))).unwrap();
    conn.execute(
        "DELETE FROM _collegedb_slots WHERE slot IN (?1, -1)",
        [slot],
    )
    .unwrap();
    let report = block_on(db.verify_table("users", "id")).unwrap();
    assert!(!report.is_clean(), "{report}");
    assert_eq!(report.fence.len(), 1, "{report}");
    assert!(
        report.fence[0].starts_with(&format!("{owner}'s fence lacks 1 of its"))
            && report.fence[0].contains("and directory-placed rows"),
        "{report}"
    );
}

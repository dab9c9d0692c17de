//! Growing and draining a live deployment (`add_shard`, `drain_shard`): what moves, what stays,
//! and that handles holding the old map and writers running during the move lose nothing.
//! Rows are counted in the shard files directly, with plain rusqlite connections.
//!
//! The concurrent-writers test rebalances `COLLEGEDB_GROWTH_ROWS` rows (default 100,000).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use collegedb::{CollegeDb, Config, Embedded, GrowthOptions};
use collegedb_tests::{keys_per_shard, open, rows_per_shard, Note, User};
use pollster::block_on;

fn owners(keys: &[(String, usize)]) -> HashMap<String, usize> {
    keys.iter().cloned().collect()
}

#[test]
fn adding_a_shard_moves_a_quarter_of_the_rows_all_onto_it_and_a_second_run_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let rows = 30_000usize;
    let db = open(dir.path(), 3);
    block_on(async {
        User::create_table(&db).await.unwrap();
        let users: Vec<User> = (0..rows).map(|i| User::new(format!("u{i}"))).collect();
        User::insert_many(&db, &users).await.unwrap();
    });
    let before = owners(&keys_per_shard(dir.path(), 3, "users"));
    drop(db);

    let db = open(dir.path(), 4);
    assert_eq!(db.shard_map().shards(), ["s0", "s1", "s2"], "s3 is standby");
    let job = block_on(db.add_shard("s3")).unwrap();
    assert_eq!(job.transfers.len(), 3);
    assert_eq!(db.shard_map().shards(), ["s0", "s1", "s2", "s3"]);
    assert_eq!(db.shard_map().slots_of("s3").len(), 1024);

    let after = keys_per_shard(dir.path(), 4, "users");
    assert_eq!(after.len(), rows, "no row lost or duplicated");
    let mut moved = 0;
    for (key, shard) in &after {
        if *shard != before[key] {
            assert_eq!(*shard, 3, "{key} moved from s{} to s{shard}", before[key]);
            moved += 1;
        }
    }
    let fraction = moved as f64 / rows as f64;
    assert!((0.23..0.27).contains(&fraction), "moved {fraction}");
    assert_eq!(job.rows_copied(), moved as u64);
    assert_eq!(job.rows_deleted(), moved as u64);
    let counts = rows_per_shard(dir.path(), 4, "users");
    assert!(
        counts.iter().all(|&n| (6_800..8_200).contains(&n)),
        "{counts:?}"
    );

    block_on(async {
        for i in (0..rows).step_by(97) {
            let id = format!("u{i}");
            assert_eq!(
                User::find(&db, id.as_str()).await.unwrap(),
                Some(User::new(id))
            );
        }
        assert_eq!(User::count(&db).await.unwrap(), rows as u64);
        let report = db.verify_table("users", "id").await.unwrap();
        assert!(report.is_clean() && report.in_flight == 0, "{report}");
        // A second run changes nothing.
        let again = db.add_shard("s3").await.unwrap();
        assert!(again.transfers.is_empty() && again.is_finished());
        assert_eq!(db.shard_map().version(), 4);
        let status = db.growth_status().await.unwrap();
        assert!(status.running.is_none());
        assert_eq!(status.last.unwrap().rows_copied(), moved as u64);
    });
}

#[test]
fn draining_a_middle_shard_moves_hash_and_directory_placed_rows_and_retires_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 4);
    let notes: Vec<Note> = (0..3_000).map(Note::numbered).collect();
    block_on(async {
        User::create_table(&db).await.unwrap();
        Note::create_table(&db).await.unwrap();
        let users: Vec<User> = (0..6_000).map(|i| User::new(format!("u{i}"))).collect();
        User::insert_many(&db, &users).await.unwrap();
        // Round-robin: about a quarter of the notes sit on s1 by their directory entries.
        Note::insert_many(&db, &notes).await.unwrap();
        // A deleted directory-placed key keeps its entry, which must not keep naming s1.
        for note in notes.iter().take(40) {
            Note::delete(&db, note.id.as_str()).await.unwrap();
        }
    });
    assert!(rows_per_shard(dir.path(), 4, "notes")[1] > 500);

    let job = block_on(db.drain_shard("s1")).unwrap();
    assert_eq!(
        job.transfers.len(),
        4,
        "three slot transfers and the relocation"
    );
    assert_eq!(db.shard_map().shards(), ["s0", "s2", "s3"]);
    assert_eq!(rows_per_shard(dir.path(), 4, "users")[1], 0);
    assert_eq!(rows_per_shard(dir.path(), 4, "notes")[1], 0);
    assert_eq!(keys_per_shard(dir.path(), 4, "users").len(), 6_000);
    assert_eq!(keys_per_shard(dir.path(), 4, "notes").len(), 2_960);
    let conn = rusqlite::Connection::open(dir.path().join("_directory.db")).unwrap();
    let naming_s1: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM directory WHERE shard = 's1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        naming_s1, 0,
        "every entry naming the drained shard was moved"
    );

    block_on(async {
        for note in &notes[40..] {
            assert_eq!(
                Note::find(&db, note.id.as_str()).await.unwrap().as_ref(),
                Some(note)
            );
        }
        // A deleted key comes back on a live shard.
        Note::insert(&db, &notes[0]).await.unwrap();
        assert_ne!(
            Note::locate(&db, notes[0].id.as_str())
                .await
                .unwrap()
                .unwrap(),
            "s1"
        );
        for table in ["users", "notes"] {
            let report = db.verify_table(table, "id").await.unwrap();
            assert!(report.is_clean() && report.in_flight == 0, "{report}");
        }
    });
    drop(db);
    // The drained shard can leave the configuration now.
    let config = Config::with_shard_names(["s0", "s2", "s3"]);
    let db = CollegeDb::open_embedded(config, dir.path()).unwrap();
    assert_eq!(block_on(User::count(&db)).unwrap(), 6_000);
    assert_eq!(block_on(Note::count(&db)).unwrap(), 2_961);
}

#[test]
fn a_handle_with_the_old_map_is_refused_by_the_fence_and_follows_the_move() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let seed = open(dir.path(), 3);
        User::create_table(&seed).await.unwrap();
        let users: Vec<User> = (0..4_000).map(|i| User::new(format!("u{i}"))).collect();
        User::insert_many(&seed, &users).await.unwrap();
    });
    let mover = open(dir.path(), 4);
    let stale = open(dir.path(), 4);
    block_on(async {
        mover.add_shard("s3").await.unwrap();
        assert_eq!(
            stale.shard_map().version(),
            1,
            "the stale handle has not looked yet"
        );

        // Every kind of statement from the stale handle lands on the new owner.
        for i in 0..4_000 {
            let id = format!("u{i}");
            let found = User::find(&stale, id.as_str()).await.unwrap();
            assert_eq!(found, Some(User::new(id.as_str())), "{id}");
        }
        assert_eq!(
            stale.shard_map().version(),
            4,
            "refreshed on the first refusal"
        );
        let stale = open(dir.path(), 4);
        let mut user = User::new("u7");
        user.name = "renamed".into();
        User::update(&stale, &user).await.unwrap();
        User::upsert(&stale, &User::new("u8")).await.unwrap();
        assert!(User::delete(&stale, "u9").await.unwrap());
        for i in 4_000..4_400 {
            User::insert(&stale, &User::new(format!("u{i}")))
                .await
                .unwrap();
        }
        let again = open(dir.path(), 4);
        assert_eq!(User::find(&again, "u7").await.unwrap(), Some(user));
        assert_eq!(User::find(&again, "u9").await.unwrap(), None);
        let report = again.verify_table("users", "id").await.unwrap();
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.rows, 4_399);
    });
    assert_eq!(keys_per_shard(dir.path(), 4, "users").len(), 4_399);
}

fn growth_rows() -> usize {
    std::env::var("COLLEGEDB_GROWTH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// What a writer last had acknowledged for a key: `Some(name)` or deleted.
type Acknowledged = BTreeMap<String, Option<String>>;

/// Insert, update and delete keys until told to stop; returns what was acknowledged.
fn writer(db: CollegeDb<Embedded>, id: usize, stop: Arc<AtomicBool>) -> Acknowledged {
    let mut acked = Acknowledged::new();
    let mut round = 0usize;
    while !stop.load(Ordering::Relaxed) || round < 3 {
        block_on(async {
            for i in 0..200 {
                let key = format!("w{id}-{i}");
                match (round + i) % 3 {
                    0 => {
                        let mut user = User::new(key.as_str());
                        user.name = format!("round {round}");
                        User::upsert(&db, &user).await.unwrap();
                        acked.insert(key, Some(user.name));
                    }
                    1 if acked.get(&key).is_some_and(Option::is_some) => {
                        let mut user = User::new(key.as_str());
                        user.name = format!("updated {round}");
                        User::update(&db, &user).await.unwrap();
                        acked.insert(key, Some(user.name));
                    }
                    2 => {
                        User::delete(&db, key.as_str()).await.unwrap();
                        acked.insert(key, None);
                    }
                    _ => {}
                }
            }
        });
        round += 1;
    }
    acked
}

#[test]
fn writers_keep_every_acknowledged_write_through_a_rebalance_with_stale_handles() {
    let dir = tempfile::tempdir().unwrap();
    let rows = growth_rows();
    block_on(async {
        let seed = open(dir.path(), 3);
        User::create_table(&seed).await.unwrap();
        for chunk in (0..rows).collect::<Vec<_>>().chunks(10_000) {
            let users: Vec<User> = chunk.iter().map(|i| User::new(format!("u{i}"))).collect();
            User::insert_many(&seed, &users).await.unwrap();
        }
    });
    let db = open(dir.path(), 4);
    // Writers opened before the move hold the old map for its whole duration.
    let stop = Arc::new(AtomicBool::new(false));
    let steps = Arc::new(Mutex::new(0usize));
    let writers: Vec<_> = (0..3)
        .map(|id| {
            let (db, stop) = (open(dir.path(), 4), stop.clone());
            std::thread::spawn(move || writer(db, id, stop))
        })
        .collect();
    let counted = steps.clone();
    let options = GrowthOptions::default().on_step(move |_| *counted.lock().unwrap() += 1);
    let job = block_on(db.add_shard_with("s3", &options)).unwrap();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<Acknowledged> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(*steps.lock().unwrap() > 10);
    assert!(job.rows_copied() as f64 > rows as f64 * 0.2, "{job}");

    // Every acknowledged write is present exactly once, with its last value.
    let keys = keys_per_shard(dir.path(), 4, "users");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (key, _) in &keys {
        *seen.entry(key).or_default() += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "a key is on two shards");
    let fresh = open(dir.path(), 4);
    block_on(async {
        for acked in &acked {
            for (key, name) in acked {
                let found = User::find(&fresh, key.as_str()).await.unwrap();
                assert_eq!(found.map(|u| u.name), *name, "{key}");
                assert_eq!(seen.contains_key(key.as_str()), name.is_some(), "{key}");
            }
        }
        let report = fresh.verify_table("users", "id").await.unwrap();
        assert!(report.is_clean() && report.in_flight == 0, "{report}");
        let written = acked
            .iter()
            .flat_map(|a| a.values())
            .filter(|v| v.is_some());
        assert_eq!(report.rows as usize, rows + written.count());
    });
}

#[test]
fn a_second_runner_waits_for_the_lease_and_resume_takes_over_a_stalled_one() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let seed = open(dir.path(), 3);
        User::create_table(&seed).await.unwrap();
        let users: Vec<User> = (0..3_000).map(|i| User::new(format!("u{i}"))).collect();
        User::insert_many(&seed, &users).await.unwrap();
    });
    // The first runner stalls inside its fifth step until told to go on.
    let (stalled_tx, stalled_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let steps = Mutex::new(0);
    let options = GrowthOptions::default().page_rows(200).on_step(move |_| {
        let mut steps = steps.lock().unwrap();
        *steps += 1;
        if *steps == 5 {
            stalled_tx.send(()).unwrap();
            go_rx.lock().unwrap().recv().unwrap();
        }
    });
    let first = {
        let db = open(dir.path(), 4);
        std::thread::spawn(move || block_on(db.add_shard_with("s3", &options)))
    };
    stalled_rx.recv().unwrap();
    let second = open(dir.path(), 4);
    let refused = block_on(second.add_shard("s3")).unwrap_err();
    assert_eq!(refused.code(), "CONFIG_INVALID");
    assert!(refused.to_string().contains("lease"), "{refused}");
    // The operator decides the first runner is gone and resumes: it takes over and finishes.
    let job = block_on(second.resume_growth(&GrowthOptions::default()))
        .unwrap()
        .unwrap();
    assert!(job.is_finished());
    assert_eq!(job.to_version, Some(4));
    // The stalled runner wakes up, finds the operation taken over, and does nothing more.
    go_tx.send(()).unwrap();
    let woken = first.join().unwrap().unwrap_err();
    assert!(woken.to_string().contains("another runner"), "{woken}");
    let report = block_on(second.verify_table("users", "id")).unwrap();
    assert!(report.is_clean() && report.in_flight == 0, "{report}");
    assert_eq!(keys_per_shard(dir.path(), 4, "users").len(), 3_000);
}

#[test]
fn a_step_that_fails_hands_the_lease_back_and_the_next_run_resumes_at_once() {
    use collegedb::backend::embedded::EmbeddedOptions;
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let seed = open(dir.path(), 3);
        User::create_table(&seed).await.unwrap();
        let users: Vec<User> = (0..2_000).map(|i| User::new(format!("u{i}"))).collect();
        User::insert_many(&seed, &users).await.unwrap();
    });
    let config = Config::with_shard_names(["s0", "s1", "s2", "s3"]);
    let options = EmbeddedOptions::default().busy_timeout(std::time::Duration::from_millis(200));
    let db = CollegeDb::open_embedded_with(config, dir.path(), options).unwrap();
    // After the third step, another connection takes the new shard's write lock and keeps it:
    // the next copy page fails with SHARD_BUSY.
    let lock: Arc<Mutex<Option<rusqlite::Connection>>> = Arc::default();
    let (held, steps) = (lock.clone(), Mutex::new(0));
    let path = dir.path().join("s3.sqlite");
    let growth = GrowthOptions::default().page_rows(50).on_step(move |_| {
        let mut steps = steps.lock().unwrap();
        *steps += 1;
        if *steps == 3 {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
            *held.lock().unwrap() = Some(conn);
        }
    });
    let failed = block_on(db.add_shard_with("s3", &growth)).unwrap_err();
    assert_eq!(failed.code(), "SHARD_BUSY", "{failed}");
    let journal = block_on(db.growth_status()).unwrap().running.unwrap();
    assert!(journal.lease.is_none(), "the failed runner kept its lease");
    // With the lock gone, running it again resumes at once instead of waiting 30 s.
    drop(lock.lock().unwrap().take());
    let started = std::time::Instant::now();
    let job = block_on(db.add_shard("s3")).unwrap();
    assert!(job.is_finished() && started.elapsed().as_secs() < 20);
    let report = block_on(db.verify_table("users", "id")).unwrap();
    assert!(report.is_clean() && report.in_flight == 0, "{report}");
    assert_eq!(keys_per_shard(dir.path(), 4, "users").len(), 2_000);
}

#[test]
fn the_final_catch_up_ends_at_the_freeze_however_busy_the_other_keys_keep_the_log() {
    use collegedb::growth::Phase;
    use collegedb::slots::slot_of;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1);
    let users: Vec<User> = (0..400).map(|i| User::new(format!("u{i}"))).collect();
    block_on(User::create_table(&db)).unwrap();
    block_on(User::insert_many(&db, &users)).unwrap();
    drop(db);
    // After every step of the final catch-up, a writer straight on the giving file updates a
    // full page of rows whose slots stay: the log never runs short, so only the bound taken at
    // the freeze lets the switch come.
    const PAGE: usize = 4;
    let file = dir.path().join("s0.sqlite");
    let final_steps = Arc::new(Mutex::new(0usize));
    let counted = final_steps.clone();
    let options = GrowthOptions::default()
        .page_rows(PAGE)
        .on_step(move |job: &collegedb::Job| {
            let Some(t) = job.transfers.get(job.current) else {
                return;
            };
            if t.phase != Phase::FinalCatchUp {
                return;
            }
            let mut steps = counted.lock().unwrap();
            *steps += 1;
            assert!(*steps < 1_000, "the final catch-up did not end");
            let staying: Vec<String> = (0..400)
                .map(|i| format!("u{i}"))
                .filter(|id| {
                    !t.slots
                        .contains(&slot_of(&collegedb::Key::Text(id.clone())))
                })
                .take(PAGE)
                .collect();
            let conn = rusqlite::Connection::open(&file).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .unwrap();
            for id in staying {
                conn.execute(
                    "UPDATE users SET name = name || '.' WHERE id = ?",
                    [id.as_str()],
                )
                .unwrap();
            }
        });
    let db = open(dir.path(), 2);
    let job = block_on(db.add_shard_with("s1", &options)).unwrap();
    assert!(job.is_finished());
    let steps = *final_steps.lock().unwrap();
    // The writes of the first pass's wake came after the freeze: one more pass reaches it.
    assert!((1..=3).contains(&steps), "{steps} final catch-up steps");
    assert_eq!(keys_per_shard(dir.path(), 2, "users").len(), 400);
    let report = block_on(db.verify_table("users", "id")).unwrap();
    assert!(report.is_clean() && report.in_flight == 0, "{report}");
}

//! `reassign`, relocation and adopt interrupted inside a step (between a statement and the
//! journal's save), racing each other, or meeting raw SQL: each case once let a write be dropped,
//! a shard stay frozen, or a tombstone block the key where it lives.

use collegedb::directory::Directory;
use collegedb::growth::{Operation, Phase};
use collegedb::value::Value;
use collegedb::{CollegeDb, Embedded, GrowthOptions, Key};
use collegedb_tests::{keys_per_shard, open, Note, User};
use pollster::block_on;

fn holder(dir: &std::path::Path, table: &str, key: &str) -> Vec<usize> {
    keys_per_shard(dir, 3, table)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, s)| s)
        .collect()
}

/// Advances the journaled operation one step at a time until `stop` says so (or it finishes).
fn advance_until(
    db: &CollegeDb<Embedded>,
    stop: impl Fn(&collegedb::Job) -> bool,
) -> collegedb::Job {
    for _ in 0..200 {
        let job = block_on(db.advance_growth(&GrowthOptions::default(), 1))
            .unwrap()
            .expect("journaled");
        if job.is_finished() || stop(&job) {
            return job;
        }
    }
    panic!("did not reach the phase");
}

fn users(db: &CollegeDb<Embedded>, n: usize) {
    block_on(async {
        User::create_table(db).await.unwrap();
        for i in 0..n {
            User::insert(db, &User::new(format!("u{i}"))).await.unwrap();
        }
    });
}

/// A raw routed UPDATE between Prepare and Freeze changes the row, and the move carries it.
#[test]
fn raw_update_between_prepare_and_freeze_is_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    users(&db, 20);
    let key = "u7";
    let from = holder(dir.path(), "users", key)[0];
    let to = format!("s{}", (from + 1) % 3);
    let operation = Operation::Reassign {
        table: "users".into(),
        key: Key::text(key).unwrap(),
        shard: to,
    };
    block_on(db.start_growth(operation)).unwrap();
    let job = advance_until(&db, |job| job.transfers[0].phase == Phase::Freeze);
    assert_eq!(job.transfers[0].phase, Phase::Freeze, "prepare done");

    let other = open(dir.path(), 3);
    let changed = block_on(other.table("users").run(
        key,
        "UPDATE users SET name = ? WHERE id = ?",
        &[Value::Text("raw update".into()), Value::Text(key.into())],
    ))
    .unwrap();
    block_on(db.resume_growth(&GrowthOptions::default())).unwrap();
    let found = block_on(User::find(&other, key)).unwrap().unwrap();
    assert_eq!(
        (changed, found.name.as_str()),
        (1, "raw update"),
        "the raw UPDATE of an existing row was dropped"
    );
}

/// A runner killed inside Freeze (after revoking, before the journal's save): the resumed
/// Freeze revokes what Prepare journaled, and Delete gives all of it back.
#[test]
fn a_kill_inside_freeze_does_not_leave_the_holder_frozen_for_ever() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    users(&db, 20);
    let key = "u3";
    let from = holder(dir.path(), "users", key)[0];
    let from_name = format!("s{from}");
    let to = format!("s{}", (from + 1) % 3);
    let operation = Operation::Reassign {
        table: "users".into(),
        key: Key::text(key).unwrap(),
        shard: to,
    };
    block_on(db.start_growth(operation)).unwrap();
    advance_until(&db, |job| job.transfers[0].phase == Phase::Freeze);
    // What Freeze does before its journal save, then the process dies.
    let slot = collegedb::slots::slot_of(&Key::text(key).unwrap()) as i64;
    block_on(db.run_shard(
        &from_name,
        "DELETE FROM _collegedb_slots WHERE slot IN (?, -1)",
        &[Value::Integer(slot)],
    ))
    .unwrap();
    let job = block_on(open(dir.path(), 3).resume_growth(&GrowthOptions::default()))
        .unwrap()
        .unwrap();
    assert!(job.is_finished());
    let fence = block_on(db.all_shard(
        &from_name,
        "SELECT slot FROM _collegedb_slots WHERE slot IN (?, -1)",
        &[Value::Integer(slot)],
    ))
    .unwrap();
    assert_eq!(
        fence.len(),
        2,
        "{from_name} never got its slot {slot} and LIVE back: every key of that slot and every directory-placed key there blocks"
    );
}

/// Moving a key back to its hash shard: until the switch the copy there is hidden (a
/// tombstone) and the slot frozen on it, so a Copy run again after a kill overwrites nothing
/// that was acknowledged; after the move, writes land there and stay.
#[test]
fn a_resumed_copy_cannot_overwrite_a_write_on_the_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    users(&db, 20);
    let key = "u5";
    let hash = holder(dir.path(), "users", key)[0];
    let away = format!("s{}", (hash + 1) % 3);
    block_on(db.reassign("users", key, &away)).unwrap();
    let operation = Operation::Reassign {
        table: "users".into(),
        key: Key::text(key).unwrap(),
        shard: format!("s{hash}"),
    };
    block_on(db.start_growth(operation)).unwrap();
    advance_until(&db, |job| job.transfers[0].phase == Phase::Switch);
    // As a runner killed after the Copy's write and before its journal save leaves it.
    let job = block_on(db.growth_status()).unwrap().running.unwrap();
    assert_eq!(job.transfers[0].phase, Phase::Switch);
    let receiver = rusqlite::Connection::open(dir.path().join(format!("s{hash}.sqlite"))).unwrap();
    let slot = collegedb::slots::slot_of(&Key::text(key).unwrap()) as i64;
    let (admitted, hidden): (i64, i64) = receiver
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM _collegedb_slots WHERE slot = ?1), \
             EXISTS (SELECT 1 FROM _collegedb_moved WHERE scope = 'users' AND key = ?2)",
            rusqlite::params![slot, key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (admitted, hidden),
        (0, 1),
        "frozen and hidden on the receiver"
    );
    block_on(db.resume_growth(&GrowthOptions::default())).unwrap();
    let other = open(dir.path(), 3);
    let mut changed = User::new(key);
    changed.name = "acknowledged".into();
    block_on(User::update(&other, &changed)).unwrap();
    // A second resume (nothing left) changes nothing.
    assert!(block_on(db.resume_growth(&GrowthOptions::default()))
        .unwrap()
        .is_none());
    assert_eq!(block_on(User::find(&other, key)).unwrap(), Some(changed));
    assert_eq!(holder(dir.path(), "users", key), [hash]);
}

/// A drain's relocation killed inside its Switch, after repointing one entry and before
/// removing the copies' tombstones: the resumed Switch lists the entry again (it names the new
/// shard now) and removes the tombstone there.
#[test]
fn a_kill_inside_a_relocation_switch_leaves_no_tombstone_where_the_key_lives() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    users(&db, 20);
    let key = "u9";
    let hash = holder(dir.path(), "users", key)[0];
    let away = (hash + 1) % 3;
    block_on(db.reassign("users", key, &format!("s{away}"))).unwrap();
    block_on(db.start_growth(Operation::DrainShard {
        shard: format!("s{away}"),
    }))
    .unwrap();
    advance_until(&db, |job| {
        let t = &job.transfers[job.current];
        t.is_relocation() && t.phase == Phase::Switch
    });
    // The key goes to the serving shard other than its hash shard.
    let target = (0..3).find(|&s| s != hash && s != away).unwrap();
    let parsed = Key::text(key).unwrap();
    block_on(
        db.directory()
            .assign("users", &parsed, &format!("s{target}")),
    )
    .unwrap();
    block_on(open(dir.path(), 3).resume_growth(&GrowthOptions::default())).unwrap();
    let report = block_on(db.verify_table("users", "id")).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(holder(dir.path(), "users", key), [target]);
    block_on(async {
        assert!(User::delete(&db, key).await.unwrap());
        User::insert(&db, &User::new(key)).await.unwrap();
    });
    assert_eq!(holder(dir.path(), "users", key), [target]);
}

/// Adopt lays a tombstone on the hash shard before claiming; when the claim loses to an entry
/// naming the hash shard itself (a deleted directory-placed key keeps its entry), it takes the
/// tombstone back.
#[test]
fn adopt_leaves_no_tombstone_on_the_shard_an_existing_entry_names() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    // A round-robin key that landed on its hash shard.
    let (note, hash) = block_on(async {
        Note::create_table(&db).await.unwrap();
        for i in 0..30 {
            let note = Note::numbered(i);
            Note::insert(&db, &note).await.unwrap();
            let at = Note::locate(&db, note.id.as_str()).await.unwrap().unwrap();
            let hash = db.hash_shard(&Key::text(note.id.as_str()).unwrap());
            if at == format!("s{hash}") {
                return (note, hash);
            }
        }
        panic!("no note on its hash shard");
    });
    block_on(Note::delete(&db, note.id.as_str())).unwrap();
    // The same key found in a database being adopted, on another shard.
    let other = format!("s{}", (hash + 1) % 3);
    let insert = "INSERT INTO notes (id, body, score) VALUES (?, 'imported', 0.0)";
    block_on(db.run_shard(&other, insert, &[Value::Text(note.id.clone())])).unwrap();
    let adopted = block_on(db.adopt_table("notes", "id")).unwrap();
    assert_eq!(adopted.conflicts.len(), 1, "{adopted:?}");
    // Resolved by hand, as the docs say: the imported copy goes.
    block_on(db.run_shard(
        &other,
        "DELETE FROM notes WHERE id = ?",
        &[Value::Text(note.id.clone())],
    ))
    .unwrap();
    let report = block_on(db.verify_table("notes", "id")).unwrap();
    assert!(report.is_clean(), "{report}");
}

/// Two reassignments started at once from two handles (two admin requests): the journal is
/// taken with compare-and-set, so one runs and the other is refused, and nothing is left
/// frozen or blocked.
#[test]
fn two_reassignments_at_once_leave_no_key_blocked_and_no_shard_frozen() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        User::create_table(&db).await.unwrap();
        for i in 0..40 {
            User::insert(&db, &User::new(format!("u{i}")))
                .await
                .unwrap();
        }
    });
    for round in 0..30 {
        let threads: Vec<_> = (0..2)
            .map(|w| {
                let path = dir.path().to_owned();
                std::thread::spawn(move || {
                    let handle = open(&path, 3);
                    let key = format!("u{}", (round * 2 + w) % 40);
                    let to = format!("s{}", (round + w) % 3);
                    let _ = block_on(handle.reassign("users", key.as_str(), &to));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Whatever is left journaled is finished, as an operator would.
        let _ = block_on(db.resume_growth(&collegedb::GrowthOptions::default()));
    }
    let _ = block_on(db.resume_growth(&collegedb::GrowthOptions::default()));
    for s in 0..3 {
        let live = block_on(db.all_shard(
            &format!("s{s}"),
            "SELECT 1 FROM _collegedb_slots WHERE slot = -1",
            &[] as &[Value],
        ))
        .unwrap();
        assert_eq!(live.len(), 1, "s{s} lost LIVE");
    }
    let report = block_on(db.verify_table("users", "id")).unwrap();
    assert!(report.is_clean(), "{report}");
}

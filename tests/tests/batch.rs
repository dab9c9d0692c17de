//! Atomic batches on real SQLite files: every statement of a batch commits on the key's shard or
//! none does; statements that route apart from the batch's key are refused with `CROSS_SHARD`
//! before anything is sent; a directory-placed key is placed by its batch; and a batch follows its
//! key when the key is reassigned to another shard.

use collegedb::{CollegeDb, Embedded, Error, Value};
use collegedb_tests::{open, rows_per_shard, Account, Note, Tag, User};
use pollster::block_on;

const SHARDS: usize = 3;

fn setup(dir: &std::path::Path) -> CollegeDb<Embedded> {
    let db = open(dir, SHARDS);
    block_on(async {
        User::create_table(&db).await?;
        Tag::create_table(&db).await?;
        Note::create_table(&db).await?;
        Account::create_table(&db).await
    })
    .unwrap();
    db
}

#[test]
fn a_batch_commits_every_statement_on_the_keys_shard_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    // `users` and `tags` are both placed by hash: the rows of one key value share a shard.
    let mut batch = db.batch_for::<User>("alice");
    batch
        .insert(&User::new("alice"))
        .unwrap()
        .insert(&Tag {
            name: "alice".into(),
        })
        .unwrap()
        .execute(
            "UPDATE users SET name = ? WHERE id = ?",
            [Value::from("Alice"), Value::from("alice")],
        )
        .unwrap();
    assert_eq!(batch.len(), 3);
    assert_eq!(block_on(batch.commit()).unwrap(), vec![1, 1, 1]);
    let alice = block_on(User::find(&db, "alice")).unwrap().unwrap();
    assert_eq!(alice.name, "Alice");
    let shard = block_on(User::locate(&db, "alice")).unwrap().unwrap();
    assert_eq!(
        block_on(Tag::locate(&db, "alice")).unwrap().as_deref(),
        Some(shard.as_str())
    );

    // The second insert of `alice` fails: the update before it is rolled back with it.
    let mut batch = db.batch_for::<User>("alice");
    batch
        .execute(
            "UPDATE users SET name = 'changed' WHERE id = ?",
            [Value::from("alice")],
        )
        .unwrap()
        .delete::<Tag>("alice")
        .unwrap()
        .insert(&User::new("alice"))
        .unwrap();
    let error = block_on(batch.commit()).unwrap_err();
    assert!(
        matches!(&error, Error::DuplicateKey { table, .. } if table == "users"),
        "{error:?}"
    );
    assert_eq!(
        block_on(User::find(&db, "alice")).unwrap().unwrap().name,
        "Alice"
    );
    assert!(block_on(Tag::find(&db, "alice")).unwrap().is_some());

    // Updates, upserts and deletes; an update of a missing row changes nothing.
    let mut renamed = alice.clone();
    renamed.name = "Alice L.".into();
    let mut batch = db.batch_for::<User>("alice");
    batch
        .update(&renamed)
        .unwrap()
        .upsert(&User::new("alice"))
        .unwrap()
        .delete::<Tag>("alice")
        .unwrap();
    assert_eq!(block_on(batch.commit()).unwrap(), vec![1, 1, 1]);
    assert_eq!(
        block_on(User::find(&db, "alice")).unwrap(),
        Some(User::new("alice"))
    );
    assert_eq!(block_on(Tag::find(&db, "alice")).unwrap(), None);
    let mut batch = db.batch_for::<User>("ghost");
    batch.update(&User::new("ghost")).unwrap();
    assert_eq!(block_on(batch.commit()).unwrap(), vec![0]);
    // An empty batch sends nothing.
    assert_eq!(
        block_on(db.batch_for::<User>("x").commit()).unwrap(),
        Vec::<u64>::new()
    );
    let counts = rows_per_shard(dir.path(), SHARDS, "users");
    assert_eq!(counts.iter().sum::<i64>(), 1);
}

#[test]
fn statements_that_route_apart_are_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut batch = db.batch_for::<User>("alice");
    batch.insert(&User::new("alice")).unwrap();
    // Another key of the same model.
    let error = batch.insert(&User::new("bob")).err().unwrap();
    assert_eq!(error.code(), "CROSS_SHARD");
    assert_eq!(error.http_status(), 400);
    assert!(error.to_string().contains("`users` key \"bob\""), "{error}");
    // The same key value in a model placed by the directory: it may live anywhere.
    let note = Note {
        id: "alice".into(),
        body: "b".into(),
        score: 1.0,
    };
    assert_eq!(batch.insert(&note).err().unwrap().code(), "CROSS_SHARD");
    assert_eq!(
        batch.delete::<Note>("alice").err().unwrap().code(),
        "CROSS_SHARD"
    );
    // A model with unique columns keeps lookups outside the shard.
    let error = db
        .batch_for::<Account>(1)
        .insert(&Account::new(1, "a@example.com"))
        .err()
        .unwrap();
    assert_eq!(error.code(), "QUERY_INVALID", "{error}");
    // Bad input is refused when it is added.
    let error = batch
        .execute("UPDATE users SET name = ?", vec![Value::Integer(1 << 60)])
        .err()
        .unwrap();
    assert_eq!(error.code(), "INTEGER_OUT_OF_RANGE", "{error}");
    let too_many: Vec<Value> = (0..101).map(Value::Integer).collect();
    let error = batch.execute("SELECT 1", too_many).err().unwrap();
    assert_eq!(error.code(), "TOO_MANY_PARAMETERS", "{error}");
    let error = block_on(db.batch_for::<User>("").commit()).unwrap_err();
    assert_eq!(error.code(), "QUERY_INVALID", "{error}");
    // The refusals left the batch as it was: it still holds its one insert.
    assert_eq!(batch.len(), 1);
    assert_eq!(block_on(batch.commit()).unwrap(), vec![1]);
    assert_eq!(block_on(User::count(&db)).unwrap(), 1);
    assert_eq!(block_on(Note::count(&db)).unwrap(), 0);
}

#[test]
fn a_directory_placed_key_is_placed_by_its_batch_and_followed_when_reassigned() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let note = |body: &str| Note {
        id: "n1".into(),
        body: body.into(),
        score: 2.5,
    };
    // A new round-robin key: the batch places it, and the insert lands where it was placed.
    let mut batch = db.batch_for::<Note>("n1");
    batch.insert(&note("first")).unwrap();
    assert_eq!(block_on(batch.commit()).unwrap(), vec![1]);
    let home = block_on(Note::locate(&db, "n1")).unwrap().unwrap();
    assert_eq!(
        block_on(db.table("notes").shard_for("n1")).unwrap(),
        home.as_str()
    );
    // Reassigned to another shard, by another handle: this handle's batch follows it there.
    let other = open(dir.path(), SHARDS);
    let target = ["s0", "s1", "s2"].into_iter().find(|s| *s != home).unwrap();
    block_on(other.reassign("notes", "n1", target)).unwrap();
    let mut batch = db.batch_for::<Note>("n1");
    batch
        .update(&note("second"))
        .unwrap()
        .execute(
            "UPDATE notes SET score = score * 2 WHERE id = ?",
            [Value::from("n1")],
        )
        .unwrap();
    assert_eq!(block_on(batch.commit()).unwrap(), vec![1, 1]);
    let found = block_on(Note::find(&db, "n1")).unwrap().unwrap();
    assert_eq!((found.body.as_str(), found.score), ("second", 5.0));
    assert_eq!(
        block_on(Note::locate(&db, "n1")).unwrap().as_deref(),
        Some(target)
    );
    let per_shard = rows_per_shard(dir.path(), SHARDS, "notes");
    assert_eq!(per_shard.iter().sum::<i64>(), 1, "{per_shard:?}");
}

#[test]
fn a_key_reassigned_in_one_table_no_longer_batches_with_the_other_tables() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    for id in ["ann", "ben"] {
        block_on(User::insert(&db, &User::new(id))).unwrap();
        block_on(Tag::insert(&db, &Tag { name: id.into() })).unwrap();
    }
    let elsewhere = |home: &str| ["s0", "s1", "s2"].into_iter().find(|s| *s != home).unwrap();
    // `tags` of ann moves on its own: a batch anchored at the user is refused, nothing written.
    let home = block_on(Tag::locate(&db, "ann")).unwrap().unwrap();
    block_on(db.reassign("tags", "ann", elsewhere(&home))).unwrap();
    let mut batch = db.batch_for::<User>("ann");
    batch
        .execute(
            "UPDATE users SET name = 'changed' WHERE id = ?",
            [Value::from("ann")],
        )
        .unwrap()
        .delete::<Tag>("ann")
        .unwrap();
    let error = block_on(batch.commit()).unwrap_err();
    assert_eq!(error.code(), "CROSS_SHARD", "{error}");
    assert_eq!(
        block_on(User::find(&db, "ann")).unwrap(),
        Some(User::new("ann"))
    );
    assert!(block_on(Tag::find(&db, "ann")).unwrap().is_some());
    // `users` of ben moves on its own: the anchor follows its key, but the tag stays behind, so
    // the batch is refused rather than writing a second tag where the user went.
    let home = block_on(User::locate(&db, "ben")).unwrap().unwrap();
    block_on(db.reassign("users", "ben", elsewhere(&home))).unwrap();
    let mut batch = db.batch_for::<User>("ben");
    batch
        .upsert(&Tag { name: "ben".into() })
        .unwrap()
        .update(&User::new("ben"))
        .unwrap();
    let error = block_on(batch.commit()).unwrap_err();
    assert_eq!(error.code(), "CROSS_SHARD", "{error}");
    assert_eq!(
        rows_per_shard(dir.path(), SHARDS, "tags")
            .iter()
            .sum::<i64>(),
        2
    );
    // Without the other table, the batch follows the reassigned user.
    let mut batch = db.batch_for::<User>("ben");
    let mut renamed = User::new("ben");
    renamed.name = "Ben".into();
    batch.update(&renamed).unwrap();
    assert_eq!(block_on(batch.commit()).unwrap(), vec![1]);
    assert_eq!(block_on(User::find(&db, "ben")).unwrap(), Some(renamed));
    // A key-only model's update counts the row, as `update` requires it.
    let mut batch = db.batch_for::<Tag>("ben");
    batch.update(&Tag { name: "ben".into() }).unwrap();
    batch.update(&Tag { name: "ben".into() }).unwrap();
    assert_eq!(block_on(batch.commit()).unwrap(), vec![1, 1]);
}

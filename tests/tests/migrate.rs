//! Schema migrations across shards: applied in order to every shard, each in one transaction with
//! its record; a second run is a no-op; a shard that refuses a statement stops the run with where
//! every shard stands; a changed migration is refused; a shard added later inherits the record.
//! The shard files are read directly with rusqlite.

use std::sync::{Arc, Mutex};

use collegedb::migrate::{Applied, Migrations};
use collegedb_tests::{open, User};
use pollster::block_on;

fn migrations() -> Migrations {
    Migrations::new([
        (
            "0001_settings.sql",
            "CREATE TABLE settings (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
             -- seeded once: applied twice, this would fail on the primary key
             INSERT INTO settings (name, value) VALUES ('theme', 'dark');",
        ),
        (
            "0002_tags.sql",
            "CREATE TABLE tags (name TEXT PRIMARY KEY NOT NULL);
             CREATE TABLE labels (name TEXT PRIMARY KEY NOT NULL, color TEXT);",
        ),
        (
            "0003_settings_note.sql",
            "ALTER TABLE settings ADD COLUMN note TEXT;
             CREATE TRIGGER settings_note AFTER INSERT ON settings BEGIN
                 UPDATE settings SET note = 'new; unseen' WHERE name = NEW.name;
             END;",
        ),
    ])
    .unwrap()
}

/// `(versions recorded, settings rows, tables present)` of a shard file.
fn on_file(dir: &std::path::Path, shard: &str) -> (Vec<i64>, i64, Vec<String>) {
    let conn = rusqlite::Connection::open(dir.join(format!("{shard}.sqlite"))).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger') AND name IN ('settings', 'tags', 'labels', 'settings_note') ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM _collegedb_migrations ORDER BY version")
        .map(|mut stmt| {
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        })
        .unwrap_or_default();
    let settings = if tables.iter().any(|t| t == "settings") {
        conn.query_row("SELECT COUNT(*) FROM settings", [], |r| r.get(0))
            .unwrap()
    } else {
        -1
    };
    (versions, settings, tables)
}

#[test]
fn migrations_apply_in_order_on_every_shard_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    let seen: Arc<Mutex<Vec<Applied>>> = Arc::default();
    let hook = {
        let seen = seen.clone();
        Arc::new(move |applied: &Applied| seen.lock().unwrap().push(applied.clone()))
    };
    let status = block_on(db.migrate_with(&migrations(), Some(hook))).unwrap();
    assert_eq!(status.to_string(), "s0 at 3, s1 at 3, s2 at 3");
    for shard in ["s0", "s1", "s2"] {
        let (versions, settings, tables) = on_file(dir.path(), shard);
        assert_eq!(versions, [1, 2, 3], "{shard}");
        assert_eq!(settings, 1, "{shard}");
        assert_eq!(tables, ["labels", "settings", "settings_note", "tags"]);
    }
    // Version by version over the shards, with progress.
    let seen = seen.lock().unwrap();
    let order: Vec<(u32, &str)> = seen.iter().map(|a| (a.version, a.shard.as_str())).collect();
    assert_eq!(
        order,
        [
            (1, "s0"),
            (1, "s1"),
            (1, "s2"),
            (2, "s0"),
            (2, "s1"),
            (2, "s2"),
            (3, "s0"),
            (3, "s1"),
            (3, "s2")
        ]
    );
    assert!(seen
        .iter()
        .enumerate()
        .all(|(i, a)| a.done == i + 1 && a.total == 9));
    // The trigger's body kept its inner semicolons.
    block_on(db.run_shard(
        "s1",
        "INSERT INTO settings (name, value) VALUES ('lang', 'en')",
        &[],
    ))
    .unwrap();
    let note =
        block_on(db.all_shard("s1", "SELECT note FROM settings WHERE name = 'lang'", &[])).unwrap();
    assert_eq!(note[0].get::<String>("note").unwrap(), "new; unseen");

    // Again: nothing to do.
    assert_eq!(block_on(db.migrate(&migrations())).unwrap(), status);
    assert_eq!(on_file(dir.path(), "s2").1, 1);
}

#[test]
fn a_shard_that_refuses_a_statement_stops_the_run_with_every_shards_version() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    // s1 already has a `tags` table of its own: migration 2 fails there.
    block_on(db.run_shard("s1", "CREATE TABLE tags (other INTEGER)", &[])).unwrap();
    let err = block_on(db.migrate(&migrations())).unwrap_err();
    assert_eq!(err.code(), "MIGRATION_FAILED", "{err}");
    let text = err.to_string();
    assert!(
        text.contains("migration 2 (`tags`) failed on shard `s1`")
            && text.contains("table tags already exists")
            && text.contains("s0 at 2, s1 at 1, s2 at 1"),
        "{text}"
    );
    // Nothing of migration 2 on s1: its first statement failed, its second never ran, no
    // record.
    let (versions, settings, tables) = on_file(dir.path(), "s1");
    assert_eq!((versions, settings), (vec![1], 1));
    assert!(!tables.contains(&"labels".to_owned()), "{tables:?}");
    // Fixed by hand, then run again: it goes on where it stopped.
    block_on(db.run_shard("s1", "DROP TABLE tags", &[])).unwrap();
    let status = block_on(db.migrate(&migrations())).unwrap();
    assert_eq!(status.to_string(), "s0 at 3, s1 at 3, s2 at 3");
    for shard in ["s0", "s1", "s2"] {
        assert_eq!(on_file(dir.path(), shard).1, 1, "{shard}: seeded once");
    }
}

#[test]
fn a_migration_changed_after_it_was_applied_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 2);
    let first = Migrations::new([(
        "0001_settings.sql",
        "CREATE TABLE settings (name TEXT PRIMARY KEY);",
    )])
    .unwrap();
    block_on(db.migrate(&first)).unwrap();
    let edited = Migrations::new([
        (
            "0001_settings.sql",
            "CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT);",
        ),
        ("0002_tags.sql", "CREATE TABLE tags (name TEXT);"),
    ])
    .unwrap();
    let err = block_on(db.migrate(&edited)).unwrap_err();
    assert_eq!(err.code(), "CONFIG_INVALID");
    assert!(
        err.to_string()
            .contains("migration 1 (`settings`) was changed"),
        "{err}"
    );
    assert_eq!(on_file(dir.path(), "s0").0, [1], "migration 2 did not run");
}

#[test]
fn a_shard_added_later_inherits_the_schema_and_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        User::create_table(&db).await.unwrap();
        for i in 0..200 {
            User::insert(&db, &User::new(format!("u{i}")))
                .await
                .unwrap();
        }
    });
    block_on(db.migrate(&migrations())).unwrap();
    drop(db);
    let db = open(dir.path(), 4);
    block_on(db.add_shard("s3")).unwrap();
    let (versions, settings, tables) = on_file(dir.path(), "s3");
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(settings, 0, "the schema, not the rows of unrouted tables");
    assert_eq!(tables.len(), 4, "{tables:?}");
    let status = block_on(db.migrate(&migrations())).unwrap();
    assert_eq!(status.to_string(), "s0 at 3, s1 at 3, s2 at 3, s3 at 3");
}

mod v1 {
    /// The model before: `people` with a key and a name.
    #[derive(collegedb::Sharded, Debug, Clone, PartialEq)]
    #[sharded(table = "people")]
    pub struct Person {
        #[sharded(key)]
        pub id: String,
        pub name: String,
    }
}

mod v2 {
    /// The model after: an `Option` field (may be added in place) and a required one (needs a
    /// migration with a default).
    #[derive(collegedb::Sharded, Debug, Clone, PartialEq)]
    #[sharded(table = "people")]
    pub struct Person {
        #[sharded(key)]
        pub id: String,
        pub name: String,
        pub bio: Option<String>,
        pub age: i64,
    }
}

mod v3 {
    /// v2 without the required field.
    #[derive(collegedb::Sharded, Debug, Clone, PartialEq)]
    #[sharded(table = "people")]
    pub struct Person {
        #[sharded(key)]
        pub id: String,
        pub name: String,
        pub bio: Option<String>,
    }
}

#[test]
fn drift_is_reported_per_shard_and_nullable_columns_are_added_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        v1::Person::create_table(&db).await.unwrap();
        v1::Person::insert(
            &db,
            &v1::Person {
                id: "ada".into(),
                name: "Ada".into(),
            },
        )
        .await
        .unwrap();
        assert!(db.schema_drift::<v1::Person>().await.unwrap().is_clean());

        let drift = db.schema_drift::<v2::Person>().await.unwrap();
        assert!(!drift.is_clean());
        for shard in &drift.shards {
            assert_eq!(shard.missing, ["bio", "age"], "{drift}");
        }
        // A required column cannot be added in place: nothing changes.
        let err = db.add_missing_columns::<v2::Person>().await.unwrap_err();
        assert_eq!(err.code(), "CONFIG_INVALID");
        assert!(err.to_string().contains("age on s0"), "{err}");
        assert_eq!(db.schema_drift::<v2::Person>().await.unwrap(), drift);

        let added = db.add_missing_columns::<v3::Person>().await.unwrap();
        assert_eq!(added.len(), 3, "{added:?}");
        assert!(db.schema_drift::<v3::Person>().await.unwrap().is_clean());
        let ada = v3::Person::find(&db, "ada").await.unwrap().unwrap();
        assert_eq!(ada.bio, None);
        // The old model sees an extra, nullable column: reported, harmless.
        let old = db.schema_drift::<v1::Person>().await.unwrap();
        assert!(old.is_clean(), "{old}");
        assert_eq!(old.shards[1].extra[0].name, "bio");
        assert!(old.to_string().contains("s1: extra bio"), "{old}");
    });
    // A shard changed by hand: a type and a nullability that disagree.
    block_on(db.run_shard("s2", "DROP TABLE people", &[])).unwrap();
    block_on(db.run_shard(
        "s2",
        "CREATE TABLE people (id TEXT PRIMARY KEY NOT NULL, name BLOB, bio TEXT NOT NULL)",
        &[],
    ))
    .unwrap();
    let drift = block_on(db.schema_drift::<v3::Person>()).unwrap();
    let s2 = &drift.shards[2];
    assert!(!s2.is_clean() && drift.shards[0].is_clean());
    assert_eq!(
        s2.mismatched,
        [
            "name is BLOB (BLOB affinity), the model's field is TEXT",
            "name allows NULL, the model's field does not: reading a NULL fails",
            "bio is NOT NULL, the model's field is an Option: storing None fails"
        ]
    );
}

//! `verify_table`, the placement fsck: clean after writes under every strategy, and each kind of
//! damage, made directly in the shard files, reported.

use collegedb::Strategy;
use collegedb_tests::*;
use pollster::block_on;

fn sql(dir: &std::path::Path, shard: usize, statement: &str) {
    rusqlite::Connection::open(dir.join(format!("s{shard}.sqlite")))
        .unwrap()
        .execute_batch(statement)
        .unwrap();
}

#[test]
fn a_deployment_written_through_the_router_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        User::create_table(&db).await.unwrap();
        Note::create_table(&db).await.unwrap();
        for i in 0..300 {
            User::insert(&db, &User::new(format!("u{i}")))
                .await
                .unwrap();
        }
        Note::insert_many(&db, &(0..300).map(Note::numbered).collect::<Vec<_>>())
            .await
            .unwrap();
        for i in 0..10 {
            assert!(Note::delete(&db, Note::numbered(i).id).await.unwrap());
        }
        let users = db.verify_table("users", "id").await.unwrap();
        assert!(users.is_clean(), "{users}");
        assert_eq!((users.rows, users.entries), (300, 0));
        let notes = db.verify_table("notes", "id").await.unwrap();
        assert!(notes.is_clean(), "{notes}");
        assert_eq!((notes.rows, notes.entries), (290, 300));
        assert_eq!(
            notes.entries_without_rows, 10,
            "deleted keys keep their entries"
        );
    });
}

#[test]
fn copies_moves_and_lost_markers_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with(dir.path(), 3, |c| {
        c.with_strategies(Strategy::Hash, Strategy::Hash)
    });
    block_on(async {
        User::create_table(&db).await.unwrap();
        Note::create_table(&db).await.unwrap();
        for i in 0..60 {
            User::insert(&db, &User::new(format!("u{i}")))
                .await
                .unwrap();
            Note::insert(&db, &Note::numbered(i)).await.unwrap();
        }
    });
    let user_shard = |id: &str| {
        let name = block_on(User::locate(&db, id)).unwrap().unwrap();
        name[1..].parse::<usize>().unwrap()
    };
    // A copy of u1 on another shard: duplicated, and misplaced there.
    let on = user_shard("u1");
    let other = (on + 1) % 3;
    sql(
        dir.path(),
        other,
        "INSERT INTO users (id, name, email) VALUES ('u1', 'copy', NULL)",
    );
    // u2 moved by hand to another shard: misplaced, and unreachable.
    let on = user_shard("u2");
    sql(dir.path(), on, "DELETE FROM users WHERE id = 'u2'");
    sql(
        dir.path(),
        (on + 1) % 3,
        "INSERT INTO users (id, name, email) VALUES ('u2', 'moved', NULL)",
    );
    // Every marker of `notes` removed: keys placed off their hash shard become unmarked.
    for shard in 0..3 {
        sql(dir.path(), shard, "DELETE FROM _collegedb_placed");
    }
    let fresh = open(dir.path(), 3);
    block_on(async {
        let users = fresh.verify_table("users", "id").await.unwrap();
        assert!(!users.is_clean());
        assert_eq!(users.duplicated.len(), 1, "{users}");
        assert_eq!(users.duplicated[0].0.to_string(), "\"u1\"");
        let misplaced: Vec<String> = users.misplaced.iter().map(|m| m.0.to_string()).collect();
        assert_eq!(misplaced, ["\"u1\"", "\"u2\""], "{users}");
        assert_eq!(users.rows, 61);

        let notes = fresh.verify_table("notes", "id").await.unwrap();
        assert!(
            notes.misplaced.is_empty() && notes.duplicated.is_empty(),
            "{notes}"
        );
        assert!(!notes.unmarked.is_empty(), "{notes}");
        assert!(notes.to_string().contains("NOT CLEAN"));
    });
}

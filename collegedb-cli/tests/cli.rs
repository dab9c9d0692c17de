//! The `collegedb` tool against a real embedded deployment: `status` and `verify`, clean and
//! damaged, and its exit codes.

use std::process::Command;

use collegedb::{CollegeDb, Config, Sharded};

#[derive(Sharded, Debug, Clone)]
#[sharded(table = "notes", strategy = "round-robin")]
struct Note {
    #[sharded(key)]
    id: i64,
    body: String,
}

fn tool(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_collegedb"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap(), text)
}

#[test]
fn status_and_verify_on_a_clean_and_a_damaged_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    let db =
        CollegeDb::open_embedded(Config::with_shard_names(["east", "west"]), dir.path()).unwrap();
    pollster::block_on(async {
        Note::create_table(&db).await.unwrap();
        let notes: Vec<Note> = (0..40)
            .map(|id| Note {
                id,
                body: format!("n{id}"),
            })
            .collect();
        Note::insert_many(&db, &notes).await.unwrap();
    });
    drop(db);

    let (code, out) = tool(&["status", folder]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("shard list (version 1): east, west"), "{out}");
    assert!(out.contains("notes 20"), "{out}");
    assert!(out.contains("directory entries: 40"), "{out}");

    let (code, out) = tool(&["verify", folder]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("notes: 40 rows") && out.contains("clean"),
        "{out}"
    );

    // A row copied to the other shard by hand.
    copy_note_zero_everywhere(dir.path());
    let (code, out) = tool(&["verify", folder, "--table", "notes"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("duplicated") && out.contains("NOT CLEAN"),
        "{out}"
    );

    let (code, out) = tool(&["status", "/nonexistent/collegedb"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("CONFIG_INVALID"), "{out}");
}

/// Copies note 0 onto both shards through the library's raw SQL, as a botched manual fix would.
fn copy_note_zero_everywhere(dir: &std::path::Path) {
    let db = CollegeDb::open_embedded(Config::with_shard_names(["east", "west"]), dir).unwrap();
    pollster::block_on(async {
        for shard in ["east", "west"] {
            db.run_shard(
                shard,
                "INSERT OR IGNORE INTO notes (id, body) VALUES (0, 'copy')",
                &[],
            )
            .await
            .unwrap();
        }
    });
}

#[test]
fn adopt_takes_over_files_and_reports_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    // Two databases filled by hand, before collegedb: key 7 in both.
    for (shard, ids) in [("east", 0..50), ("west", 40..100)] {
        let conn = rusqlite::Connection::open(dir.path().join(format!("{shard}.sqlite"))).unwrap();
        conn.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            .unwrap();
        for id in ids.chain([7]) {
            conn.execute(
                "INSERT OR IGNORE INTO notes (id, body) VALUES (?1, 'x')",
                [id],
            )
            .unwrap();
        }
    }
    let (code, out) = tool(&["adopt", folder, "--shards", "east,west"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("notes: 111 rows"), "{out}");
    assert!(out.contains("conflict:"), "{out}");
    let (code, out) = tool(&["verify", folder]);
    assert_eq!(code, 1, "the conflicting keys are still two copies: {out}");
    assert!(out.contains("duplicated"), "{out}");
}

//! The `collegedb` tool against a real embedded deployment: `status` and `verify`, clean and
//! damaged; `adopt`; `add-shard`, `drain-shard` and `resume` on a deployment with rows, including
//! an operation interrupted part-way; and its exit codes.

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
    assert!(
        out.contains("shard map version 1: 2 shards (east, west)"),
        "{out}"
    );
    assert!(out.contains("no operation in progress"), "{out}");
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

#[derive(Sharded, Debug, Clone)]
#[sharded(table = "users")]
struct User {
    #[sharded(key)]
    id: i64,
    name: String,
}

const USERS: i64 = 3000;

/// A deployment of three shards with hash-placed users and `notes` round-robin (directory-placed)
/// notes.
fn deployment(dir: &std::path::Path, notes: i64) {
    let db = CollegeDb::open_embedded(Config::with_shard_names(["s0", "s1", "s2"]), dir).unwrap();
    pollster::block_on(async {
        User::create_table(&db).await.unwrap();
        let users: Vec<User> = (0..USERS)
            .map(|id| User {
                id,
                name: format!("user {id}"),
            })
            .collect();
        User::insert_many(&db, &users).await.unwrap();
        if notes > 0 {
            Note::create_table(&db).await.unwrap();
            let notes: Vec<Note> = (0..notes)
                .map(|id| Note {
                    id,
                    body: format!("n{id}"),
                })
                .collect();
            Note::insert_many(&db, &notes).await.unwrap();
        }
    });
}

/// Every user is still there once, read through a handle that configures every shard file.
fn assert_all_users(dir: &std::path::Path, shards: &[&str]) {
    let db = CollegeDb::open_embedded(Config::with_shard_names(shards.to_vec()), dir).unwrap();
    pollster::block_on(async {
        assert_eq!(User::count(&db).await.unwrap(), USERS as u64);
        for id in [0, 1, 777, 1500, USERS - 1] {
            let user = User::find(&db, id).await.unwrap().expect("user found");
            assert_eq!(user.name, format!("user {id}"));
        }
    });
}

/// The number in "moved N rows".
fn rows_moved(out: &str) -> u64 {
    let rest = out
        .split("moved ")
        .nth(1)
        .unwrap_or_else(|| panic!("no `moved N rows` in: {out}"));
    rest.split(' ').next().unwrap().parse().unwrap()
}

/// The line of `status` that starts with a shard's name.
fn shard_line<'a>(out: &'a str, shard: &str) -> &'a str {
    out.lines()
        .find(|line| line.trim_start().starts_with(&format!("{shard} ")))
        .unwrap_or_else(|| panic!("no line for {shard} in: {out}"))
}

#[test]
fn add_shard_then_drain_a_middle_shard() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    deployment(dir.path(), 0);

    let (code, out) = tool(&["add-shard", folder, "s3"]);
    assert_eq!(code, 0, "{out}");
    // A quarter of the users moves, about a third of each shard's quarter from each.
    let moved = rows_moved(&out);
    assert!(
        (600..=900).contains(&moved),
        "about {} users: {out}",
        USERS / 4
    );
    assert!(out.contains("in 3 transfers"), "{out}");
    assert!(out.contains("shard map version 1 -> 4"), "{out}");
    // Not a terminal: plain progress lines, one per phase change.
    assert!(
        out.contains("transfer 1/3 (") && out.contains(": copy;"),
        "{out}"
    );
    assert!(
        out.contains("transfer 3/3 (") && out.contains(": done;"),
        "{out}"
    );

    let (code, out) = tool(&["verify", folder]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("users: 3000 rows") && !out.contains("NOT CLEAN"),
        "{out}"
    );

    let (code, out) = tool(&["status", folder]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("shard map version 4: 4 shards (s0, s1, s2, s3)"),
        "{out}"
    );
    assert!(shard_line(&out, "s3").contains(" 1024 slots "), "{out}");
    assert!(out.contains("no operation in progress"), "{out}");
    assert!(
        out.contains(&format!(
            "last operation: add-shard s3, {moved} rows moved in 3 transfers"
        )),
        "{out}"
    );
    assert_all_users(dir.path(), &["s0", "s1", "s2", "s3"]);

    // Drain a middle shard: its slots go to the three others (and a last transfer would move
    // its directory-placed rows: there are none).
    let (code, out) = tool(&["drain-shard", folder, "s1"]);
    assert_eq!(code, 0, "{out}");
    assert!(rows_moved(&out) >= 600, "s1's quarter of the users: {out}");
    assert!(
        out.contains("s1 -> s0 (") && out.contains("s1 -> s3 (") && out.contains("in 4 transfers"),
        "{out}"
    );
    assert!(out.contains("shard map version 4 -> 7"), "{out}");
    assert!(
        out.contains("shard s1 now owns no slots and holds no rows")
            && out.contains("can be removed from the configuration"),
        "{out}"
    );

    let (code, out) = tool(&["status", folder]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("shard map version 7: 3 shards (s0, s2, s3)"),
        "{out}"
    );
    let s1 = shard_line(&out, "s1");
    assert!(
        s1.contains("standby, 0 slots") && s1.contains(" 0 rows "),
        "{out}"
    );
    assert!(out.contains("last operation: drain-shard s1"), "{out}");

    let (code, out) = tool(&["verify", folder]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("users: 3000 rows") && !out.contains("NOT CLEAN"),
        "{out}"
    );
    assert_all_users(dir.path(), &["s0", "s1", "s2", "s3"]);

    // Adding s3 again changes nothing.
    let (code, out) = tool(&["add-shard", folder, "s3"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("nothing to do: shard s3 already owns") && !out.contains("moved "),
        "{out}"
    );
    let (_, out) = tool(&["status", folder]);
    assert!(out.contains("shard map version 7:"), "{out}");
    assert!(out.contains("last operation: drain-shard s1"), "{out}");

    // Errors: clear, and exit 2.
    let (code, out) = tool(&["drain-shard", folder, "nope"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no shard `nope`"), "{out}");
    let (code, out) = tool(&["add-shard", folder, "bad name"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("invalid"), "{out}");
    assert!(!dir.path().join("bad name.sqlite").exists());
    let missing = dir.path().join("missing");
    let (code, out) = tool(&["add-shard", missing.to_str().unwrap(), "s9"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("CONFIG_INVALID") && out.contains("not a folder"),
        "{out}"
    );
    assert!(!missing.exists(), "nothing created");
}

#[test]
fn an_interrupted_operation_shows_in_status_blocks_others_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    deployment(dir.path(), 0);

    // Interrupt add_shard part-way through its first copy, as a killed process would.
    let steps = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = steps.clone();
    let options =
        collegedb::GrowthOptions::default()
            .page_rows(50)
            .on_step(move |job: &collegedb::Job| {
                let step = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if step >= 2 && job.rows_copied() > 0 {
                    panic!("interrupted on purpose");
                }
            });
    let db = CollegeDb::open_embedded(
        Config::with_shard_names(["s0", "s1", "s2", "s3"]),
        dir.path(),
    )
    .unwrap();
    let interrupted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pollster::block_on(db.add_shard_with("s3", &options))
    }));
    assert!(interrupted.is_err(), "the hook stopped it");
    assert!(steps.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    drop(db);

    let (code, out) = tool(&["status", folder]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("operation in progress: add-shard s3"), "{out}");
    assert!(
        out.contains("transfer 1 of 3") && out.contains("phase copy"),
        "{out}"
    );
    assert!(
        out.contains("rows copied ") && out.contains("ETA "),
        "{out}"
    );
    assert!(shard_line(&out, "s3").contains("joining, 0 slots"), "{out}");
    assert!(out.contains("shard map version 1: 3 shards"), "{out}");

    // Nothing else starts meanwhile, and no file is created for it.
    let (code, out) = tool(&["drain-shard", folder, "s0"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("CONFIG_INVALID") && out.contains("collegedb resume"),
        "{out}"
    );
    let (code, out) = tool(&["add-shard", folder, "s4"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("another growth operation is in progress (add-shard s3"),
        "{out}"
    );
    assert!(!dir.path().join("s4.sqlite").exists());

    let (code, out) = tool(&["resume", folder]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("resuming add-shard s3: transfer 1 of 3"),
        "{out}"
    );
    assert!(out.contains("added shard s3: moved "), "{out}");
    assert!(out.contains("shard map version 1 -> 4"), "{out}");

    let (code, out) = tool(&["resume", folder]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to resume"), "{out}");

    let (code, out) = tool(&["verify", folder]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("NOT CLEAN"), "{out}");
    let (_, out) = tool(&["status", folder]);
    assert!(out.contains("no operation in progress"), "{out}");
    assert!(out.contains("last operation: add-shard s3"), "{out}");
    assert_all_users(dir.path(), &["s0", "s1", "s2", "s3"]);
}

#[test]
fn a_drained_shard_whose_file_still_holds_rows_is_not_called_empty() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    deployment(dir.path(), 0);
    // Rows whose key no slot routes (REAL): the library leaves them where they are.
    let db =
        CollegeDb::open_embedded(Config::with_shard_names(["s0", "s1", "s2"]), dir.path()).unwrap();
    pollster::block_on(async {
        db.run_shard("s1", "CREATE TABLE odd (k REAL PRIMARY KEY, v TEXT)", &[])
            .await
            .unwrap();
        db.run_shard("s1", "INSERT INTO odd VALUES (1.5, 'x'), (2.5, 'y')", &[])
            .await
            .unwrap();
    });
    drop(db);

    let (code, out) = tool(&["drain-shard", folder, "s1"]);
    assert_eq!(code, 1, "the users moved, the odd rows did not: {out}");
    assert!(out.contains("drained shard s1: moved "), "{out}");
    assert!(out.contains("neither INTEGER nor TEXT"), "{out}");
    assert!(
        out.contains("its file still holds 2 rows (odd 2)") && !out.contains("can be removed"),
        "{out}"
    );
    // The router no longer reads s1: verify says so rather than calling the deployment clean.
    let (code, out) = tool(&["verify", folder]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("standby shard s1: rows that no route reaches (odd 2)"),
        "{out}"
    );
    let (code, out) = tool(&["verify", folder, "--table", "users"]);
    assert_eq!(code, 0, "only the users, all placed: {out}");
    // Draining again moves nothing and still says what is left.
    let (code, out) = tool(&["drain-shard", folder, "s1"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("nothing to do: shard s1 owns no slots"),
        "{out}"
    );
    assert!(out.contains("still holds 2 rows"), "{out}");
    assert_all_users(dir.path(), &["s0", "s1", "s2"]);
}

/// The drain of a shard holding directory-placed (round-robin) rows: they move to the other
/// shards with their directory entries, and the drained file is left empty.
#[test]
fn drain_moves_directory_placed_rows_too() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    deployment(dir.path(), 300);
    let (code, out) = tool(&["drain-shard", folder, "s1"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("s1 -> other shards (directory-placed rows)"),
        "{out}"
    );
    assert!(out.contains("holds no rows"), "{out}");
    let (code, out) = tool(&["verify", folder]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("notes: 300 rows") && !out.contains("NOT CLEAN"),
        "{out}"
    );
    let db = CollegeDb::open_embedded(Config::with_shard_names(["s0", "s2"]), dir.path()).unwrap();
    pollster::block_on(async {
        assert_eq!(Note::count(&db).await.unwrap(), 300);
        for id in 0..6 {
            assert!(Note::find(&db, id).await.unwrap().is_some(), "note {id}");
        }
    });
}

#[test]
fn closing_the_output_does_not_stop_an_operation() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    deployment(dir.path(), 0);
    // As `collegedb add-shard … | head -1` would: the reader is gone before the first line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_collegedb"))
        .args(["add-shard", folder, "s3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let (code, out) = tool(&["status", folder]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no operation in progress"), "{out}");
    assert!(out.contains("shard map version 4: 4 shards"), "{out}");
    assert!(out.contains("last operation: add-shard s3"), "{out}");
}

#[test]
fn reassign_moves_one_key_and_refuses_what_it_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    deployment(dir.path(), 0);
    let where_is = |id: i64| {
        let db = CollegeDb::open_embedded(Config::with_shard_names(["s0", "s1", "s2"]), dir.path())
            .unwrap();
        pollster::block_on(User::locate(&db, id)).unwrap().unwrap()
    };
    let from = where_is(777);
    let to = if from == "s0" { "s1" } else { "s0" };
    let (code, out) = tool(&["reassign", folder, "users", "777", to, "--int"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "reassigned key 777 of users: {from} -> {to} (1 row copied, 1 deleted)"
        )),
        "{out}"
    );
    assert_eq!(where_is(777), to);
    let (code, out) = tool(&["verify", folder]);
    assert_eq!(code, 0, "{out}");
    assert_all_users(dir.path(), &["s0", "s1", "s2"]);
    // Again: nothing to do.
    let (code, out) = tool(&["reassign", folder, "users", "777", to, "--int"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to do"), "{out}");

    // A text key where the table's keys are integers finds no row; a shard outside the map and
    // a key that is not an integer are refused.
    let (code, out) = tool(&["reassign", folder, "users", "777", from.as_str()]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("ROW_NOT_FOUND") || out.contains("no row"),
        "{out}"
    );
    let (code, out) = tool(&["reassign", folder, "users", "777", "s9", "--int"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("add-shard"), "{out}");
    let (code, out) = tool(&["reassign", folder, "users", "seven", "s1", "--int"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("not an integer key"), "{out}");
    assert_eq!(where_is(777), to);
}

#[test]
fn migrate_applies_a_folder_to_every_shard_and_reports_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    deployment(dir.path(), 0);
    let migrations = tempfile::tempdir().unwrap();
    let files = migrations.path().to_str().unwrap();
    std::fs::write(
        migrations.path().join("0001_labels.sql"),
        "CREATE TABLE labels (name TEXT PRIMARY KEY);",
    )
    .unwrap();
    std::fs::write(
        migrations.path().join("0002_users_bio.sql"),
        "ALTER TABLE users ADD COLUMN bio TEXT;",
    )
    .unwrap();
    let (code, out) = tool(&["migrate", folder, files, "--status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("s1: no migration applied, 2 pending"), "{out}");
    let (code, out) = tool(&["migrate", folder, files]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("[1/6] 0001_labels applied on s0"), "{out}");
    assert!(out.contains("[6/6] 0002_users_bio applied on s2"), "{out}");
    assert!(out.contains("done: s0 at 2, s1 at 2, s2 at 2"), "{out}");
    let (code, out) = tool(&["migrate", folder, files]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("nothing to do: every shard is at version 2"),
        "{out}"
    );
    assert_all_users(dir.path(), &["s0", "s1", "s2"]);

    // A statement a shard refuses: the run stops and says where each shard stands.
    std::fs::write(
        migrations.path().join("0003_broken.sql"),
        "ALTER TABLE no_such_table ADD COLUMN x TEXT;",
    )
    .unwrap();
    let (code, out) = tool(&["migrate", folder, files]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("MIGRATION_FAILED")
            && out.contains("no such table: no_such_table")
            && out.contains("s0 at 2, s1 at 2, s2 at 2"),
        "{out}"
    );
}

#[test]
fn health_probes_every_component() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    let db =
        CollegeDb::open_embedded(Config::with_shard_names(["east", "west"]), dir.path()).unwrap();
    pollster::block_on(Note::create_table(&db)).unwrap();
    drop(db);
    let (code, out) = tool(&["health", folder, "--timeout-ms", "1500"]);
    assert_eq!(code, 0, "{out}");
    for component in ["shard east", "shard west", "directory", "coordinator"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("ok") && l.contains(component)),
            "{component}: {out}"
        );
    }
    assert!(out.trim_end().ends_with("healthy"), "{out}");
    // Not a deployment: an error, exit 2.
    let empty = tempfile::tempdir().unwrap();
    let (code, out) = tool(&["health", empty.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
}

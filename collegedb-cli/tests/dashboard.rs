//! `collegedb dashboard` in a real headless browser: the page loads, lists every shard, and
//! shows new rows by itself after the test writes them through the library; a hostile table
//! name shows as text. Needs `--features browser` (Chromium and puppeteer-core, installed by
//! `scripts/install-browser.sh`). The screenshot is left in `target/dashboard/native.png`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use collegedb::{CollegeDb, Config, EmbeddedDb};
use collegedb_tests::browser::Browser;
use collegedb_tests::User;

/// The dashboard server, stopped (its whole process group) when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rows_per_shard(db: &EmbeddedDb) -> BTreeMap<String, u64> {
    pollster::block_on(db.get_shard_stats())
        .unwrap()
        .into_iter()
        .map(|s| (s.shard, s.rows))
        .collect()
}

#[test]
fn the_dashboard_shows_every_shard_and_follows_writes() {
    let dir = tempfile::tempdir().unwrap();
    let shards = ["east", "west", "south"];
    let db = CollegeDb::open_embedded(Config::with_shard_names(shards), dir.path()).unwrap();
    pollster::block_on(async {
        User::create_table(&db).await.unwrap();
        for i in 0..12 {
            User::insert(&db, &User::new(format!("before-{i}")))
                .await
                .unwrap();
        }
        // A table whose name is markup: the page must show it as text.
        db.run_shard(
            "west",
            r#"CREATE TABLE "<img src=x onerror=window.__collegedbInjected=true>" (id TEXT PRIMARY KEY)"#,
            &[],
        )
        .await
        .unwrap();
    });

    let mut child = Command::new(env!("CARGO_BIN_EXE_collegedb"))
        .args(["dashboard", dir.path().to_str().unwrap(), "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut output = BufReader::new(child.stdout.take().unwrap());
    output.read_line(&mut first).unwrap();
    // Keep reading, so the server never writes to a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut output, &mut std::io::sink()));
    let server = Server(child);
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_owned();

    let screenshot =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard/native.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut browser = Browser::open(&url, &shards, &screenshot);
    let shown = browser.ready();
    assert_eq!(shown, rows_per_shard(&db), "the page's first rows");
    assert_eq!(shown.values().sum::<u64>(), 12);

    pollster::block_on(async {
        for i in 0..45 {
            User::insert(&db, &User::new(format!("after-{i}")))
                .await
                .unwrap();
        }
    });
    let expected = rows_per_shard(&db);
    assert_eq!(expected.values().sum::<u64>(), 57);
    assert_ne!(expected, shown);
    browser.expect(&expected);
    browser.finish();
    assert!(
        screenshot.metadata().unwrap().len() > 10_000,
        "a screenshot"
    );

    // The server answered throughout; it stops when told.
    let mut server = server;
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "the server is still running"
    );
    server.0.kill().unwrap();
    server.0.wait().unwrap();
}

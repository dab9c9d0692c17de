//! Quickstart: three local SQLite shards, two models with different strategies, 10,000 rows;
//! then a fourth shard joins while a writer keeps writing, and the deployment is verified.
//!
//! ```text
//! cargo run --release --example quickstart
//! sqlite3 quickstart-data/shard-a.sqlite 'SELECT COUNT(*) FROM users'
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use collegedb::{CollegeDb, Config, EmbeddedDb, GrowthOptions, Sharded};

/// Users are placed by hash: no directory entry, the shard follows from the id.
#[derive(Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "users", strategy = "hash")]
struct User {
    #[sharded(key)]
    id: String,
    name: String,
    email: Option<String>,
    karma: i64,
}

/// Notes are spread round-robin and recorded in the directory; reads look there first.
#[derive(Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "notes", read = "round-robin", write = "round-robin")]
struct Note {
    #[sharded(key)]
    id: i64,
    author: String,
    body: String,
}

const USERS: usize = 10_000;
const NOTES: i64 = 3_000;

fn progress(label: &str, done: usize, total: usize) {
    let width = 30;
    let filled = done * width / total;
    print!(
        "\r  {label:<8} [{}{}] {done:>6}/{total}",
        "#".repeat(filled),
        " ".repeat(width - filled)
    );
    if done == total {
        println!();
    }
    std::io::stdout().flush().ok();
}

fn per_second(count: usize, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64();
    format!("{:.2} s, {:.0} per second", secs, count as f64 / secs)
}

/// Updates users in a loop on its own handle until `stop`; returns how many updates succeeded.
fn writer(db: EmbeddedDb, stop: Arc<AtomicBool>) -> collegedb::Result<usize> {
    pollster::block_on(async {
        let mut written = 0;
        while !stop.load(Ordering::Relaxed) {
            let i = (written * 7919) % USERS;
            let id = format!("user-{i:05}");
            let user = User {
                id: id.clone(),
                name: format!("User {i}, edited during the move"),
                email: None,
                karma: written as i64,
            };
            User::upsert(&db, &user).await?;
            assert_eq!(User::find(&db, &id).await?.as_ref(), Some(&user));
            written += 1;
        }
        Ok(written)
    })
}

/// Adds a fourth shard to the live deployment while a writer keeps writing, then verifies it.
async fn grow(folder: &std::path::Path) -> collegedb::Result<()> {
    // The new shard is configured beside the others: standby until `add_shard` gives it slots.
    let config = Config::with_shard_names(["shard-a", "shard-b", "shard-c", "shard-d"]);
    let db = CollegeDb::open_embedded(config.clone(), folder)?;
    println!(
        "\nGrowing from 3 to 4 shards while a writer upserts users (map version {}):",
        db.shard_map().version()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (handle, stop) = (CollegeDb::open_embedded(config, folder)?, stop.clone());
        std::thread::spawn(move || writer(handle, stop))
    };
    let shown = Arc::new(AtomicUsize::new(0));
    let options = GrowthOptions::default().on_step(move |job| {
        let moved = (job.rows_copied() + job.rows_deleted()) as usize;
        let total = (2 * job.rows_estimated() as usize).max(moved).max(1);
        if moved - shown.load(Ordering::Relaxed) >= total / 20 || job.is_finished() {
            shown.store(moved, Ordering::Relaxed);
            progress("moving", moved, total);
        }
    });
    let started = Instant::now();
    let job = db.add_shard_with("shard-d", &options).await?;
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("the writer thread")?;
    println!(
        "  moved {} rows onto shard-d in {elapsed:.2} s ({:.0} rows per second); map version {}",
        job.rows_copied(),
        job.rows_copied() as f64 / elapsed,
        db.shard_map().version()
    );
    println!("  the writer made {written} upserts during the move, each read back at once");
    println!("  {:<8} {:>7} {:>7}", "shard", "users", "notes");
    for stats in db.get_shard_stats().await? {
        println!(
            "  {:<8} {:>7} {:>7}",
            stats.shard, stats.tables["users"], stats.tables["notes"]
        );
    }
    for table in ["users", "notes"] {
        let report = db.verify_table(table, "id").await?;
        assert!(report.is_clean() && report.in_flight == 0, "{report}");
        println!(
            "verify {table} after growing: clean ({} rows, each on the shard the router looks on, none twice)",
            report.rows
        );
    }
    Ok(())
}

fn main() -> collegedb::Result<()> {
    pollster::block_on(run())
}

async fn run() -> collegedb::Result<()> {
    let folder = std::path::Path::new("quickstart-data");
    if folder.exists() {
        std::fs::remove_dir_all(folder).map_err(|e| collegedb::Error::Io(e.to_string()))?;
    }
    let config = Config::with_shard_names(["shard-a", "shard-b", "shard-c"]);
    let db = CollegeDb::open_embedded(config, folder)?;
    println!("Opened 3 shards in {}/", folder.display());

    User::create_table(&db).await?;
    Note::create_table(&db).await?;

    println!("Inserting {USERS} users (hash placement):");
    let started = Instant::now();
    for i in 0..USERS {
        let user = User {
            id: format!("user-{i:05}"),
            name: format!("User {i}"),
            email: (i % 3 != 0).then(|| format!("user{i}@example.com")),
            karma: i as i64,
        };
        User::insert(&db, &user).await?;
        if (i + 1) % 500 == 0 {
            progress("users", i + 1, USERS);
        }
    }
    println!("  inserted in {}", per_second(USERS, started));

    println!("Inserting {NOTES} notes (round-robin placement, recorded in the directory):");
    let started = Instant::now();
    for id in 0..NOTES {
        let note = Note {
            id,
            author: format!("user-{:05}", id % USERS as i64),
            body: format!("note number {id}"),
        };
        Note::insert(&db, &note).await?;
        if (id + 1) % 500 == 0 {
            progress("notes", id as usize + 1, NOTES as usize);
        }
    }
    println!("  inserted in {}", per_second(NOTES as usize, started));

    let started = Instant::now();
    for i in 0..USERS {
        let id = format!("user-{i:05}");
        let user = User::find(&db, &id)
            .await?
            .expect("every inserted user is found");
        assert_eq!(user.karma, i as i64);
    }
    println!(
        "Read back all {USERS} users by key in {}",
        per_second(USERS, started)
    );

    let started = Instant::now();
    for i in (0..USERS).step_by(10) {
        let mut user = User::find(&db, format!("user-{i:05}"))
            .await?
            .expect("found");
        user.karma += 1_000;
        User::update(&db, &user).await?;
    }
    let mut deleted = 0;
    for i in (0..USERS).step_by(25) {
        deleted += User::delete(&db, format!("user-{i:05}")).await? as usize;
    }
    println!(
        "Updated {} users and deleted {deleted} in {:.2} s",
        USERS / 10,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(User::find(&db, "user-00000").await?, None);
    assert_eq!(
        User::find(&db, "user-00010").await?.expect("kept").karma,
        1_010
    );

    println!("\nRows per shard (read from the shard files):");
    println!(
        "  {:<8} {:>7} {:>7} {:>10}",
        "shard", "users", "notes", "bytes"
    );
    for stats in db.get_shard_stats().await? {
        println!(
            "  {:<8} {:>7} {:>7} {:>10}",
            stats.shard, stats.tables["users"], stats.tables["notes"], stats.size_bytes
        );
    }
    let entries = collegedb::directory::Directory::count(db.directory()).await?;
    println!("Directory entries: {entries} (notes only: hash-placed users need none)");
    for table in ["users", "notes"] {
        let report = db.verify_table(table, "id").await?;
        assert!(report.is_clean(), "{report}");
        println!(
            "verify {table}: clean ({} rows, each on the shard the router looks on, none twice)",
            report.rows
        );
    }
    drop(db);
    grow(folder).await?;
    let config = Config::with_shard_names(["shard-a", "shard-b", "shard-c", "shard-d"]);
    let db = CollegeDb::open_embedded(config, folder)?;
    let shard = User::locate(&db, "user-04242").await?.expect("exists");
    println!("\nuser-04242 lives on {shard}. Look for yourself:");
    println!(
        "  sqlite3 {}/{shard}.sqlite \"SELECT * FROM users WHERE id = 'user-04242'\"",
        folder.display()
    );
    println!(
        "Check the whole deployment: cargo run -p collegedb-cli -- verify {}",
        folder.display()
    );
    Ok(())
}

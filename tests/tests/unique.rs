//! Unique secondary lookups on real SQLite files: `find_by_email` and `find_by_handle` across
//! shards; `DUPLICATE_KEY` naming the column for inserts, updates, upserts and `insert_many`,
//! with nothing of the refused write left behind; updates and deletes that keep the lookups
//! exact; racing inserts of one value from several threads, each with its own handle; and a
//! crash injected at every step of each write (a wrapper around the real files that fails every
//! call from the N-th on, as a process that died there would), after which no row is without
//! its entry and the next write of the value completes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use collegedb::backend::embedded::{self, LocalCoordinator, SqliteDirectory, SqliteShard};
use collegedb::backend::{Backend, Coordinator, Row, ShardConn, Statement};
use collegedb::directory::{Directory, DirectoryPage};
use collegedb::slots::ShardMap;
use collegedb::{CollegeDb, Config, Embedded, Error, Key, Result, Value};
use collegedb_tests::{open_with, Account};
use pollster::block_on;

const SHARDS: usize = 3;
/// A short lease, so that orphans left by a crash are taken over within the test.
const LEASE_MS: u64 = 100;

fn open(dir: &std::path::Path) -> CollegeDb<Embedded> {
    open_with(dir, SHARDS, |mut config| {
        config.unique_lease_ms = LEASE_MS;
        config
    })
}

fn duplicate_column(error: Error) -> String {
    assert_eq!(error.code(), "DUPLICATE_KEY", "{error}");
    assert_eq!(error.http_status(), 409);
    match error {
        Error::DuplicateValue { table, column } => {
            assert_eq!(table, "accounts");
            column
        }
        other => panic!("expected DuplicateValue, got {other:?}"),
    }
}

/// The directory entry of `value` in the lookup of `column`, read from the store.
fn entry(db: &CollegeDb<Embedded>, column: &str, value: &str) -> Option<String> {
    block_on(db.directory().lookup(
        &collegedb::unique::scope("accounts", column),
        &Key::Text(value.into()),
    ))
    .unwrap()
}

#[test]
fn finds_by_unique_columns_across_shards_and_refuses_taken_values() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    block_on(Account::create_table(&db)).unwrap();
    let accounts: Vec<Account> = (0..30)
        .map(|i| Account::new(i, format!("user{i}@example.com")))
        .collect();
    for account in &accounts {
        block_on(Account::insert(&db, account)).unwrap();
    }
    let shards: std::collections::BTreeSet<String> = accounts
        .iter()
        .map(|a| block_on(Account::locate(&db, a.id)).unwrap().unwrap())
        .collect();
    assert_eq!(shards.len(), SHARDS, "the rows spread over every shard");
    for account in &accounts {
        let by_email = block_on(Account::find_by_email(&db, account.email.as_str())).unwrap();
        assert_eq!(by_email.as_ref(), Some(account));
        let by_handle = block_on(Account::find_by_handle(&db, account.handle.clone())).unwrap();
        assert_eq!(by_handle.as_ref(), Some(account));
        assert!(entry(&db, "email", &account.email)
            .unwrap()
            .starts_with("live#"));
        assert!(entry(&db, "login", &account.handle).is_some());
    }
    assert_eq!(
        block_on(Account::find_by_email(&db, "nobody@example.com")).unwrap(),
        None
    );

    // A second row with a taken email, even on another shard: refused, naming the column.
    let thief = Account::new(1000, "user3@example.com");
    let column = duplicate_column(block_on(Account::insert(&db, &thief)).unwrap_err());
    assert_eq!(column, "email");
    assert_eq!(block_on(Account::find(&db, 1000)).unwrap(), None);
    assert_eq!(
        block_on(Account::find_by_email(&db, "user3@example.com")).unwrap(),
        Some(accounts[3].clone())
    );
    // The second unique column is checked too, under its own column name.
    let mut thief = Account::new(1001, "fresh@example.com");
    thief.handle = accounts[4].handle.clone();
    assert_eq!(
        duplicate_column(block_on(Account::insert(&db, &thief)).unwrap_err()),
        "login"
    );
    assert_eq!(block_on(Account::find(&db, 1001)).unwrap(), None);
    // The refused insert removed the claim it had made for its fresh email, so the value is
    // free at once, not held until the lease runs out.
    assert_eq!(entry(&db, "email", "fresh@example.com"), None);
    assert_eq!(
        block_on(Account::find_by_email(&db, "fresh@example.com")).unwrap(),
        None
    );
    let taker = Account::new(1002, "fresh@example.com");
    block_on(Account::insert(&db, &taker)).unwrap();
    assert_eq!(
        block_on(Account::find_by_email(&db, "fresh@example.com")).unwrap(),
        Some(taker)
    );

    // Inserting an existing key again fails on the key, and leaves its lookups as they were.
    let again = block_on(Account::insert(&db, &accounts[5])).unwrap_err();
    assert!(matches!(again, Error::DuplicateKey { .. }), "{again:?}");
    assert_eq!(
        block_on(Account::find_by_email(&db, accounts[5].email.as_str())).unwrap(),
        Some(accounts[5].clone())
    );

    // Hostile and oversized values are typed errors before anything is written.
    let long = "x".repeat(3000);
    let error = block_on(Account::insert(&db, &Account::new(2000, long.clone()))).unwrap_err();
    assert_eq!(error.code(), "KEY_INVALID", "{error}");
    assert_eq!(block_on(Account::find(&db, 2000)).unwrap(), None);
    assert_eq!(
        block_on(Account::find_by_email(&db, long))
            .unwrap_err()
            .code(),
        "KEY_INVALID"
    );
    let error = block_on(Account::insert(&db, &Account::new(2002, ""))).unwrap_err();
    assert_eq!(error.code(), "KEY_INVALID", "{error}");
    assert!(error.to_string().contains("`accounts.email`"), "{error}");
    assert_eq!(block_on(Account::find(&db, 2002)).unwrap(), None);
    let hostile = Account::new(2001, "'; DROP TABLE accounts; --");
    block_on(Account::insert(&db, &hostile)).unwrap();
    assert_eq!(
        block_on(Account::find_by_email(&db, "'; DROP TABLE accounts; --")).unwrap(),
        Some(hostile)
    );
}

#[test]
fn updates_upserts_and_deletes_keep_the_lookups_exact() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    block_on(Account::create_table(&db)).unwrap();
    let alice = Account::new(1, "alice@example.com");
    let bob = Account::new(2, "bob@example.com");
    block_on(Account::insert(&db, &alice)).unwrap();
    block_on(Account::insert(&db, &bob)).unwrap();

    // A changed email moves the lookup: the old value is free, its entry gone.
    let mut moved = alice.clone();
    moved.email = "alice@new.example".into();
    moved.name = "Alice".into();
    block_on(Account::update(&db, &moved)).unwrap();
    assert_eq!(
        block_on(Account::find_by_email(&db, "alice@new.example")).unwrap(),
        Some(moved.clone())
    );
    assert_eq!(
        block_on(Account::find_by_email(&db, "alice@example.com")).unwrap(),
        None
    );
    assert_eq!(entry(&db, "email", "alice@example.com"), None);
    // The unchanged handle keeps its entry.
    assert_eq!(
        block_on(Account::find_by_handle(&db, "handle-1")).unwrap(),
        Some(moved.clone())
    );

    // An update to a taken value is refused, and the row stays as it was.
    let mut clash = moved.clone();
    clash.email = bob.email.clone();
    clash.name = "changed".into();
    assert_eq!(
        duplicate_column(block_on(Account::update(&db, &clash)).unwrap_err()),
        "email"
    );
    assert_eq!(
        block_on(Account::find(&db, 1)).unwrap(),
        Some(moved.clone())
    );
    assert_eq!(
        block_on(Account::find_by_email(&db, bob.email.as_str())).unwrap(),
        Some(bob.clone())
    );
    // An update of a missing row claims nothing.
    let ghost = Account::new(99, "ghost@example.com");
    let error = block_on(Account::update(&db, &ghost)).unwrap_err();
    assert_eq!(error.code(), "ROW_NOT_FOUND");
    assert_eq!(entry(&db, "email", "ghost@example.com"), None);

    // The freed value can be taken by another key.
    let carol = Account::new(3, "alice@example.com");
    block_on(Account::insert(&db, &carol)).unwrap();
    assert_eq!(
        block_on(Account::find_by_email(&db, "alice@example.com")).unwrap(),
        Some(carol.clone())
    );

    // Upsert: as an insert for a new key, as an update for an existing one.
    let dave = Account::new(4, "dave@example.com");
    block_on(Account::upsert(&db, &dave)).unwrap();
    let mut dave2 = dave.clone();
    dave2.email = "dave@new.example".into();
    block_on(Account::upsert(&db, &dave2)).unwrap();
    assert_eq!(
        block_on(Account::find_by_email(&db, "dave@new.example")).unwrap(),
        Some(dave2.clone())
    );
    assert_eq!(entry(&db, "email", "dave@example.com"), None);
    let mut dave3 = dave2.clone();
    dave3.email = carol.email.clone();
    assert_eq!(
        duplicate_column(block_on(Account::upsert(&db, &dave3)).unwrap_err()),
        "email"
    );
    assert_eq!(
        block_on(Account::find(&db, 4)).unwrap(),
        Some(dave2.clone())
    );

    // Delete: the row, then its entries.
    assert!(block_on(Account::delete(&db, 3)).unwrap());
    assert_eq!(
        block_on(Account::find_by_email(&db, "alice@example.com")).unwrap(),
        None
    );
    assert_eq!(entry(&db, "email", "alice@example.com"), None);
    assert_eq!(entry(&db, "login", "handle-3"), None);
    assert!(!block_on(Account::delete(&db, 3)).unwrap());

    // A handle that cached a lookup sees the change made through another handle.
    let other = open(dir.path());
    assert_eq!(
        block_on(Account::find_by_email(&other, "bob@example.com")).unwrap(),
        Some(bob.clone())
    );
    block_on(Account::delete(&db, 2)).unwrap();
    let bob2 = Account::new(5, "bob@example.com");
    block_on(Account::insert(&db, &bob2)).unwrap();
    assert_eq!(
        block_on(Account::find_by_email(&other, "bob@example.com")).unwrap(),
        Some(bob2)
    );

    // `update_many` cannot set a unique column; `delete_many` leaves harmless orphans.
    let fields = Account::fields();
    let error = block_on(
        Account::query()
            .filter(fields.id().eq(1))
            .update_many(&db, &[fields.email().set("x@example.com")]),
    )
    .unwrap_err();
    assert_eq!(error.code(), "QUERY_INVALID", "{error}");
    assert!(
        error.to_string().contains("unique column `email`"),
        "{error}"
    );
    block_on(Account::query().filter(fields.id().eq(4)).delete_many(&db)).unwrap();
    assert_eq!(
        block_on(Account::find_by_email(&db, "dave@new.example")).unwrap(),
        None
    );
    block_on(Account::insert(&db, &Account::new(6, "dave@new.example"))).unwrap();
}

#[test]
fn insert_many_claims_every_value_and_refuses_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    block_on(Account::create_table(&db)).unwrap();
    let rows: Vec<Account> = (0..50)
        .map(|i| Account::new(i, format!("bulk{i}@example.com")))
        .collect();
    assert_eq!(block_on(Account::insert_many(&db, &rows)).unwrap(), 50);
    for row in &rows {
        assert_eq!(
            block_on(Account::find_by_email(&db, row.email.as_str())).unwrap(),
            Some(row.clone())
        );
    }
    // Two rows of one call with one value: refused before anything is claimed or written.
    let twins = vec![
        Account::new(100, "twin@example.com"),
        Account::new(101, "twin@example.com"),
    ];
    assert_eq!(
        duplicate_column(block_on(Account::insert_many(&db, &twins)).unwrap_err()),
        "email"
    );
    assert_eq!(block_on(Account::find(&db, 100)).unwrap(), None);
    assert_eq!(entry(&db, "email", "twin@example.com"), None);
    // A value already taken by a stored row: refused, nothing of the call written.
    let late = vec![
        Account::new(200, "new200@example.com"),
        Account::new(201, "bulk7@example.com"),
    ];
    assert_eq!(
        duplicate_column(block_on(Account::insert_many(&db, &late)).unwrap_err()),
        "email"
    );
    assert_eq!(block_on(Account::find(&db, 200)).unwrap(), None);
    assert_eq!(block_on(Account::find(&db, 201)).unwrap(), None);
    // The refused call removed what it had claimed: the fresh value is free at once.
    assert_eq!(entry(&db, "email", "new200@example.com"), None);
    assert_eq!(entry(&db, "login", "handle-200"), None);
    // The idempotent form can run twice over the same input.
    let more: Vec<Account> = (300..320)
        .map(|i| Account::new(i, format!("more{i}@example.com")))
        .collect();
    let first = block_on(Account::insert_many_idempotent(&db, &more)).unwrap();
    let second = block_on(Account::insert_many_idempotent(&db, &more)).unwrap();
    assert_eq!((first.inserted, second.already_present), (20, 20));
    assert_eq!(
        block_on(Account::find_by_email(&db, "more311@example.com")).unwrap(),
        Some(more[11].clone())
    );
}

#[test]
fn insert_many_claims_and_confirms_each_column_in_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    block_on(Account::create_table(&open(dir.path()))).unwrap();
    let rows: Vec<Account> = (0..50)
        .map(|i| Account::new(i, format!("batch{i}@example.com")))
        .collect();
    let (db, fuse) = fused(dir.path(), usize::MAX);
    assert_eq!(block_on(Account::insert_many(&db, &rows)).unwrap(), 50);
    let calls = usize::MAX - fuse.0.load(Ordering::SeqCst);
    // Per unique column one batch of claims and one of confirms; plus the shards' statements
    // (a check and a write per shard). One call per value would make more than 100.
    assert!(calls <= 2 + 2 + 2 * SHARDS, "{calls} calls for 50 rows");
    let plain = open(dir.path());
    for row in &rows {
        assert_eq!(
            block_on(Account::find_by_email(&plain, row.email.as_str())).unwrap(),
            Some(row.clone())
        );
        assert!(entry(&plain, "email", &row.email)
            .unwrap()
            .starts_with("live#"));
    }
    // The store fails at the confirms, after every row is written: the caller is told the rows
    // are there, and the pending entries already count, for reads and against other keys.
    let more: Vec<Account> = (100..150)
        .map(|i| Account::new(i, format!("late{i}@example.com")))
        .collect();
    let (db, _) = fused(dir.path(), calls - 2);
    let error = block_on(Account::insert_many(&db, &more)).unwrap_err();
    assert!(
        matches!(error, Error::PartiallyWritten { written: 50, .. }),
        "{error:?}"
    );
    assert_eq!(
        block_on(Account::find_by_email(&plain, "late117@example.com")).unwrap(),
        Some(more[17].clone())
    );
    assert!(entry(&plain, "email", "late117@example.com")
        .unwrap()
        .starts_with("pending@"));
    let taken = block_on(Account::insert(
        &plain,
        &Account::new(999, "late117@example.com"),
    ));
    assert_eq!(duplicate_column(taken.unwrap_err()), "email");
}

#[test]
fn racing_inserts_of_one_value_from_many_handles_admit_exactly_one() {
    const THREADS: i64 = 6;
    const ROUNDS: usize = 15;
    let dir = tempfile::tempdir().unwrap();
    block_on(Account::create_table(&open(dir.path()))).unwrap();
    for round in 0..ROUNDS {
        let barrier = Arc::new(std::sync::Barrier::new(THREADS as usize));
        let email = format!("race{round}@example.com");
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (path, barrier, email) =
                    (dir.path().to_owned(), barrier.clone(), email.clone());
                std::thread::spawn(move || {
                    // Each thread has its own handle, with its own cache, as separate processes.
                    let db = open(&path);
                    let id = round as i64 * 100 + t;
                    barrier.wait();
                    block_on(Account::insert(&db, &Account::new(id, email)))
                })
            })
            .collect();
        let results: Vec<Result<()>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: {results:?}");
        for result in results.into_iter().filter_map(Result::err) {
            assert_eq!(duplicate_column(result), "email");
        }
        let db = open(dir.path());
        let holders = block_on(
            Account::query()
                .filter(Account::fields().email().eq(email.clone()))
                .all(&db),
        )
        .unwrap();
        assert_eq!(holders.len(), 1, "round {round}: {holders:?}");
        assert_eq!(
            block_on(Account::find_by_email(&db, email)).unwrap(),
            Some(holders[0].clone())
        );
    }
}

#[test]
fn concurrent_writes_of_the_same_keys_keep_every_row_reachable_by_its_values() {
    const THREADS: u64 = 4;
    const OPS: u64 = 150;
    let dir = tempfile::tempdir().unwrap();
    block_on(Account::create_table(&open(dir.path()))).unwrap();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let path = dir.path().to_owned();
            std::thread::spawn(move || {
                let db = open(&path);
                let mut state = t * 7919 + 17;
                let mut next = |n: u64| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state % n
                };
                let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
                for _ in 0..OPS {
                    // Few ids and few values: the threads write the same rows and values.
                    let id = next(4) as i64;
                    let mut row = Account::new(id, format!("v{}@example.com", next(6)));
                    row.handle = format!("h{}", next(6));
                    let result = match next(4) {
                        0 => block_on(Account::insert(&db, &row)),
                        1 => block_on(Account::update(&db, &row)),
                        2 => block_on(Account::upsert(&db, &row)),
                        _ => block_on(Account::delete(&db, id)).map(drop),
                    };
                    let code = match result {
                        Ok(()) => "ok",
                        Err(e) => e.code(),
                    };
                    assert!(
                        ["ok", "DUPLICATE_KEY", "ROW_NOT_FOUND"].contains(&code),
                        "{code}"
                    );
                    *outcomes.entry(code.to_owned()).or_default() += 1;
                }
                outcomes
            })
        })
        .collect();
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for thread in threads {
        for (code, n) in thread.join().unwrap() {
            *outcomes.entry(code).or_default() += n;
        }
    }
    assert!(
        outcomes.get("ok").copied().unwrap_or(0) > 50,
        "{outcomes:?}"
    );
    assert!(outcomes.contains_key("DUPLICATE_KEY"), "{outcomes:?}");
    let db = open(dir.path());
    check_consistent(&db, "after concurrent writes");
    // No claim is left that holds a value off: every value not on a row can be taken now.
    std::thread::sleep(std::time::Duration::from_millis(LEASE_MS + 20));
    let rows = block_on(Account::query().all(&db)).unwrap();
    for v in 0..6 {
        let email = format!("v{v}@example.com");
        if rows.iter().all(|r| r.email != email) {
            let mut row = Account::new(100 + v, email);
            row.handle = format!("free-{v}");
            block_on(Account::insert(&db, &row)).unwrap();
        }
    }
    check_consistent(&db, "after taking the free values");
}

#[test]
fn backfill_creates_the_entries_of_rows_written_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    block_on(Account::create_table(&db)).unwrap();
    // Rows written with raw SQL keep no lookups, as with a column made unique later.
    for id in 0..20i64 {
        let email = if id == 19 {
            "dup@example.com".to_owned()
        } else {
            format!("raw{id}@example.com")
        };
        let email = if id == 18 {
            "dup@example.com".to_owned()
        } else {
            email
        };
        block_on(db.table("accounts").run(
            id,
            "INSERT INTO accounts (id, email, login, name) VALUES (?, ?, ?, ?)",
            &[
                Value::Integer(id),
                Value::Text(email),
                Value::Text(format!("raw-{id}")),
                Value::Text("raw".into()),
            ],
        ))
        .unwrap();
    }
    assert_eq!(
        block_on(Account::find_by_email(&db, "raw3@example.com")).unwrap(),
        None
    );
    let report = block_on(collegedb::unique::backfill::<Account, _>(&db, 7)).unwrap();
    assert_eq!(report.rows, 20);
    assert_eq!(report.entries, 39, "{report:?}");
    assert_eq!(
        report.duplicates,
        vec![("email".to_owned(), "\"dup@example.com\"".to_owned())]
    );
    assert_eq!(
        block_on(Account::find_by_email(&db, "raw3@example.com"))
            .unwrap()
            .map(|a| a.id),
        Some(3)
    );
    assert_eq!(
        block_on(Account::find_by_handle(&db, "raw-19"))
            .unwrap()
            .map(|a| a.id),
        Some(19)
    );
    // The values are now held: another key cannot take one.
    let error = block_on(Account::insert(&db, &Account::new(50, "raw4@example.com"))).unwrap_err();
    assert_eq!(duplicate_column(error), "email");
    // Running it again changes nothing.
    let again = block_on(collegedb::unique::backfill::<Account, _>(&db, 100)).unwrap();
    assert_eq!((again.rows, again.entries), (20, 39));
}

// ---------------------------------------------------------------------------------------------
// Crashes at every step: the real files behind a wrapper that fails every call from the N-th.

/// Calls left before the "process" dies; shared by every part of one handle.
#[derive(Clone)]
struct Fuse(Arc<AtomicUsize>);

impl Fuse {
    fn strike(&self) -> Result<()> {
        let left = self.0.load(Ordering::SeqCst);
        if left == 0 {
            return Err(Error::Unavailable {
                shard: "any".into(),
                message: "injected crash: the process died here".into(),
            });
        }
        self.0.store(left - 1, Ordering::SeqCst);
        Ok(())
    }
}

struct FusedShard(SqliteShard, Fuse);
struct FusedDirectory(SqliteDirectory, Fuse);
struct FusedCoordinator(LocalCoordinator);

impl ShardConn for FusedShard {
    async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        self.1.strike()?;
        self.0.execute(sql, params).await
    }
    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.1.strike()?;
        self.0.query(sql, params).await
    }
    async fn query_raw(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.1.strike()?;
        self.0.query_raw(sql, params).await
    }
    async fn batch(&self, statements: &[Statement]) -> Result<Vec<u64>> {
        self.1.strike()?;
        self.0.batch(statements).await
    }
    fn computes_slots(&self) -> bool {
        true
    }
    async fn size_bytes(&self) -> Result<u64> {
        self.0.size_bytes().await
    }
}

impl Directory for FusedDirectory {
    async fn lookup(&self, table: &str, key: &Key) -> Result<Option<String>> {
        self.1.strike()?;
        self.0.lookup(table, key).await
    }
    async fn claim(&self, table: &str, key: &Key, shard: &str) -> Result<String> {
        self.1.strike()?;
        self.0.claim(table, key, shard).await
    }
    async fn claim_many(&self, table: &str, claims: &[(Key, String)]) -> Result<Vec<String>> {
        self.1.strike()?;
        self.0.claim_many(table, claims).await
    }
    async fn assign(&self, table: &str, key: &Key, shard: &str) -> Result<()> {
        self.1.strike()?;
        self.0.assign(table, key, shard).await
    }
    async fn remove(&self, table: &str, key: &Key) -> Result<()> {
        self.1.strike()?;
        self.0.remove(table, key).await
    }
    async fn replace(
        &self,
        table: &str,
        key: &Key,
        expected: &str,
        value: &str,
    ) -> Result<Option<String>> {
        self.1.strike()?;
        self.0.replace(table, key, expected, value).await
    }
    async fn replace_many(
        &self,
        table: &str,
        replacements: &[(Key, String, String)],
    ) -> Result<Vec<Option<String>>> {
        self.1.strike()?;
        self.0.replace_many(table, replacements).await
    }
    async fn remove_if(&self, table: &str, key: &Key, expected: &str) -> Result<()> {
        self.1.strike()?;
        self.0.remove_if(table, key, expected).await
    }
    async fn list(&self, table: &str, cursor: Option<&str>, limit: usize) -> Result<DirectoryPage> {
        self.1.strike()?;
        self.0.list(table, cursor, limit).await
    }
    async fn count(&self) -> Result<u64> {
        self.0.count().await
    }
    async fn clear(&self) -> Result<()> {
        self.0.clear().await
    }
}

impl Coordinator for FusedCoordinator {
    async fn next_ticket(&self, table: &str) -> Result<u64> {
        self.0.next_ticket(table).await
    }
    async fn load_map(&self) -> Result<Option<ShardMap>> {
        self.0.load_map().await
    }
    async fn store_map(&self, map: &ShardMap) -> Result<bool> {
        self.0.store_map(map).await
    }
    async fn load_job(&self, name: &str) -> Result<Option<String>> {
        self.0.load_job(name).await
    }
}

enum Fused {}

impl Backend for Fused {
    type Shard = FusedShard;
    type Directory = FusedDirectory;
    type Coordinator = FusedCoordinator;
}

/// A handle on the files of `dir` that dies after `calls` calls to the shards and directory,
/// and its fuse.
fn fused(dir: &std::path::Path, calls: usize) -> (CollegeDb<Fused>, Fuse) {
    let fuse = Fuse(Arc::new(AtomicUsize::new(calls)));
    let options = Default::default();
    let (directory, coordinator) = embedded::open_directory(dir, &options).unwrap();
    let mut config = Config::with_shard_names((0..SHARDS).map(|i| format!("s{i}")));
    config.unique_lease_ms = LEASE_MS;
    let shards = (0..SHARDS)
        .map(|i| {
            let name = format!("s{i}");
            let shard = SqliteShard::open(dir.join(format!("{name}.sqlite")), &name, &options);
            FusedShard(shard.unwrap(), fuse.clone())
        })
        .collect();
    let db = CollegeDb::from_parts(
        config,
        shards,
        FusedDirectory(directory, fuse.clone()),
        FusedCoordinator(coordinator),
    )
    .unwrap();
    (db, fuse)
}

/// A database where the scenario's first `done` writes have run.
fn prepared(done: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    block_on(Account::create_table(&db)).unwrap();
    for earlier in 0..done {
        block_on(step(&db, earlier)).unwrap();
    }
    dir
}

/// What the files must show after any crash: every row reachable through each of its unique
/// values (its entry names it), and no value held by two rows.
fn check_consistent(db: &CollegeDb<Embedded>, context: &str) {
    let rows = block_on(Account::query().all(db)).unwrap();
    let mut emails = std::collections::HashSet::new();
    for row in &rows {
        assert!(
            emails.insert(row.email.clone()),
            "{context}: two rows hold {}",
            row.email
        );
        assert_eq!(
            block_on(Account::find_by_email(db, row.email.as_str())).unwrap(),
            Some(row.clone()),
            "{context}: a row without its email entry"
        );
        assert_eq!(
            block_on(Account::find_by_handle(db, row.handle.as_str())).unwrap(),
            Some(row.clone()),
            "{context}: a row without its handle entry"
        );
    }
}

/// One write of the scenario, run on any handle.
async fn step<B: Backend>(db: &CollegeDb<B>, op: usize) -> Result<()> {
    match op {
        0 => Account::insert(db, &Account::new(1, "one@example.com")).await,
        1 => {
            let mut changed = Account::new(1, "uno@example.com");
            changed.handle = "uno".into();
            Account::update(db, &changed).await
        }
        2 => Account::upsert(db, &Account::new(2, "one@example.com")).await,
        3 => Account::delete(db, 1).await.map(drop),
        _ => Account::insert(db, &Account::new(3, "uno@example.com")).await,
    }
}

/// The state after the scenario's first `done` writes ran to completion.
fn expected_after(done: usize) -> Vec<Account> {
    let mut uno = Account::new(1, "uno@example.com");
    uno.handle = "uno".into();
    match done {
        0 => vec![],
        1 => vec![Account::new(1, "one@example.com")],
        2 => vec![uno],
        3 => vec![uno, Account::new(2, "one@example.com")],
        4 => vec![Account::new(2, "one@example.com")],
        _ => vec![
            Account::new(2, "one@example.com"),
            Account::new(3, "uno@example.com"),
        ],
    }
}

#[test]
fn a_crash_at_any_step_of_any_write_leaves_no_row_without_its_entry() {
    const STEPS: usize = 5;
    let mut crash_points = 0;
    for op in 0..STEPS {
        // How many calls the write makes when nothing fails, on a copy of the same state.
        let calls = {
            let probe = prepared(op);
            let (counting, fuse) = fused(probe.path(), usize::MAX);
            block_on(step(&counting, op)).unwrap();
            usize::MAX - fuse.0.load(Ordering::SeqCst)
        };
        assert!(calls >= 3, "op {op} makes {calls} calls");
        for crash_at in 0..calls {
            let dir = prepared(op);
            let (dying, _) = fused(dir.path(), crash_at);
            let error = block_on(step(&dying, op)).unwrap_err();
            assert!(
                error.to_string().contains("injected crash"),
                "op {op} at {crash_at}: {error}"
            );
            drop(dying);
            // A new process: the files must be consistent, and the write completes when run
            // again (after the lease, for a claim the crash left pending).
            let db = open(dir.path());
            let context = format!("op {op}, crash before call {crash_at} of {calls}");
            check_consistent(&db, &context);
            std::thread::sleep(std::time::Duration::from_millis(LEASE_MS + 20));
            // An insert whose row was written before the crash reports its key as taken.
            match block_on(step(&db, op)) {
                Ok(()) | Err(Error::DuplicateKey { .. }) => {}
                Err(e) => panic!("{context}: rerun failed: {e}"),
            }
            check_consistent(&db, &context);
            let mut rows = block_on(Account::query().all(&db)).unwrap();
            rows.sort_by_key(|a| a.id);
            assert_eq!(rows, expected_after(op + 1), "{context}");
            // The rest of the scenario runs on, and ends where an uninterrupted run ends.
            for later in op + 1..STEPS {
                block_on(step(&db, later)).unwrap_or_else(|e| panic!("{context}: op {later}: {e}"));
            }
            let mut rows = block_on(Account::query().all(&db)).unwrap();
            rows.sort_by_key(|a| a.id);
            assert_eq!(rows, expected_after(STEPS), "{context}");
            check_consistent(&db, &context);
            crash_points += 1;
        }
    }
    eprintln!("{crash_points} crash points over {STEPS} writes");
    assert!(crash_points >= 20, "only {crash_points} crash points");
}

/// `#[sharded(unique)]` on a colocated model: the entry names the whole row, `(author, n)`, so a
/// lookup needs neither the author nor a scan, and follows the author when it is reassigned.
#[test]
fn colocated_models_keep_unique_values_and_their_lookups_follow_the_parent() {
    use collegedb_tests::{Chapter, User};
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let chapter = |author: &str, n: i64, slug: &str| Chapter {
        author: author.into(),
        n,
        slug: slug.into(),
    };
    let slug_of = |db: &CollegeDb<Embedded>, slug: &str| -> Option<Chapter> {
        block_on(Chapter::find_by_slug(db, slug)).unwrap()
    };
    let refused = |result: Result<()>| {
        let error = result.unwrap_err();
        assert_eq!(error.code(), "DUPLICATE_KEY", "{error}");
        assert!(
            matches!(&error, Error::DuplicateValue { table, column } if table == "chapters" && column == "slug"),
            "{error:?}"
        );
    };
    block_on(async {
        User::create_table(&db).await?;
        Chapter::create_table(&db).await?;
        for author in ["ada", "bob", "cy", "dee", "eve", "fay"] {
            User::insert(&db, &User::new(author)).await?;
            Chapter::insert(&db, &chapter(author, 1, &format!("{author}-intro"))).await?;
        }
        Ok::<(), Error>(())
    })
    .unwrap();
    let homes: std::collections::BTreeSet<String> = ["ada", "bob", "cy", "dee", "eve", "fay"]
        .iter()
        .map(|a| block_on(Chapter::locate(&db, (*a, 1))).unwrap().unwrap())
        .collect();
    assert!(homes.len() > 1, "chapters on several shards: {homes:?}");
    assert_eq!(
        slug_of(&db, "bob-intro"),
        Some(chapter("bob", 1, "bob-intro"))
    );
    assert_eq!(slug_of(&db, "nobody"), None);
    // The entry names the row by its composite key.
    let text = block_on(db.directory().lookup(
        &collegedb::unique::scope("chapters", "slug"),
        &Key::Text("ada-intro".into()),
    ))
    .unwrap()
    .unwrap();
    assert!(text.ends_with(r#" c:["ada",1]"#), "{text}");

    // Taken by another author, or by another chapter of the same author: refused, nothing left.
    refused(block_on(Chapter::insert(
        &db,
        &chapter("cy", 2, "ada-intro"),
    )));
    refused(block_on(Chapter::insert(
        &db,
        &chapter("ada", 2, "ada-intro"),
    )));
    assert_eq!(block_on(Chapter::find(&db, ("cy", 2))).unwrap(), None);
    assert_eq!(block_on(Chapter::find(&db, ("ada", 2))).unwrap(), None);

    // A changed slug frees the old one; a delete frees the new one.
    block_on(Chapter::update(&db, &chapter("ada", 1, "ada-prologue"))).unwrap();
    assert_eq!(slug_of(&db, "ada-intro"), None);
    assert_eq!(
        slug_of(&db, "ada-prologue"),
        Some(chapter("ada", 1, "ada-prologue"))
    );
    refused(block_on(Chapter::upsert(
        &db,
        &chapter("bob", 1, "ada-prologue"),
    )));
    block_on(Chapter::insert(&db, &chapter("cy", 2, "ada-intro"))).unwrap();
    assert_eq!(
        slug_of(&db, "ada-intro"),
        Some(chapter("cy", 2, "ada-intro"))
    );
    assert!(block_on(Chapter::delete(&db, ("ada", 1))).unwrap());
    assert_eq!(slug_of(&db, "ada-prologue"), None);

    // insert_many claims and confirms in batches; two rows of one call with one slug are
    // refused before anything is written.
    let many: Vec<Chapter> = (10..30)
        .map(|n| chapter("dee", n, &format!("dee-{n}")))
        .collect();
    assert_eq!(block_on(Chapter::insert_many(&db, &many)).unwrap(), 20);
    assert_eq!(slug_of(&db, "dee-17"), Some(chapter("dee", 17, "dee-17")));
    let twice = [chapter("eve", 5, "same"), chapter("fay", 5, "same")];
    let error = block_on(Chapter::insert_many(&db, &twice)).unwrap_err();
    assert_eq!(error.code(), "DUPLICATE_KEY", "{error}");
    assert_eq!(slug_of(&db, "same"), None);

    // The author moves to another shard: the lookup follows, through a stale handle too.
    let stale = open(dir.path());
    assert_eq!(
        slug_of(&stale, "dee-12"),
        Some(chapter("dee", 12, "dee-12"))
    );
    let from = block_on(Chapter::locate(&db, ("dee", 12)))
        .unwrap()
        .unwrap();
    let to = ["s0", "s1", "s2"].into_iter().find(|s| *s != from).unwrap();
    block_on(db.reassign("users", "dee", to)).unwrap();
    assert_eq!(
        block_on(Chapter::locate(&db, ("dee", 12)))
            .unwrap()
            .as_deref(),
        Some(to)
    );
    assert_eq!(
        slug_of(&stale, "dee-12"),
        Some(chapter("dee", 12, "dee-12"))
    );
    assert_eq!(slug_of(&db, "dee-29"), Some(chapter("dee", 29, "dee-29")));

    // Backfill pages the composite key: every row's entry is there, none is reported twice.
    let report = block_on(collegedb::unique::backfill::<Chapter, _>(&db, 7)).unwrap();
    assert_eq!(report.rows, 6 - 1 + 1 + 20);
    assert!(report.duplicates.is_empty(), "{report:?}");
}

/// A colocated model's own key is unique within its parent only; `unique` on it makes it
/// unique over every parent, and finds the row by it alone.
#[derive(collegedb::Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "tickets", colocate = collegedb_tests::User)]
struct Ticket {
    #[sharded(shard_key)]
    holder: String,
    #[sharded(key, unique)]
    number: i64,
}

#[test]
fn a_colocated_models_own_key_can_be_unique_over_every_parent() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let ticket = |holder: &str, number| Ticket {
        holder: holder.into(),
        number,
    };
    block_on(async {
        collegedb_tests::User::create_table(&db).await?;
        Ticket::create_table(&db).await?;
        Ticket::insert(&db, &ticket("ada", 1)).await?;
        Ticket::insert(&db, &ticket("bob", 2)).await
    })
    .unwrap();
    let error = block_on(Ticket::insert(&db, &ticket("bob", 1))).unwrap_err();
    assert!(
        matches!(&error, Error::DuplicateValue { table, column } if table == "tickets" && column == "number"),
        "{error:?}"
    );
    assert_eq!(block_on(Ticket::find(&db, ("bob", 1))).unwrap(), None);
    assert_eq!(
        block_on(Ticket::find_by_number(&db, 1)).unwrap(),
        Some(ticket("ada", 1))
    );
    assert!(block_on(Ticket::delete(&db, ("ada", 1))).unwrap());
    block_on(Ticket::insert(&db, &ticket("bob", 1))).unwrap();
    assert_eq!(
        block_on(Ticket::find_by_number(&db, 1)).unwrap(),
        Some(ticket("bob", 1))
    );
}

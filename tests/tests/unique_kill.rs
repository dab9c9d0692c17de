//! Crash safety of unique lookups (`collegedb::unique`), shown by SIGKILL on real SQLite files.
//!
//! A child process (`unique-child`, see its module docs) runs a deterministic pseudo-random
//! sequence of `Account` writes (insert, update of the email and/or handle, upsert, delete) over
//! small pools of ids, emails and handles, so that taken values (`DUPLICATE_KEY`) and takeovers
//! of orphan entries happen often, and prints `op <n> ...` before and `ack <n> ...` after every
//! operation. The test kills it with SIGKILL and restarts it with the next seed on the same
//! folder, many times:
//!
//! * half of the kills stop the child after exactly `k` acknowledged operations (it blocks there
//!   until killed), for many different `k`;
//! * a quarter kill it a short, varying delay (0 to 0.6 ms, spun) after it announced operation
//!   `k`, and a quarter 0 to 0.3 ms after it announced the first operation from `k` on that the
//!   rows predict to write successfully (followed live from the acks), so that the kill lands
//!   inside an operation: before or after its claims, after its row write and before the
//!   confirmation, before the release, or inside a wait for a lease.
//!
//! Each kill point is recorded as (operations acknowledged, inside an operation or not), and the
//! default run must hit at least [`MIN_DISTINCT_POINTS`] distinct points, with at least three
//! kills inside an operation. For a kill inside an operation, the step it interrupted is judged from
//! the files (is the row write there, are its claims pending, are its old values released) and
//! reported. After every kill, and
//! after a final run that completes, the files are read with rusqlite only (not through
//! collegedb), and the test asserts:
//!
//! * no id is on two shards, and no email and no login value is held by two rows;
//! * every row has, for each unique column, a directory entry for its value (scope
//!   `accounts.email` / `accounts.login`) naming that row's id, pending or live: never a live row
//!   without its entry; every entry of those scopes is well formed;
//! * the files hold exactly the state predicted from the acknowledged operations of the run,
//!   starting from the files' state before it: each `ack` outcome (`ok`, `DUPLICATE_KEY`,
//!   `ROW_NOT_FOUND`) is the one the rows predict (so an orphan never blocks a free value, and
//!   a taken value is never accepted), and the operation in flight at the kill, if any, is either
//!   fully applied or not at all;
//! * through a fresh collegedb handle: `find`, `find_by_email` and `find_by_handle` return every
//!   row, and every other value seen (orphan entries included) finds nothing.
//!
//! Orphan entries (whose owner row does not hold the value) are allowed; they are counted and
//! reported. So are the operations that waited out a lease (took at least [`LEASE_MS`]): in the
//! final run, those that started long after its start cannot be waiting on a claim of a killed
//! run, so there must be none (a failed write removes the claims it made); each would be shown
//! with the last failed (`DUPLICATE_KEY`) write of one of its values by another id before it.
//! Run with `--nocapture` to see the report.
//!
//! `COLLEGEDB_KILL_UNIQUE_TRIALS` sets the number of kills (default 25, well under a minute).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use collegedb::Key;
use collegedb_tests::{open_with, Account};
use pollster::block_on;

/// The child's shards.
const SHARDS: usize = 3;
/// The child's unique lease (`LEASE_MS` of `unique-child`), in milliseconds.
const LEASE_MS: u64 = 150;
/// The directory scopes of the two unique columns.
const EMAIL_SCOPE: &str = "accounts.email";
const LOGIN_SCOPE: &str = "accounts.login";
/// How long the test waits for a line from the child.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Operations of the final, uninterrupted run.
const FINAL_OPS: u64 = 300;
/// Distinct kill points the default run must hit.
const MIN_DISTINCT_POINTS: usize = 15;

/// Kills: `COLLEGEDB_KILL_UNIQUE_TRIALS` overrides the quick default.
fn trials() -> u64 {
    std::env::var("COLLEGEDB_KILL_UNIQUE_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------------------
// Rows and operations.

/// The non-key columns of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    email: String,
    handle: String,
    name: String,
}

/// Rows by id.
type Rows = BTreeMap<i64, Row>;

fn account(id: i64, row: &Row) -> Account {
    Account {
        id,
        email: row.email.clone(),
        handle: row.handle.clone(),
        name: row.name.clone(),
    }
}

/// An operation as the child announces it.
#[derive(Debug, Clone)]
enum Op {
    Insert(i64, Row),
    Update(i64, Row),
    Upsert(i64, Row),
    Delete(i64),
}

impl Op {
    /// Parses the words after `op <n>`.
    fn parse(words: &[&str]) -> Op {
        let id = |w: &str| {
            w.parse::<i64>()
                .unwrap_or_else(|_| panic!("bad id in {words:?}"))
        };
        let row = || match words {
            [_, _, email, handle, name] => Row {
                email: email.to_string(),
                handle: handle.to_string(),
                name: name.to_string(),
            },
            _ => panic!("bad row in {words:?}"),
        };
        match words {
            ["insert", i, ..] => Op::Insert(id(i), row()),
            ["update", i, ..] => Op::Update(id(i), row()),
            ["upsert", i, ..] => Op::Upsert(id(i), row()),
            ["delete", i] => Op::Delete(id(i)),
            _ => panic!("unknown operation {words:?}"),
        }
    }

    fn id(&self) -> i64 {
        match self {
            Op::Insert(id, _) | Op::Update(id, _) | Op::Upsert(id, _) | Op::Delete(id) => *id,
        }
    }

    /// The row written, for all but a delete.
    fn row(&self) -> Option<&Row> {
        match self {
            Op::Insert(_, row) | Op::Update(_, row) | Op::Upsert(_, row) => Some(row),
            Op::Delete(_) => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Op::Insert(..) => "insert",
            Op::Update(..) => "update",
            Op::Upsert(..) => "upsert",
            Op::Delete(..) => "delete",
        }
    }
}

/// The outcome the rows predict: `Ok` or the error code.
fn predict(rows: &Rows, op: &Op) -> Result<(), &'static str> {
    let taken = |id: i64, row: &Row| {
        rows.iter()
            .any(|(other, r)| *other != id && (r.email == row.email || r.handle == row.handle))
    };
    match op {
        Op::Insert(id, row) if rows.contains_key(id) || taken(*id, row) => Err("DUPLICATE_KEY"),
        Op::Update(id, _) if !rows.contains_key(id) => Err("ROW_NOT_FOUND"),
        Op::Update(id, row) | Op::Upsert(id, row) if taken(*id, row) => Err("DUPLICATE_KEY"),
        _ => Ok(()),
    }
}

/// Applies a successful operation.
fn apply(rows: &mut Rows, op: &Op) {
    match op {
        Op::Insert(id, row) | Op::Update(id, row) | Op::Upsert(id, row) => {
            rows.insert(*id, row.clone());
        }
        Op::Delete(id) => {
            rows.remove(id);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The files, read with rusqlite only.

/// A lookup entry: the owner's id, and when it was claimed while pending.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    owner: i64,
    pending_since: Option<u64>,
}

/// `live#<tag> i:<id>` or `pending@<ms>#<tag> i:<id>`, the tag in hex.
fn parse_entry(text: &str) -> Option<Entry> {
    let (state, owner) = text.split_once(' ')?;
    let owner = owner.strip_prefix("i:")?.parse().ok()?;
    let (state, tag) = state.split_once('#')?;
    u64::from_str_radix(tag, 16).ok()?;
    let pending_since = match state {
        "live" => None,
        _ => Some(state.strip_prefix("pending@")?.parse().ok()?),
    };
    Some(Entry {
        owner,
        pending_since,
    })
}

/// What the files hold: the rows, and the entries of the two unique scopes by (scope, value).
#[derive(Debug, Default)]
struct Files {
    rows: Rows,
    entries: BTreeMap<(&'static str, String), Entry>,
}

fn read_files(dir: &Path, context: &str) -> Files {
    let mut files = Files::default();
    for i in 0..SHARDS {
        let path = dir.join(format!("s{i}.sqlite"));
        if !path.exists() {
            continue;
        }
        let conn = rusqlite::Connection::open(&path).expect("open shard file");
        let exists: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'accounts')",
                [],
                |r| r.get(0),
            )
            .expect("read schema");
        if !exists {
            continue;
        }
        let mut stmt = conn
            .prepare("SELECT id, email, login, name FROM accounts")
            .expect("prepare");
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    Row {
                        email: r.get(1)?,
                        handle: r.get(2)?,
                        name: r.get(3)?,
                    },
                ))
            })
            .expect("query");
        for row in rows {
            let (id, row) = row.expect("row");
            assert!(
                files.rows.insert(id, row).is_none(),
                "{context}: id {id} is on two shards (again on s{i})"
            );
        }
    }
    let path = dir.join("_directory.db");
    if path.exists() {
        let conn = rusqlite::Connection::open(&path).expect("open directory file");
        let mut stmt = conn
            .prepare("SELECT scope, key, shard FROM directory WHERE scope IN (?1, ?2)")
            .expect("prepare");
        let entries = stmt
            .query_map([EMAIL_SCOPE, LOGIN_SCOPE], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .expect("query");
        for entry in entries {
            let (scope, key, text) = entry.expect("entry");
            let scope = if scope == EMAIL_SCOPE {
                EMAIL_SCOPE
            } else {
                LOGIN_SCOPE
            };
            let value = match key.split_first() {
                Some((b's', rest)) => String::from_utf8(rest.to_vec()).expect("utf-8 value"),
                _ => panic!("{context}: {scope} entry with a non-text key {key:?}"),
            };
            assert_eq!(
                Key::Text(value.clone()).directory_bytes(),
                key,
                "{context}: key bytes of {value:?}"
            );
            let parsed = parse_entry(&text)
                .unwrap_or_else(|| panic!("{context}: malformed entry {text:?} in {scope}"));
            files.entries.insert((scope, value), parsed);
        }
    }
    files
}

/// The orphans and pending entries the files hold.
#[derive(Debug, Default, Clone, Copy)]
struct EntryCounts {
    /// Live entries whose owner row does not hold the value.
    live_orphans: usize,
    /// Pending entries whose owner row does not hold the value.
    pending_orphans: usize,
    /// Pending entries whose owner row holds the value (they count as live).
    pending_held: usize,
}

/// The invariants of the files; returns the entry counts.
fn check_invariants(files: &Files, context: &str) -> EntryCounts {
    let mut emails: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut logins: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (id, row) in &files.rows {
        emails.entry(&row.email).or_default().push(*id);
        logins.entry(&row.handle).or_default().push(*id);
    }
    for (column, held) in [("email", &emails), ("login", &logins)] {
        let twice: Vec<_> = held.iter().filter(|(_, ids)| ids.len() > 1).collect();
        assert!(
            twice.is_empty(),
            "{context}: {column} values held by two rows: {twice:?}"
        );
    }
    for (id, row) in &files.rows {
        for (scope, value) in [(EMAIL_SCOPE, &row.email), (LOGIN_SCOPE, &row.handle)] {
            let entry = files.entries.get(&(scope, value.clone()));
            assert!(
                entry.is_some_and(|e| e.owner == *id),
                "{context}: row {id} holds {scope} {value:?}, but its entry is {entry:?}: a \
                 live row without its entry"
            );
        }
    }
    let mut counts = EntryCounts::default();
    for ((scope, value), entry) in &files.entries {
        let held = files.rows.get(&entry.owner).is_some_and(|row| {
            if *scope == EMAIL_SCOPE {
                row.email == *value
            } else {
                row.handle == *value
            }
        });
        match (held, entry.pending_since.is_some()) {
            (true, true) => counts.pending_held += 1,
            (true, false) => {}
            (false, true) => counts.pending_orphans += 1,
            (false, false) => counts.live_orphans += 1,
        }
    }
    counts
}

/// Through a fresh collegedb handle: every row is found by key, email and handle; every other
/// value in `probes` (emails and handles) finds nothing.
fn check_lookups(
    dir: &Path,
    rows: &Rows,
    probes: &BTreeSet<(&'static str, String)>,
    context: &str,
) {
    let db = open_with(dir, SHARDS, |mut config| {
        config.unique_lease_ms = LEASE_MS;
        config
    });
    for (id, row) in rows {
        let expected = Some(account(*id, row));
        assert_eq!(
            block_on(Account::find(&db, *id)).unwrap(),
            expected,
            "{context}: find({id})"
        );
        assert_eq!(
            block_on(Account::find_by_email(&db, row.email.as_str())).unwrap(),
            expected,
            "{context}: find_by_email({:?})",
            row.email
        );
        assert_eq!(
            block_on(Account::find_by_handle(&db, row.handle.as_str())).unwrap(),
            expected,
            "{context}: find_by_handle({:?})",
            row.handle
        );
    }
    for (scope, value) in probes {
        let held = rows.values().any(|row| {
            if *scope == EMAIL_SCOPE {
                row.email == *value
            } else {
                row.handle == *value
            }
        });
        if held {
            continue;
        }
        let found = if *scope == EMAIL_SCOPE {
            block_on(Account::find_by_email(&db, value.as_str())).unwrap()
        } else {
            block_on(Account::find_by_handle(&db, value.as_str())).unwrap()
        };
        assert_eq!(
            found, None,
            "{context}: {scope} {value:?} is held by no row"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The child.

/// Where a run of the child ends.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGKILL while it blocks after this many acknowledged operations.
    Pause(u64),
    /// SIGKILL this many microseconds after it announced operation `op` or, with `write`, the
    /// first operation from `op` on that the rows predict to succeed and write (not a delete).
    Delay { op: u64, micros: u64, write: bool },
    /// Run to the end.
    End,
}

/// A running `unique-child`: killed with SIGKILL and reaped when dropped, also when an
/// assertion fails, so no child outlives the test.
struct ChildProcess {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
}

impl ChildProcess {
    fn spawn(dir: &Path, seed: u64, ops: u64, pause: Option<u64>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_unique-child"));
        command.arg(dir).arg(seed.to_string()).arg(ops.to_string());
        if let Some(k) = pause {
            command.arg(k.to_string());
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("spawn unique-child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        ChildProcess {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `until`; panics if the child stops printing first.
    fn read_until(&mut self, mut until: impl FnMut(&str) -> bool) {
        loop {
            let (at, line) = self.lines.recv_timeout(TIMEOUT).unwrap_or_else(|e| {
                panic!(
                    "unique-child printed nothing more ({e}); last lines {:?}",
                    &self.seen[self.seen.len().saturating_sub(5)..]
                )
            });
            let done = until(&line);
            self.seen.push((at, line));
            if done {
                return;
            }
        }
    }

    /// Every remaining line, up to the end of the child's stdout.
    fn drain(&mut self) {
        loop {
            match self.lines.recv_timeout(TIMEOUT) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("unique-child stdout stays open"),
            }
        }
    }

    /// SIGKILL, reap, and return every line printed.
    fn kill(mut self) -> Vec<(Instant, String)> {
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("reap");
        assert!(!status.success(), "the child ended by itself: {status}");
        self.drain();
        std::mem::take(&mut self.seen)
    }

    /// Waits for the child to finish by itself and returns every line printed.
    fn finish(mut self) -> Vec<(Instant, String)> {
        self.drain();
        let status = self.child.wait().expect("reap");
        assert!(status.success(), "unique-child failed: {status}");
        std::mem::take(&mut self.seen)
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the child on `dir`, whose files hold `before`, with `seed` until `stop`; returns its
/// lines and when it started (ms since the epoch).
fn run_child(dir: &Path, before: &Rows, seed: u64, stop: Stop) -> (Vec<(Instant, String)>, u64) {
    let start_ms = now_ms();
    let lines = match stop {
        Stop::Pause(k) => {
            let mut child = ChildProcess::spawn(dir, seed, k + 1000, Some(k));
            let paused = format!("paused {k}");
            child.read_until(|line| line == paused);
            child.kill()
        }
        Stop::Delay { op, micros, write } => {
            let mut child = ChildProcess::spawn(dir, seed, op + 1000, None);
            // Follows the rows as the acks come, to see which operation will write.
            let mut rows = before.clone();
            let mut pending: Option<Op> = None;
            child.read_until(|line| {
                let words: Vec<&str> = line.split(' ').collect();
                match words.as_slice() {
                    ["op", n, rest @ ..] => {
                        let current = Op::parse(rest);
                        let writes = predict(&rows, &current).is_ok() && current.row().is_some();
                        pending = Some(current);
                        n.parse::<u64>().is_ok_and(|n| n >= op) && (writes || !write)
                    }
                    ["ack", _, "ok"] => {
                        apply(&mut rows, &pending.take().expect("an announced operation"));
                        false
                    }
                    _ => false,
                }
            });
            // Spin rather than sleep: the delays are shorter than a sleep's granularity.
            let until = Instant::now() + Duration::from_micros(micros);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            child.kill()
        }
        Stop::End => ChildProcess::spawn(dir, seed, FINAL_OPS, None).finish(),
    };
    (lines, start_ms)
}

// ---------------------------------------------------------------------------------------------
// Replaying a run.

/// An operation that took at least the lease.
#[derive(Debug)]
struct Slow {
    n: u64,
    op: Op,
    ms: u128,
    /// Milliseconds from the start of the run to the operation's announcement.
    after_start_ms: u128,
}

/// What a run's lines say, checked against the rows predicted from `before`.
#[derive(Debug)]
struct Replay {
    /// The rows after every acknowledged operation.
    rows: Rows,
    /// Operations acknowledged.
    acked: u64,
    /// The operation announced and not acknowledged, with its predicted outcome.
    in_flight: Option<(Op, Result<(), &'static str>)>,
    /// Acknowledged outcomes: `ok` or the error code, counted.
    outcomes: BTreeMap<String, usize>,
    /// Every operation, in order, with its acknowledged outcome if any.
    ops: Vec<(Op, Option<Result<(), String>>)>,
    slow: Vec<Slow>,
    /// The last line: `paused <k>`, `done <n>`, or the last `op`/`ack` line.
    last: String,
}

fn replay(
    lines: &[(Instant, String)],
    before: &Rows,
    probes: &mut BTreeSet<(&'static str, String)>,
    context: &str,
) -> Replay {
    let mut replay = Replay {
        rows: before.clone(),
        acked: 0,
        in_flight: None,
        outcomes: BTreeMap::new(),
        ops: Vec::new(),
        slow: Vec::new(),
        last: String::new(),
    };
    let start = lines.first().map(|(at, _)| *at);
    let mut announced: Option<(Instant, Op)> = None;
    for (at, line) in lines {
        let words: Vec<&str> = line.split(' ').collect();
        replay.last = line.clone();
        match words.as_slice() {
            ["op", n, rest @ ..] => {
                assert!(
                    announced.is_none(),
                    "{context}: `{line}` before the previous operation's ack"
                );
                assert_eq!(
                    n.parse::<u64>().ok(),
                    Some(replay.acked),
                    "{context}: operations out of order at `{line}`"
                );
                let op = Op::parse(rest);
                if let Some(row) = op.row() {
                    probes.insert((EMAIL_SCOPE, row.email.clone()));
                    probes.insert((LOGIN_SCOPE, row.handle.clone()));
                }
                announced = Some((*at, op));
            }
            ["ack", n, outcome @ ..] => {
                let (since, op) = announced
                    .take()
                    .unwrap_or_else(|| panic!("{context}: `{line}` without an operation"));
                assert_eq!(
                    n.parse::<u64>().ok(),
                    Some(replay.acked),
                    "{context}: `{line}` acknowledges another operation"
                );
                let actual = match outcome {
                    ["ok"] => Ok(()),
                    ["err", code] => Err(code.to_string()),
                    _ => panic!("{context}: malformed `{line}`"),
                };
                let predicted = predict(&replay.rows, &op);
                assert_eq!(
                    actual.as_ref().map(|_| ()).map_err(String::as_str),
                    predicted,
                    "{context}: operation {n} ({op:?}) on rows {:?}",
                    replay.rows
                );
                if actual.is_ok() {
                    apply(&mut replay.rows, &op);
                }
                *replay
                    .outcomes
                    .entry(match &actual {
                        Ok(()) => "ok".to_owned(),
                        Err(code) => code.clone(),
                    })
                    .or_default() += 1;
                let ms = at.duration_since(since).as_millis();
                if ms >= LEASE_MS as u128 {
                    replay.slow.push(Slow {
                        n: replay.acked,
                        op: op.clone(),
                        ms,
                        after_start_ms: since.duration_since(start.unwrap()).as_millis(),
                    });
                }
                replay.ops.push((op, Some(actual)));
                replay.acked += 1;
            }
            ["paused", k] => assert_eq!(
                k.parse::<u64>().ok(),
                Some(replay.acked),
                "{context}: paused after another count"
            ),
            ["done", n] => assert_eq!(
                n.parse::<u64>().ok(),
                Some(replay.acked),
                "{context}: done after another count"
            ),
            _ => panic!("{context}: unexpected line `{line}`"),
        }
    }
    if let Some((_, op)) = announced {
        let predicted = predict(&replay.rows, &op);
        replay.ops.push((op.clone(), None));
        replay.in_flight = Some((op, predicted));
    }
    replay
}

/// Where inside the operation in flight the kill landed, judged from the files: `applied` says
/// whether its row write is in them; claims are the pending entries naming its id stamped since
/// the run started.
fn phase(op: &Op, before: &Rows, files: &Files, applied: bool, start_ms: u64) -> String {
    let id = op.id();
    let old = before.get(&id);
    let values = |row: &Row| {
        [
            (EMAIL_SCOPE, row.email.clone()),
            (LOGIN_SCOPE, row.handle.clone()),
        ]
    };
    let fresh_claim = |key: &(&'static str, String)| {
        files.entries.get(key).is_some_and(|e| {
            e.owner == id && e.pending_since.is_some_and(|since| since + 5 >= start_ms)
        })
    };
    let new: Vec<_> = op.row().map(|row| values(row).to_vec()).unwrap_or_default();
    let gone: Vec<_> = old
        .map(|row| values(row).to_vec())
        .unwrap_or_default()
        .into_iter()
        .filter(|v| !new.contains(v))
        .collect();
    let claims = new.iter().filter(|v| fresh_claim(v)).count();
    // New values whose entry is another id's pending claim that its row does not hold: the
    // operation waits out its lease (or is about to take it over).
    let blocked = new
        .iter()
        .filter(|(scope, value)| {
            files
                .entries
                .get(&(*scope, value.clone()))
                .is_some_and(|e| {
                    e.owner != id
                        && e.pending_since.is_some()
                        && !before.get(&e.owner).is_some_and(|r| {
                            if *scope == EMAIL_SCOPE {
                                r.email == *value
                            } else {
                                r.handle == *value
                            }
                        })
                })
        })
        .count();
    let unreleased = gone
        .iter()
        .filter(|v| files.entries.get(*v).is_some_and(|e| e.owner == id))
        .count();
    let kind = op.kind();
    let at = match (op, applied) {
        (Op::Delete(_), false) => "row not deleted".to_owned(),
        (Op::Delete(_), true) if unreleased > 0 => "row deleted, values not released".to_owned(),
        (_, false) if claims == 0 && blocked > 0 => {
            "nothing claimed, blocked by another id's pending claim".to_owned()
        }
        (_, false) if claims == 0 => "nothing claimed yet".to_owned(),
        (_, false) => format!("{claims} claimed, row not written"),
        (_, true) if claims > 0 => "row written, claim not confirmed".to_owned(),
        (_, true) if unreleased > 0 => "confirmed, old values not released".to_owned(),
        (_, true) => "complete, not acknowledged".to_owned(),
    };
    format!("{kind}: {at}")
}

// ---------------------------------------------------------------------------------------------
// The test.

/// SIGKILL the child at many distinct points, restarting it with the next seed each time, then
/// run it to the end: after every kill and at the end, the invariants of the module docs hold.
#[test]
fn unique_lookups_survive_sigkill_at_any_point() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let trials = trials();
    let mut probes: BTreeSet<(&'static str, String)> = BTreeSet::new();
    let mut rows = Rows::new();
    let mut points: BTreeSet<(u64, bool)> = BTreeSet::new();
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    let mut inside = 0;
    let mut applied_in_flight = 0;
    let mut max_orphans = EntryCounts::default();
    let mut total_slow = 0;

    for trial in 0..trials {
        let seed = trial + 1;
        let k = (trial * 11) % 61;
        // Even trials pause after `k` acks; odd ones alternate between any operation from `k` on
        // (0 to 0.6 ms after its announcement) and the first one that will write (0 to 0.3 ms).
        let stop = match trial % 4 {
            0 | 2 => Stop::Pause(k),
            1 => Stop::Delay {
                op: k,
                micros: (trial * 97) % 600,
                write: false,
            },
            _ => Stop::Delay {
                op: k,
                micros: (trial * 37) % 300,
                write: true,
            },
        };
        let context = format!("kill {trial} (seed {seed}, {stop:?})");
        let (lines, start_ms) = run_child(dir, &rows, seed, stop);
        let run = replay(&lines, &rows, &mut probes, &context);
        let files = read_files(dir, &context);
        let counts = check_invariants(&files, &context);
        for (scope, value) in files.entries.keys() {
            probes.insert((scope, value.clone()));
        }

        // The files hold the acknowledged state, with the operation in flight applied or not.
        let mut applied = false;
        if files.rows != run.rows {
            let (op, predicted) = run.in_flight.as_ref().unwrap_or_else(|| {
                panic!(
                    "{context}: the files hold {:?}, the acknowledged operations {:?}",
                    files.rows, run.rows
                )
            });
            let mut after = run.rows.clone();
            if predicted.is_ok() {
                apply(&mut after, op);
            }
            assert_eq!(
                files.rows, after,
                "{context}: the files hold neither the state before the operation in flight \
                 ({op:?}, predicted {predicted:?}) nor after it; before: {:?}",
                run.rows
            );
            applied = true;
            applied_in_flight += 1;
        }
        if let Stop::Pause(k) = stop {
            assert!(
                run.in_flight.is_none() && run.acked == k && run.last == format!("paused {k}"),
                "{context}: the child did not pause after {k} operations: {:?}",
                run.last
            );
        }
        let point = (run.acked, run.in_flight.is_some());
        points.insert(point);
        let at = match &run.in_flight {
            Some((op, _)) => {
                inside += 1;
                let at = phase(op, &run.rows, &files, applied, start_ms);
                *phases.entry(at.clone()).or_default() += 1;
                at
            }
            None => "between operations".to_owned(),
        };
        check_lookups(dir, &files.rows, &probes, &context);

        max_orphans.live_orphans = max_orphans.live_orphans.max(counts.live_orphans);
        max_orphans.pending_orphans = max_orphans.pending_orphans.max(counts.pending_orphans);
        total_slow += run.slow.len();
        eprintln!(
            "{context}: after {} acks, {at}; {} rows; orphans live {} pending {}, pending held {}; \
             outcomes {:?}; {} ops waited a lease",
            run.acked,
            files.rows.len(),
            counts.live_orphans,
            counts.pending_orphans,
            counts.pending_held,
            run.outcomes,
            run.slow.len()
        );
        rows = files.rows;
    }

    // A final run that completes: the files hold exactly the acknowledged state.
    let seed = trials + 1;
    let context = format!("final run (seed {seed})");
    let (lines, _) = run_child(dir, &rows, seed, Stop::End);
    let run = replay(&lines, &rows, &mut probes, &context);
    assert!(
        run.in_flight.is_none()
            && run.acked == FINAL_OPS
            && run.last == format!("done {FINAL_OPS}"),
        "{context}: did not complete: {:?}",
        run.last
    );
    let files = read_files(dir, &context);
    let counts = check_invariants(&files, &context);
    assert_eq!(
        files.rows, run.rows,
        "{context}: the files differ from the acknowledged state"
    );
    for (scope, value) in files.entries.keys() {
        probes.insert((scope, value.clone()));
    }
    check_lookups(dir, &files.rows, &probes, &context);
    assert!(
        run.outcomes.get("ok").is_some_and(|&n| n > 0)
            && run.outcomes.get("DUPLICATE_KEY").is_some_and(|&n| n > 0),
        "{context}: the workload should both succeed and collide: {:?}",
        run.outcomes
    );

    // Waits out of the lease in the final run, long after its start: no killed run's claim can
    // be younger than the lease by then, so a write of this run that failed left its claim
    // pending.
    let late: Vec<&Slow> = run
        .slow
        .iter()
        .filter(|s| s.after_start_ms > 2 * LEASE_MS as u128)
        .collect();
    for slow in late.iter().take(3) {
        let value = slow.op.row().map(|r| (r.email.clone(), r.handle.clone()));
        let cause =
            run.ops[..slow.n as usize]
                .iter()
                .enumerate()
                .rev()
                .find(|(_, (op, outcome))| {
                    op.id() != slow.op.id()
                        && matches!(outcome, Some(Err(code)) if code == "DUPLICATE_KEY")
                        && op
                            .row()
                            .zip(value.as_ref())
                            .is_some_and(|(r, (email, handle))| {
                                r.email == *email || r.handle == *handle
                            })
                });
        eprintln!(
            "{context}: op {} {:?} took {} ms; last failed write of one of its values before it: {:?}",
            slow.n, slow.op, slow.ms, cause
        );
    }
    eprintln!(
        "{context}: {} rows; orphans live {} pending {}, pending held {}; outcomes {:?}; {} ops \
         waited a lease, {} of them more than {} ms after the start",
        files.rows.len(),
        counts.live_orphans,
        counts.pending_orphans,
        counts.pending_held,
        run.outcomes,
        run.slow.len(),
        late.len(),
        2 * LEASE_MS
    );
    // A write that fails before writing its row removes its claims, so in a run that no kill
    // interrupts no operation waits out a lease once the killed runs' claims have expired.
    assert!(
        late.is_empty(),
        "{context}: {} operations waited out a lease left by a failed write",
        late.len()
    );
    total_slow += run.slow.len();

    eprintln!(
        "{trials} kills, {} distinct points {:?}; {inside} inside an operation ({applied_in_flight} \
         with its row write in the files): {phases:?}; most orphans after a kill: live {} pending \
         {}; {total_slow} ops waited a lease; {:.1} s",
        points.len(),
        points,
        max_orphans.live_orphans,
        max_orphans.pending_orphans,
        started.elapsed().as_secs_f64()
    );
    let wanted = MIN_DISTINCT_POINTS.min((trials as usize * 3) / 5);
    assert!(
        points.len() >= wanted,
        "only {} distinct kill points (want {wanted}): {points:?}",
        points.len()
    );
    let wanted_inside = 3.min(trials as usize / 4);
    assert!(
        inside >= wanted_inside,
        "only {inside} kills landed inside an operation (want {wanted_inside})"
    );
}

/// Asserts that `check` panics: the checks of the kill test can fail.
fn caught(what: &str, check: impl FnOnce()) {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
    assert!(result.is_err(), "{what}: the check passed");
}

/// The checks of the kill test fail on broken files and on wrong acknowledgements: an entry
/// naming another id or missing, a value held by two rows, an id on two shards, a taken value
/// acknowledged, a free value refused. (Their panic messages are expected in the output.)
#[test]
fn the_checks_catch_broken_files_and_wrong_acks() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (lines, _) = run_child(dir, &Rows::new(), 7, Stop::End);
    let mut probes = BTreeSet::new();
    let run = replay(&lines, &Rows::new(), &mut probes, "setup");
    let files = read_files(dir, "setup");
    check_invariants(&files, "setup");
    assert_eq!(files.rows, run.rows, "setup");
    check_lookups(dir, &files.rows, &probes, "setup");
    let (id, row) = files
        .rows
        .iter()
        .next()
        .map(|(id, row)| (*id, row.clone()))
        .expect("the run leaves rows");

    // The entry of a row's email names another id, then is missing.
    let directory = rusqlite::Connection::open(dir.join("_directory.db")).unwrap();
    let key = Key::Text(row.email.clone()).directory_bytes();
    let set = |text: &str| {
        directory
            .execute(
                "UPDATE directory SET shard = ?3 WHERE scope = ?1 AND key = ?2",
                (EMAIL_SCOPE, &key, text),
            )
            .unwrap()
    };
    assert_eq!(set(&format!("live#1 i:{}", id + 1000)), 1);
    caught("an entry naming another id", || {
        check_invariants(&read_files(dir, "broken"), "broken");
    });
    caught("a lookup through an entry naming another id", || {
        check_lookups(dir, &files.rows, &probes, "broken")
    });
    assert_eq!(set("live#1 x:1"), 1);
    caught("a malformed entry", || {
        read_files(dir, "broken");
    });
    directory
        .execute(
            "DELETE FROM directory WHERE scope = ?1 AND key = ?2",
            (EMAIL_SCOPE, &key),
        )
        .unwrap();
    caught("a missing entry", || {
        check_invariants(&read_files(dir, "broken"), "broken");
    });
    directory
        .execute(
            "INSERT INTO directory (scope, key, shard) VALUES (?1, ?2, ?3)",
            (EMAIL_SCOPE, &key, format!("pending@1#2 i:{id}")),
        )
        .unwrap();
    check_invariants(&read_files(dir, "repaired"), "repaired");

    // A second row with the email, then an id on two shards.
    let shard_of = |id: i64| {
        (0..SHARDS)
            .find(|i| {
                rusqlite::Connection::open(dir.join(format!("s{i}.sqlite")))
                    .unwrap()
                    .query_row("SELECT COUNT(*) FROM accounts WHERE id = ?1", [id], |r| {
                        r.get::<_, i64>(0)
                    })
                    .unwrap()
                    > 0
            })
            .expect("the row's shard")
    };
    let other =
        rusqlite::Connection::open(dir.join(format!("s{}.sqlite", (shard_of(id) + 1) % SHARDS)))
            .unwrap();
    other
        .execute(
            "INSERT INTO accounts (id, email, login, name) VALUES (?1, ?2, 'unheld', 'x')",
            (id + 1000, &row.email),
        )
        .unwrap();
    caught("a value held by two rows", || {
        check_invariants(&read_files(dir, "broken"), "broken");
    });
    other
        .execute(
            "UPDATE accounts SET id = ?1, email = 'unheld' WHERE id = ?2",
            (id, id + 1000),
        )
        .unwrap();
    caught("an id on two shards", || {
        read_files(dir, "broken");
    });

    // Acknowledgements that the rows do not predict.
    let at = Instant::now();
    let lines = |text: &[&str]| -> Vec<(Instant, String)> {
        text.iter().map(|line| (at, line.to_string())).collect()
    };
    let mut probes = BTreeSet::new();
    replay(
        &lines(&[
            "op 0 insert 1 a h1 n",
            "ack 0 ok",
            "op 1 upsert 2 b h2 n",
            "ack 1 ok",
        ]),
        &Rows::new(),
        &mut probes,
        "valid",
    );
    caught("a taken value acknowledged", || {
        replay(
            &lines(&[
                "op 0 insert 1 a h1 n",
                "ack 0 ok",
                "op 1 insert 2 a h2 n",
                "ack 1 ok",
            ]),
            &Rows::new(),
            &mut BTreeSet::new(),
            "broken",
        );
    });
    caught("a free value refused", || {
        replay(
            &lines(&[
                "op 0 insert 1 a h1 n",
                "ack 0 ok",
                "op 1 update 1 b h1 n",
                "ack 1 err DUPLICATE_KEY",
            ]),
            &Rows::new(),
            &mut BTreeSet::new(),
            "broken",
        );
    });
}

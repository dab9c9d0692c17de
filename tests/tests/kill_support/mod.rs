//! Shared by the crash tests of growth (`growth_kill.rs`, `colocate_kill.rs`): the `growth-child`
//! process and how it is driven and killed, the SQLite files read with rusqlite only, plans of
//! where to kill, and the driver that runs a growth operation with the kills of a plan.
//!
//! A test file describes its deployment through [`Deployed`] (what its files must hold, the
//! checks while the child is blocked and after the operation); [`grow_with_kills`] does the
//! rest: an uninterrupted run on a copy to choose the steps from, the kills (each followed by
//! the check that no row is lost), the resume to the end, and a second run that changes nothing.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use collegedb::growth::Job;
use collegedb::slots::ShardMap;
use collegedb::{CollegeDb, Embedded};
use rusqlite::types::Value as SqlValue;
use rusqlite::OptionalExtension;

/// How long a test waits for a line from the child, or for it to finish.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The phases of a transfer in their order, as the child names them (`growth::Phase`; `Done`
/// also once every transfer finished).
pub const PHASES: [&str; 8] = [
    "Prepare",
    "Copy",
    "CatchUp",
    "Freeze",
    "FinalCatchUp",
    "Switch",
    "Delete",
    "Done",
];

/// The position of `phase` in [`PHASES`]; panics on an unknown name.
pub fn phase_index(phase: &str) -> usize {
    PHASES
        .iter()
        .position(|p| *p == phase)
        .unwrap_or_else(|| panic!("unknown phase {phase}"))
}

/// The size of a test's deployment: the number in environment variable `var`, else `default`.
pub fn env_rows(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Shows at most a few items of a list in a failure message.
pub fn few<T: Debug>(items: &[T]) -> String {
    format!("{} e.g. {:?}", items.len(), &items[..items.len().min(5)])
}

// ---------------------------------------------------------------------------------------------
// The files, read with rusqlite only.

/// A row as a shard file stores it: `(column, value)` in table order.
pub type FileRow = Vec<(String, SqlValue)>;

/// The copies of each row of a table in the files, by the row's identity: `(shard, row)`.
pub type Held<K> = BTreeMap<K, Vec<(String, FileRow)>>;

/// Every row of `table` in the files of `shards` (those that exist and have the table), read
/// with rusqlite: `(identity, shard, row)`, the identity being the values of the columns `keys`
/// as text, and the row every column of the table (`keys` included).
pub fn file_rows(
    dir: &Path,
    shards: &[&str],
    table: &str,
    keys: &[&str],
) -> Vec<(Vec<String>, String, FileRow)> {
    let mut out = Vec::new();
    for shard in shards {
        let path = dir.join(format!("{shard}.sqlite"));
        if !path.exists() {
            continue;
        }
        let conn = rusqlite::Connection::open(&path).expect("open shard file");
        let exists: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
                [table],
                |r| r.get(0),
            )
            .expect("read schema");
        if !exists {
            continue;
        }
        let columns: Vec<String> = keys
            .iter()
            .map(|key| format!("CAST(\"{key}\" AS TEXT)"))
            .chain(["*".to_owned()])
            .collect();
        let mut stmt = conn
            .prepare(&format!("SELECT {} FROM \"{table}\"", columns.join(", ")))
            .expect("prepare");
        let names: Vec<String> = stmt.column_names().map(str::to_owned).collect();
        let rows = stmt
            .query_map([], |row| {
                let mut id = Vec::with_capacity(keys.len());
                for i in 0..keys.len() {
                    id.push(row.get::<_, String>(i)?);
                }
                let mut values = Vec::with_capacity(names.len() - keys.len());
                for (i, name) in names.iter().enumerate().skip(keys.len()) {
                    values.push((name.clone(), row.get::<_, SqlValue>(i)?));
                }
                Ok((id, shard.to_string(), values))
            })
            .expect("query");
        out.extend(rows.map(|r| r.expect("row")));
    }
    out
}

/// The rows `(identity, shard, row)` grouped by identity.
pub fn held<K: Ord>(rows: impl IntoIterator<Item = (K, String, FileRow)>) -> Held<K> {
    let mut held = Held::new();
    for (id, shard, row) in rows {
        held.entry(id).or_default().push((shard, row));
    }
    held
}

/// The rows `(identity, shard, row)` of `table` by identity, as seeded: panics if a row is on
/// two shards.
pub fn snapshot<K: Ord + Debug>(
    table: &str,
    rows: impl IntoIterator<Item = (K, String, FileRow)>,
) -> BTreeMap<K, FileRow> {
    let mut once = BTreeMap::new();
    for (id, shard, row) in rows {
        match once.entry(id) {
            Entry::Vacant(entry) => {
                entry.insert(row);
            }
            Entry::Occupied(entry) => {
                panic!("seeded {table} {:?} twice (again on {shard})", entry.key())
            }
        }
    }
    once
}

/// What a check of one table's rows in the files found.
pub struct Findings {
    /// Whether the rows pass.
    pub clean: bool,
    /// The rows that break it, for a failure message (every list empty when clean).
    pub text: String,
}

/// How many rows `held` has on two shards: a copy of a move in flight.
pub fn held_twice<K>(held: &Held<K>) -> usize {
    held.values().filter(|copies| copies.len() == 2).count()
}

/// Checks that `held` has every row of `expected` exactly once with its expected content, and
/// no other row.
pub fn exactly_once<K: Ord + Debug>(held: &Held<K>, expected: &BTreeMap<K, FileRow>) -> Findings {
    let missing: Vec<&K> = expected.keys().filter(|k| !held.contains_key(*k)).collect();
    let unknown: Vec<&K> = held.keys().filter(|k| !expected.contains_key(*k)).collect();
    let duplicated: Vec<(&K, Vec<&String>)> = held
        .iter()
        .filter(|(_, copies)| copies.len() > 1)
        .map(|(k, copies)| (k, copies.iter().map(|(s, _)| s).collect()))
        .collect();
    let changed: Vec<(&K, &String)> = held
        .iter()
        .filter(|(k, copies)| {
            copies.len() == 1 && expected.get(*k).is_some_and(|row| *row != copies[0].1)
        })
        .map(|(k, copies)| (k, &copies[0].0))
        .collect();
    Findings {
        clean: missing.is_empty()
            && unknown.is_empty()
            && duplicated.is_empty()
            && changed.is_empty(),
        text: format!(
            "lost {}; unknown {}; on two shards {}; (row, shard) content changed {}",
            few(&missing),
            few(&unknown),
            few(&duplicated),
            few(&changed)
        ),
    }
}

/// Checks that no row of `expected` is lost from `held`: some file holds each with its
/// expected content (a move in flight may keep an older copy on a second shard, never a
/// third), and no file holds a row never written (`deleted` says which rows not expected any
/// more were written, then deleted).
pub fn nothing_lost<K: Ord + Debug>(
    held: &Held<K>,
    expected: &BTreeMap<K, FileRow>,
    deleted: &dyn Fn(&K) -> bool,
) -> Findings {
    let lost: Vec<&K> = expected
        .iter()
        .filter(|(k, row)| {
            !held
                .get(*k)
                .is_some_and(|copies| copies.iter().any(|(_, r)| r == *row))
        })
        .map(|(k, _)| k)
        .collect();
    let unknown: Vec<&K> = held
        .keys()
        .filter(|k| !expected.contains_key(*k) && !deleted(k))
        .collect();
    let thrice: Vec<&K> = held
        .iter()
        .filter(|(_, copies)| copies.len() > 2)
        .map(|(k, _)| k)
        .collect();
    Findings {
        clean: lost.is_empty() && unknown.is_empty() && thrice.is_empty(),
        text: format!(
            "no current copy of {}; never written {}; on three shards or more {}",
            few(&lost),
            few(&unknown),
            few(&thrice)
        ),
    }
}

/// The directory file's entries, decoded by hand: `(scope, key as text) -> shard`. Empty while
/// the file or its table does not exist yet (an `adopt` killed while opening).
pub fn directory_entries(dir: &Path) -> BTreeMap<(String, String), String> {
    let path = dir.join("_directory.db");
    if !path.exists() {
        return BTreeMap::new();
    }
    let conn = rusqlite::Connection::open(path).expect("open directory file");
    let exists: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'directory')",
            [],
            |r| r.get(0),
        )
        .expect("read schema");
    if !exists {
        return BTreeMap::new();
    }
    let mut stmt = conn
        .prepare("SELECT scope, key, shard FROM directory")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .expect("query");
    rows.map(|row| {
        let (scope, bytes, shard) = row.expect("entry");
        let key = match bytes.split_first() {
            Some((b's', text)) => String::from_utf8(text.to_vec()).expect("UTF-8 key"),
            Some((b'i', int)) => i64::from_be_bytes(int.try_into().expect("8 bytes")).to_string(),
            _ => panic!("undecodable directory key {bytes:?}"),
        };
        ((scope, key), shard)
    })
    .collect()
}

/// The growth journal in progress (`growth`) or the last finished one (`growth-last`), read
/// from the directory file with rusqlite.
pub fn journal(dir: &Path, name: &str) -> Option<Job> {
    let conn = rusqlite::Connection::open(dir.join("_directory.db")).expect("open directory");
    let json: Option<String> = conn
        .query_row("SELECT state FROM jobs WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()
        .expect("read journal");
    json.map(|json| serde_json::from_str(&json).expect("a journal"))
}

/// The stored shard map, read from the directory file with rusqlite.
pub fn stored_map(dir: &Path) -> ShardMap {
    let conn = rusqlite::Connection::open(dir.join("_directory.db")).expect("open directory");
    let json: String = conn
        .query_row("SELECT map FROM slot_map WHERE id = 1", [], |r| r.get(0))
        .expect("read map");
    ShardMap::from_json(&json).expect("a map")
}

/// Copies every file of `from` into `to` (no process may hold them).
pub fn copy_folder(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("list folder") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy file");
    }
}

/// Asserts that shard `shard` was drained: its file holds no row of `tables`, no directory
/// entry names it, and the stored map does not list it.
pub fn assert_drained(dir: &Path, shard: &str, tables: &[&str]) {
    for table in tables {
        assert!(
            file_rows(dir, &[shard], table, &[]).is_empty(),
            "the drained shard holds no `{table}` row"
        );
    }
    assert!(
        directory_entries(dir).values().all(|s| s != shard),
        "no directory entry names the drained shard"
    );
    assert!(!stored_map(dir).contains(shard));
}

// ---------------------------------------------------------------------------------------------
// The child.

/// A running `growth-child`: killed with SIGKILL and reaped when dropped, also when an assertion
/// fails, so no child outlives the test.
pub struct ChildProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    label: String,
}

impl ChildProcess {
    /// Starts `growth-child <dir> <op> <shards> [stop]`.
    pub fn spawn(dir: &Path, op: &str, shards: &str, stop: Option<&str>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_growth-child"));
        command.arg(dir).arg(op).arg(shards);
        if let Some(stop) = stop {
            command.arg(stop);
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("spawn growth-child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildProcess {
            child,
            lines,
            label: format!("{op} {}", stop.unwrap_or("(no stop)")),
        }
    }

    /// The next line the child prints; panics if none comes in time.
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|e| panic!("growth-child `{}` printed nothing more: {e}", self.label))
    }

    /// Whether the child has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// Kills the child with SIGKILL (unless it has exited) and reaps it; whether it was still
    /// running.
    pub fn kill(mut self) -> bool {
        let running = !self.exited();
        if running {
            self.child.kill().expect("SIGKILL");
        }
        self.child.wait().expect("reap");
        running
    }

    /// Waits for the child to finish by itself; returns every line it printed (from now on).
    pub fn finish(mut self) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "growth-child `{}` did not finish",
                self.label
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            lines.push(line);
        }
        assert!(
            status.success(),
            "growth-child `{}` failed ({status}): {lines:?}",
            self.label
        );
        lines
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the child to the end with `stop` (`trace` or none) and returns its lines; the last one
/// must be `done ...`.
pub fn run_to_end(dir: &Path, op: &str, shards: &str, stop: Option<&str>) -> Vec<String> {
    let lines = ChildProcess::spawn(dir, op, shards, stop).finish();
    assert!(
        lines.last().is_some_and(|l| l.starts_with("done")),
        "`{op}` did not finish: {lines:?}"
    );
    lines
}

/// A line `<word> <n> <transfer> <phase>` of the child.
pub fn parse_step(line: &str, word: &str) -> (usize, usize, String) {
    let parts: Vec<&str> = line.split(' ').collect();
    match parts.as_slice() {
        [w, n, t, p] if *w == word => (
            n.parse().expect("step"),
            t.parse().expect("transfer"),
            (*p).to_owned(),
        ),
        _ => panic!("expected `{word} <n> <transfer> <phase>`, got `{line}`"),
    }
}

/// The position in a growth journal, for the report.
pub fn describe(job: Option<&Job>) -> String {
    match job {
        None => "finished (no journal)".to_owned(),
        Some(job) => match job.transfers.get(job.current) {
            Some(t) => format!(
                "transfer {} {:?} (copied {}, caught up {}, deleted {})",
                job.current, t.phase, t.copied, t.caught_up, t.deleted
            ),
            None => format!("after transfer {}", job.current),
        },
    }
}

/// The journal's position `(current transfer, phase index)`; past every position without a
/// journal (the operation finished).
fn position(job: Option<&Job>) -> (usize, usize) {
    match job {
        Some(job) => (
            job.current,
            job.transfers
                .get(job.current)
                .map_or(phase_index("Done"), |t| {
                    phase_index(&format!("{:?}", t.phase))
                }),
        ),
        None => (usize::MAX, usize::MAX),
    }
}

// ---------------------------------------------------------------------------------------------
// Where to kill.

/// Which occurrence of a (transfer, phase) of an uninterrupted run.
#[derive(Debug, Clone, Copy)]
pub enum Nth {
    /// The first.
    First,
    /// The one halfway (rounded up).
    Middle,
    /// The last.
    Last,
}

/// Where to kill a growth operation.
#[derive(Debug, Clone, Copy)]
pub enum Kill {
    /// Block the child at the `Nth` step after which the journal's current transfer and phase
    /// are these (phase `Done`: every transfer finished), check, then SIGKILL it.
    At(usize, &'static str, Nth),
    /// SIGKILL the running child as soon as it reports this occurrence (within its run) of
    /// this transfer and phase: it is somewhere in a later step by then.
    Running(usize, &'static str, usize),
}

impl Kill {
    /// A plan, in the notation of the child's stops: words `<transfer>:<Phase>:<Nth>` for
    /// [`Kill::At`] (`0:Copy:Middle`), and `running:<transfer>:<Phase>:<occurrence>` for
    /// [`Kill::Running`] (`running:1:Copy:2`), in the order they are tried.
    pub fn plan(text: &'static str) -> Vec<Kill> {
        text.split_whitespace()
            .map(|word| {
                let number = |n: &str| -> usize {
                    n.parse()
                        .unwrap_or_else(|_| panic!("kill `{word}`: `{n}` is not a number"))
                };
                let parts: Vec<&'static str> = word.split(':').collect();
                let kill = match parts.as_slice() {
                    ["running", t, p, occurrence] => {
                        Kill::Running(number(t), p, number(occurrence))
                    }
                    [t, p, nth] => {
                        let nth = match *nth {
                            "First" => Nth::First,
                            "Middle" => Nth::Middle,
                            "Last" => Nth::Last,
                            _ => panic!("kill `{word}`: `{nth}` is not First, Middle or Last"),
                        };
                        Kill::At(number(t), p, nth)
                    }
                    _ => panic!("kill `{word}`: not `t:Phase:Nth` nor `running:t:Phase:n`"),
                };
                let (Kill::At(_, phase, _) | Kill::Running(_, phase, _)) = kill;
                phase_index(phase);
                kill
            })
            .collect()
    }
}

/// What a growth test saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Steps of an uninterrupted run, and how many of them per (transfer, phase).
    pub steps: usize,
    pub shape: BTreeMap<(usize, String), usize>,
    /// `(transfer, phase, occurrence)` of each kill at a journaled step.
    pub points: BTreeSet<(usize, String, usize)>,
    /// The steps of the uninterrupted run those kills match (1-based).
    pub planned_steps: Vec<usize>,
    /// Journal positions after the kills of a running child, and after kills anywhere.
    pub running: Vec<String>,
    pub anywhere: Vec<String>,
    /// Planned kills a kill of a running child had passed already.
    pub skipped: Vec<String>,
    /// Reads while the child was blocked, and reads skipped as frozen by the move.
    pub reads: usize,
    pub frozen_skipped: usize,
    /// Blocked points where `verify_table` counted second copies of a move in flight.
    pub in_flight_points: usize,
    /// Kills after which the files held a second copy of some row (between a copy and its
    /// delete), and the most such rows at one kill.
    pub kills_with_copies: usize,
    pub most_copies: usize,
}

/// The phases named by the kills at journaled steps.
pub fn phases(stats: &Stats) -> BTreeSet<&str> {
    stats.points.iter().map(|(_, p, _)| p.as_str()).collect()
}

/// Reports what a growth test saw on stderr; `extra` is what the deployment adds.
pub fn report(op: &str, stats: &Stats, extra: &str) {
    let points: Vec<String> = stats
        .points
        .iter()
        .map(|(t, p, o)| format!("{t}:{p}#{o}"))
        .collect();
    eprintln!(
        "{op}: {} steps uninterrupted {:?}; {} kills at distinct journaled steps [{}] (steps \
         {:?} of the uninterrupted run, phases {:?}; skipped, passed by a kill while running: \
         {:?}); {} kills while running, left at {:?}; {} kills anywhere: {:?}; while blocked: \
         {} reads, {} skipped as frozen, verify saw copies in flight at {} points; {} kills \
         left a second copy of some rows in the files (at most {}); {extra}",
        stats.steps,
        stats.shape,
        stats.points.len(),
        points.join(" "),
        stats.planned_steps,
        phases(stats),
        stats.skipped,
        stats.running.len(),
        stats.running,
        stats.anywhere.len(),
        stats.anywhere,
        stats.reads,
        stats.frozen_skipped,
        stats.in_flight_points,
        stats.kills_with_copies,
        stats.most_copies
    );
}

/// Asserts the kills at journaled steps covered, for each of `needed`, one of its phases, at
/// `at_least` distinct points, and landed between a copy and its delete.
pub fn assert_phases_covered(op: &str, stats: &Stats, needed: &[&[&str]], at_least: usize) {
    let phases = phases(stats);
    for needed in needed {
        assert!(
            needed.iter().any(|p| phases.contains(p)),
            "{op}: no kill in {needed:?}: {phases:?}"
        );
    }
    assert!(
        stats.points.len() >= at_least,
        "{op}: only {} distinct kill points",
        stats.points.len()
    );
    assert!(
        stats.kills_with_copies > 0 && stats.in_flight_points > 0,
        "{op}: no kill landed between a copy and its delete"
    );
}

// ---------------------------------------------------------------------------------------------
// The driver.

/// Where a deployment under test lives: its folder, its configured shards (`s0`...; a new one
/// is configured beside them, standby until the move), and the handle of the test process
/// opened before the operation (its map and cache go stale while the child moves rows).
pub struct Site {
    pub dir: PathBuf,
    pub shards: Vec<String>,
    pub handle: Option<CollegeDb<Embedded>>,
}

impl Site {
    /// `shards` shards `s0`... in `dir`, no handle open.
    pub fn new(dir: &Path, shards: usize) -> Self {
        Site {
            dir: dir.to_owned(),
            shards: (0..shards).map(|i| format!("s{i}")).collect(),
            handle: None,
        }
    }

    /// The configured shard names.
    pub fn names(&self) -> Vec<&str> {
        self.shards.iter().map(String::as_str).collect()
    }

    /// The configured shard names, as the child takes them.
    pub fn csv(&self) -> String {
        self.shards.join(",")
    }

    /// Opens a new handle over the configured shards.
    pub fn open(&self) -> CollegeDb<Embedded> {
        collegedb_tests::open(&self.dir, self.shards.len())
    }

    /// The handle opened before the operation.
    pub fn handle(&self) -> &CollegeDb<Embedded> {
        self.handle.as_ref().expect("the long-lived handle")
    }
}

/// A deployment under test: its [`Site`], what its files must hold, and its checks.
pub trait Deployed {
    /// Whether a planned kill at or before the journal's position after a kill of a running
    /// child is skipped (and listed in [`Stats::skipped`]); else it is attempted, and the test
    /// fails if that kill landed past it (its plans must leave room).
    const SKIP_PASSED: bool = false;
    /// Whether kills of a running child count in [`Stats::kills_with_copies`] too.
    const COUNT_RUNNING_COPIES: bool = false;

    /// Where the deployment lives; [`grow_with_kills`] opens and drops its handle.
    fn site(&mut self) -> &mut Site;
    /// After an operation: the files in `dir` hold every row exactly once with its content.
    fn assert_exactly_once(&self, dir: &Path, context: &str);
    /// After a kill: no row is lost from the files in `dir`; returns the rows held twice.
    fn assert_nothing_lost(&self, dir: &Path, context: &str) -> usize;
    /// More checks of the uninterrupted run of `op`, which took `duration`, on the copy in
    /// `copy`.
    fn uninterrupted(&self, copy: &Path, op: &str, duration: Duration, stats: &mut Stats);
    /// The checks while the child is blocked at a journaled step (`job`: the journal, `None`
    /// once the operation finished).
    fn while_blocked(&mut self, job: Option<&Job>, label: &str, stats: &mut Stats);
    /// The checks through the router after the operation finished, by a new handle and the
    /// one opened before.
    fn finished(&mut self, label: &str);
}

/// Runs growth operation `op` on `d` with the kills of `plan`, resuming after each, then to its
/// end, checking as it goes; before that, an uninterrupted run on a copy (and what
/// [`Deployed::uninterrupted`] adds).
pub fn grow_with_kills<D: Deployed>(d: &mut D, op: &str, plan: &[Kill]) -> Stats {
    let mut stats = Stats::default();
    let dir = d.site().dir.clone();
    let csv = d.site().csv();

    // An uninterrupted run on a copy: the steps to choose from, and a first check that the
    // operation itself keeps every row.
    let dry = tempfile::tempdir().unwrap();
    copy_folder(&dir, dry.path());
    let started = Instant::now();
    let lines = run_to_end(dry.path(), op, &csv, Some("trace"));
    let duration = started.elapsed();
    let trace: Vec<(usize, String)> = lines[..lines.len() - 1]
        .iter()
        .map(|line| {
            let (_, t, p) = parse_step(line, "trace");
            (t, p)
        })
        .collect();
    stats.steps = trace.len();
    for step in &trace {
        *stats.shape.entry(step.clone()).or_default() += 1;
    }
    d.assert_exactly_once(dry.path(), &format!("{op} uninterrupted"));
    assert!(
        journal(dry.path(), "growth").is_none(),
        "{op}: a journal left"
    );
    d.uninterrupted(dry.path(), op, duration, &mut stats);

    // Where each exact kill lands in that run.
    let shape = stats.shape.clone();
    let occurrence = |t: usize, p: &str, nth: Nth| -> (usize, usize) {
        let at: Vec<usize> = trace
            .iter()
            .enumerate()
            .filter(|(_, (tt, pp))| *tt == t && pp == p)
            .map(|(i, _)| i + 1)
            .collect();
        assert!(
            !at.is_empty(),
            "{op}: an uninterrupted run never reports ({t}, {p}): {shape:?}"
        );
        let n = match nth {
            Nth::First => 1,
            Nth::Middle => at.len().div_ceil(2),
            Nth::Last => at.len(),
        };
        (n, at[n - 1])
    };

    let handle = d.site().open();
    d.site().handle = Some(handle);
    let mut previous: Option<(usize, String, usize)> = None;
    let mut last_planned = 0;
    // Where a kill of a running child left the journal: with `D::SKIP_PASSED`, a planned kill
    // at or before it is skipped (the child is killed within about a step of its report, so
    // only a very late SIGKILL skips one; the plans leave several steps between the two).
    let mut resumed_at: Option<(usize, usize)> = None;
    let passed = |resumed_at: Option<(usize, usize)>, t: usize, p: &str| {
        D::SKIP_PASSED && resumed_at.is_some_and(|at| (t, phase_index(p)) <= at)
    };
    for kill in plan {
        match *kill {
            Kill::At(t, p, nth) => {
                let (occ, planned) = occurrence(t, p, nth);
                if planned <= last_planned {
                    continue; // Same step as the previous kill (a short phase).
                }
                if passed(resumed_at, t, p) {
                    stats.skipped.push(format!("{t}:{p}:{nth:?}"));
                    continue;
                }
                resumed_at = None;
                last_planned = planned;
                let local = match &previous {
                    Some((pt, pp, po)) if *pt == t && pp == p => occ - po,
                    _ => occ,
                };
                let child = ChildProcess::spawn(&dir, op, &csv, Some(&format!("{t}:{p}:{local}")));
                let line = child.line();
                let (_, rt, rp) = parse_step(&line, "step");
                assert_eq!((rt, rp.as_str()), (t, p), "{op}: {line}");
                let label = format!("{op} killed at ({t}, {p}, #{occ})");
                let job = journal(&dir, "growth");
                match &job {
                    Some(job) => {
                        assert_eq!(job.current, t, "{label}: the journal");
                        let phase = job
                            .transfers
                            .get(t)
                            .map_or("Done".to_owned(), |t| format!("{:?}", t.phase));
                        assert_eq!(phase, p, "{label}: the journal");
                    }
                    None => assert_eq!(p, "Done", "{label}: no journal"),
                }
                d.while_blocked(job.as_ref(), &label, &mut stats);
                assert!(child.kill(), "{label}: the child was blocked");
                let copies = d.assert_nothing_lost(&dir, &label);
                stats.kills_with_copies += usize::from(copies > 0);
                stats.most_copies = stats.most_copies.max(copies);
                stats.points.insert((t, p.to_owned(), occ));
                stats.planned_steps.push(planned);
                previous = Some((t, p.to_owned(), occ));
            }
            Kill::Running(t, p, occ) => {
                if passed(resumed_at, t, p) {
                    stats.skipped.push(format!("running {t}:{p}:{occ}"));
                    continue;
                }
                let child = ChildProcess::spawn(&dir, op, &csv, Some("trace"));
                let mut seen = 0;
                while seen < occ {
                    let line = child.line();
                    assert!(
                        !line.starts_with("done"),
                        "{op}: finished before ({t}, {p})"
                    );
                    let (_, rt, rp) = parse_step(&line, "trace");
                    if rt == t && rp == p {
                        seen += 1;
                    }
                }
                child.kill();
                let label = format!("{op} killed running after ({t}, {p}, #{occ} of its run)");
                let job = journal(&dir, "growth");
                resumed_at = Some(position(job.as_ref()));
                let copies = d.assert_nothing_lost(&dir, &label);
                if D::COUNT_RUNNING_COPIES {
                    stats.kills_with_copies += usize::from(copies > 0);
                }
                stats.running.push(describe(job.as_ref()));
                previous = None;
            }
        }
    }

    // Resume to the end; a second run is a no-op.
    let lines = run_to_end(&dir, op, &csv, None);
    let label = format!("{op} resumed to the end");
    assert!(journal(&dir, "growth").is_none(), "{label}: a journal left");
    let last = journal(&dir, "growth-last").expect("the finished journal");
    assert!(last.is_finished(), "{label}: {last}");
    d.assert_exactly_once(&dir, &label);
    assert_again_changes_nothing(d, op, op);
    eprintln!("{label}: {lines:?}");

    // Through the router.
    d.finished(&label);
    d.site().handle = None;
    stats
}

/// Runs `op` once more on the finished deployment `d`: it copies nothing, and the files still
/// hold every row exactly once.
pub fn assert_again_changes_nothing<D: Deployed>(d: &mut D, op: &str, context: &str) {
    let dir = d.site().dir.clone();
    assert_eq!(
        run_to_end(&dir, op, &d.site().csv(), None),
        ["done 0"],
        "{context}: again"
    );
    d.assert_exactly_once(&dir, &format!("{context}, run again"));
}

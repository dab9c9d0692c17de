//! A child process for the crash tests of growth (`add_shard`, `drain_shard`) and `adopt`: runs
//! one operation on an embedded deployment, so that the test can kill it with SIGKILL at an exact
//! journaled step (or anywhere) and then run it again to resume.
//!
//! ```text
//! growth-child <folder> <add:NAME | drain:NAME | reassign:TABLE:KEY:NAME | adopt | migrate:DIR> <shards-csv> [stop]
//! ```
//!
//! `shards-csv` lists the configured shard names (the stored map must be covered by them; extra
//! names are standby). Growth runs with [`PAGE_ROWS`] rows per page and a step hook; `stop` is
//! one of:
//!
//! * `<n>`: at the `n`-th step of this run (counted from 1), print `step <n> <transfer> <phase>`
//!   and block until killed;
//! * `<transfer>:<Phase>:<occurrence>`: the same at the `occurrence`-th step of this run after
//!   which the journal's current transfer is `transfer` and its phase is `Phase` (as in
//!   `growth::Phase`, `Done` once every transfer finished);
//! * `trace`: print `trace <n> <transfer> <phase>` after every step and never block.
//!
//! `migrate:DIR` applies the migrations of folder `DIR`; its steps are the migrations applied
//! (one per shard and version), and only a `<n>` stop applies.
//!
//! Prints `done <rows copied>` when a growth operation finishes, `done <status>` when migrate
//! does, `done <rows> <recorded>
//! <conflicts>` when adopt does, or `error <code> <message>`. A blocked child whose stdin closes
//! (the test is gone) exits at once with status 3.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use collegedb::growth::Job;
use collegedb::{CollegeDb, Config, GrowthOptions};

/// Rows read per page (and journaled per step): small, so that a few hundred rows take dozens of
/// steps.
const PAGE_ROWS: usize = 50;

/// Where to stop.
#[derive(Debug, Clone, PartialEq)]
enum Stop {
    /// Never; print nothing per step.
    Never,
    /// Print every step, never block.
    Trace,
    /// At this step of the run.
    Step(usize),
    /// At this occurrence of a (transfer, phase) of the journal.
    Phase(usize, String, usize),
}

fn parse_stop(arg: Option<&String>) -> Stop {
    let Some(arg) = arg else {
        return Stop::Never;
    };
    if arg == "trace" {
        return Stop::Trace;
    }
    let parts: Vec<&str> = arg.split(':').collect();
    match parts.as_slice() {
        [n] => Stop::Step(n.parse().expect("a step number")),
        [transfer, phase, occurrence] => Stop::Phase(
            transfer.parse().expect("a transfer index"),
            (*phase).to_owned(),
            occurrence.parse().expect("an occurrence"),
        ),
        _ => panic!("bad stop `{arg}`"),
    }
}

/// The journal's current transfer and its phase, `Done` past the last one.
fn position(job: &Job) -> (usize, String) {
    let phase = match job.transfers.get(job.current) {
        Some(transfer) => format!("{:?}", transfer.phase),
        None => "Done".to_owned(),
    };
    (job.current, phase)
}

/// Prints a line and flushes it, so the test sees it before the child blocks.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("write stdout");
    out.flush().expect("flush stdout");
}

/// Blocks until stdin closes (the test never writes to it), then exits: the test kills the
/// child long before.
fn block() -> ! {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    std::process::exit(3);
}

fn hook(stop: Stop) -> impl Fn(&Job) + Send + Sync + 'static {
    let steps = AtomicUsize::new(0);
    let seen: Mutex<HashMap<(usize, String), usize>> = Mutex::new(HashMap::new());
    move |job: &Job| {
        let n = steps.fetch_add(1, Ordering::SeqCst) + 1;
        let (transfer, phase) = position(job);
        let occurrence = {
            let mut seen = seen.lock().expect("not poisoned");
            let count = seen.entry((transfer, phase.clone())).or_insert(0);
            *count += 1;
            *count
        };
        let stop_here = match &stop {
            Stop::Never => false,
            Stop::Trace => {
                say(&format!("trace {n} {transfer} {phase}"));
                false
            }
            Stop::Step(at) => *at == n,
            Stop::Phase(t, p, o) => *t == transfer && *p == phase && *o == occurrence,
        };
        if stop_here {
            say(&format!("step {n} {transfer} {phase}"));
            block();
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !(4..=5).contains(&args.len()) {
        eprintln!("usage: growth-child <folder> <add:NAME|drain:NAME|adopt> <shards-csv> [stop]");
        std::process::exit(2);
    }
    let (folder, op, shards) = (&args[1], &args[2], &args[3]);
    let stop = parse_stop(args.get(4));
    let config = Config::with_shard_names(shards.split(','));
    let result = CollegeDb::open_embedded(config, folder).and_then(|db| {
        let options = GrowthOptions::default()
            .page_rows(PAGE_ROWS)
            .on_step(hook(stop.clone()));
        pollster::block_on(async {
            // A killed run left its journal (and its lease): take it over, as an operator would
            // with `collegedb resume`.
            if let Some(folder) = op.strip_prefix("migrate:") {
                let migrations = collegedb::migrate::Migrations::from_dir(folder)?;
                let steps = AtomicUsize::new(0);
                let stop_at = match stop {
                    Stop::Step(n) => Some(n),
                    _ => None,
                };
                let hook = std::sync::Arc::new(move |applied: &collegedb::migrate::Applied| {
                    let n = steps.fetch_add(1, Ordering::SeqCst) + 1;
                    if stop_at == Some(n) {
                        say(&format!("step {n} {} {}", applied.version, applied.shard));
                        block();
                    }
                });
                let status = db.migrate_with(&migrations, Some(hook)).await?;
                return Ok(format!("done {status}"));
            }
            if op != "adopt" && db.growth_status().await?.running.is_some() {
                let job = db.resume_growth(&options).await?.expect("journaled");
                return Ok(format!("done {}", job.rows_copied()));
            }
            if let Some(shard) = op.strip_prefix("add:") {
                let job = db.add_shard_with(shard, &options).await?;
                Ok(format!("done {}", job.rows_copied()))
            } else if let Some(shard) = op.strip_prefix("drain:") {
                let job = db.drain_shard_with(shard, &options).await?;
                Ok(format!("done {}", job.rows_copied()))
            } else if let Some(args) = op.strip_prefix("reassign:") {
                let [table, key, shard] = args.splitn(3, ':').collect::<Vec<_>>()[..] else {
                    return Err(collegedb::Error::ConfigInvalid(format!("bad `{op}`")));
                };
                let job = db.reassign_with(table, key, shard, &options).await?;
                Ok(format!("done {}", job.rows_copied()))
            } else if op == "adopt" {
                let report = db.adopt().await?;
                let sum = |f: fn(&collegedb::AdoptedTable) -> u64| -> u64 {
                    report.tables.iter().map(f).sum()
                };
                Ok(format!(
                    "done {} {} {}",
                    sum(|t| t.rows),
                    sum(|t| t.recorded),
                    sum(|t| t.conflicts.len() as u64)
                ))
            } else {
                Err(collegedb::Error::ConfigInvalid(format!(
                    "unknown operation `{op}`"
                )))
            }
        })
    });
    match result {
        Ok(line) => say(&line),
        Err(error) => {
            say(&format!("error {} {error}", error.code()));
            std::process::exit(1);
        }
    }
}

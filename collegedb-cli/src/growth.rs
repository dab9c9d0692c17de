//! `add-shard`, `drain-shard` and `resume`: the library's growth operations with a progress
//! display and a summary.
//!
//! Every step of an operation is journaled in `_directory.db`, so an interrupted run (killed,
//! Ctrl-C, a failed write) leaves a job that `resume` finishes, and that blocks any other
//! operation until then. Running the same command again resumes it too, once the interrupted
//! runner's lease (30 s after its last step) has ended; `resume` takes over at once.
//!
//! Each command returns whether it ended clean: `drain-shard` (and `resume` of one) is not clean
//! while the drained shard's file still holds rows (the library leaves behind rows whose key is
//! neither INTEGER nor TEXT, for one), so that `collegedb drain-shard f b && rm f/b.sqlite` cannot
//! lose them.

use std::path::Path;

/// `println!` that ignores a closed or failing stdout (`collegedb add-shard f d | head`): what an
/// operation says must not stop it, nor turn its exit code into a panic's.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

use collegedb::growth::{now_ms, Job, Operation};
use collegedb::{EmbeddedDb, Error, Result};

use crate::deployment::{peek, Deployment};
use crate::progress::Progress;
use crate::report;

/// `collegedb add-shard <folder> <shard>`.
pub fn add_shard(folder: &Path, shard: &str) -> Result<bool> {
    let deployment = Deployment::find(folder)?;
    let operation = Operation::AddShard {
        shard: shard.to_owned(),
    };
    if !deployment.knows(shard) {
        // Opening with a new name creates its file: refuse first if it could not be used.
        let db = deployment.open_all(None)?;
        refuse_another(&db, &operation, folder)?;
    }
    let db = deployment.open_all(Some(shard))?;
    run(&deployment, &db, operation)
}

/// `collegedb drain-shard <folder> <shard>`.
pub fn drain_shard(folder: &Path, shard: &str) -> Result<bool> {
    let deployment = Deployment::find(folder)?;
    if !deployment.knows(shard) {
        return Err(Error::ConfigInvalid(format!(
            "no shard `{shard}` in {}: the shard map has {} and the folder has no {shard}.sqlite",
            folder.display(),
            deployment.map.shards().join(", ")
        )));
    }
    let db = deployment.open_all(None)?;
    let operation = Operation::DrainShard {
        shard: shard.to_owned(),
    };
    run(&deployment, &db, operation)
}

/// `collegedb reassign <folder> <table> <key> <shard>`: the key is text unless `int`.
pub fn reassign(folder: &Path, table: &str, key: &str, int: bool, shard: &str) -> Result<bool> {
    let deployment = Deployment::find(folder)?;
    if !deployment.map.contains(shard) {
        return Err(Error::ConfigInvalid(format!(
            "shard `{shard}` is not in the shard map of {} ({}): reassign a key to one of them, or add the shard first with `collegedb add-shard`",
            folder.display(),
            deployment.map.shards().join(", ")
        )));
    }
    let key = if int {
        let value = key.parse::<i64>().map_err(|e| {
            Error::ConfigInvalid(format!("--int: `{key}` is not an integer key: {e}"))
        })?;
        collegedb::Key::int(value)?
    } else {
        collegedb::Key::text(key)?
    };
    let db = deployment.open_all(None)?;
    let operation = Operation::Reassign {
        table: table.to_owned(),
        key,
        shard: shard.to_owned(),
    };
    refuse_another(&db, &operation, folder)?;
    run(&deployment, &db, operation)
}

/// `collegedb resume <folder>`.
pub fn resume(folder: &Path) -> Result<bool> {
    let deployment = Deployment::find(folder)?;
    let db = deployment.open_all(None)?;
    let Some(job) = pollster::block_on(db.growth_status())?.running else {
        say!("no growth operation in progress: nothing to resume");
        return Ok(true);
    };
    // The journal names the shards it moves rows between; a missing file must not be recreated
    // empty under a journal that says rows were copied to it.
    for t in &job.transfers {
        for name in [&t.from, &t.to] {
            if !name.is_empty() && !deployment.knows(name) {
                return Err(Error::ConfigInvalid(format!(
                    "the interrupted {} moves rows {}, but {name}.sqlite is missing from {}: restore the file before resuming",
                    report::operation(&job.operation),
                    report::route(t),
                    folder.display()
                )));
            }
        }
    }
    say!(
        "resuming {}: transfer {} of {}, {} rows copied so far",
        report::operation(&job.operation),
        (job.current + 1).min(job.transfers.len()),
        job.transfers.len(),
        job.rows_copied()
    );
    let progress = Progress::start();
    let result = pollster::block_on(db.resume_growth(&progress.options()));
    progress.finish();
    match result {
        Ok(Some(job)) => summary(&deployment, &db, &job),
        Ok(None) => {
            say!("the operation finished meanwhile (another process): nothing to resume");
            Ok(true)
        }
        Err(error) => Err(interrupted(&db, folder, error)),
    }
}

/// Refuses `operation` when the journal holds a different one.
fn refuse_another(db: &EmbeddedDb, operation: &Operation, folder: &Path) -> Result<()> {
    match pollster::block_on(db.growth_status())?.running {
        Some(job) if job.operation != *operation => Err(Error::ConfigInvalid(format!(
            "another growth operation is in progress ({}, transfer {} of {}): finish it first with `collegedb resume {}`",
            report::operation(&job.operation),
            (job.current + 1).min(job.transfers.len()),
            job.transfers.len(),
            folder.display()
        ))),
        _ => Ok(()),
    }
}

fn run(deployment: &Deployment, db: &EmbeddedDb, operation: Operation) -> Result<bool> {
    let progress = Progress::start();
    let options = progress.options();
    let result = match &operation {
        Operation::AddShard { shard } => pollster::block_on(db.add_shard_with(shard, &options)),
        Operation::DrainShard { shard } => pollster::block_on(db.drain_shard_with(shard, &options)),
        Operation::Reassign { table, key, shard } => {
            pollster::block_on(db.reassign(table, key.clone(), shard))
        }
    };
    progress.finish();
    match result {
        Ok(job) => summary(deployment, db, &job),
        Err(error) => Err(interrupted(db, &deployment.folder, error)),
    }
}

/// Adds to an error how to go on when a journaled operation is left unfinished.
fn interrupted(db: &EmbeddedDb, folder: &Path, error: Error) -> Error {
    if let Ok(status) = pollster::block_on(db.growth_status()) {
        if let Some(job) = status.running {
            eprintln!(
                "note: {} is journaled at transfer {} of {}; `collegedb resume {}` finishes it",
                report::operation(&job.operation),
                (job.current + 1).min(job.transfers.len()),
                job.transfers.len(),
                folder.display()
            );
        }
    }
    error
}

/// Prints what a finished operation did; whether it ended clean.
fn summary(deployment: &Deployment, db: &EmbeddedDb, job: &Job) -> Result<bool> {
    let map = pollster::block_on(db.growth_status())?.map;
    let (verb, shard) = match &job.operation {
        Operation::AddShard { shard } => ("added", shard),
        Operation::DrainShard { shard } => ("drained", shard),
        Operation::Reassign { table, key, shard } => {
            match job.transfers.first() {
                Some(t) => say!(
                    "reassigned key {key} of {table}: {} ({} row copied, {} deleted); the directory records it on {shard}",
                    report::route(t),
                    t.copied,
                    t.deleted
                ),
                None => say!("nothing to do: key {key} of {table} is on shard {shard} already"),
            }
            return Ok(true);
        }
    };
    if job.transfers.is_empty() {
        let owned = map.slots_of(shard).len();
        let why = match &job.operation {
            Operation::AddShard { .. } => format!("shard {shard} already owns {owned} slots"),
            Operation::DrainShard { .. } => format!("shard {shard} owns no slots"),
            Operation::Reassign { .. } => unreachable!("reported above"),
        };
        say!("nothing to do: {why} (shard map version {})", map.version());
        if map.version() != deployment.map.version() {
            say!(
                "the deployment held no rows, so the configured shards became the shard map (version {} -> {})",
                deployment.map.version(),
                map.version()
            );
        }
        return drained(deployment, job);
    }
    let now = now_ms();
    say!(
        "{verb} shard {shard}: moved {} rows in {}, {} ({}); shard map version {} -> {}",
        job.rows_copied(),
        report::transfers(job.transfers.len()),
        report::duration(report::elapsed_seconds(job, now)),
        report::rate(job.rate(now)),
        job.from_version,
        map.version()
    );
    for t in &job.transfers {
        say!(
            "  {} ({}): {} rows copied, {} deleted",
            report::route(t),
            report::what(t),
            t.copied,
            t.deleted
        );
    }
    if job.unroutable > 0 {
        say!(
            "warning: rows whose key is neither INTEGER nor TEXT were not moved (no slot routes them): counted {}, once per transfer that read them",
            job.unroutable
        );
    }
    if !job.skipped_tables.is_empty() {
        say!(
            "warning: not moved (no single-column primary key): {}",
            job.skipped_tables.join(", ")
        );
    }
    drained(deployment, job)
}

/// After a drain, whether the shard's file is empty, said either way; `true` after an add.
fn drained(deployment: &Deployment, job: &Job) -> Result<bool> {
    let Operation::DrainShard { shard } = &job.operation else {
        return Ok(true);
    };
    let left = peek(&deployment.file_of(shard))?;
    if left.rows() == 0 {
        say!(
            "shard {shard} now owns no slots and holds no rows: it can be removed from the configuration (then its file {shard}.sqlite can be deleted)"
        );
        return Ok(true);
    }
    let tables: Vec<String> = left
        .tables
        .iter()
        .filter(|(_, rows)| *rows > 0)
        .map(|(table, rows)| format!("{table} {rows}"))
        .collect();
    say!(
        "shard {shard} now owns no slots, but its file still holds {} rows ({}): keep it until they are dealt with",
        left.rows(),
        tables.join(", ")
    );
    Ok(false)
}

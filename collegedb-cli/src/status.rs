//! `collegedb status <folder>`: the shard map, what each shard holds, and the growth operation in
//! progress and the last one finished.
//!
//! Read-only: it opens the map's shards only (the library then changes nothing) and reads
//! standby files directly.

use std::path::Path;

use collegedb::growth::{now_ms, Job, Operation};
use collegedb::slots::SLOTS;
use collegedb::Result;

use crate::deployment::{peek, Deployment};
use crate::report;

/// Prints the status of the deployment in `folder`.
pub fn status(folder: &Path) -> Result<()> {
    let deployment = Deployment::find(folder)?;
    let db = deployment.open_map()?;
    let growth = pollster::block_on(db.growth_status())?;
    let map = &growth.map;
    println!(
        "shard map version {}: {} shards ({}), {SLOTS} slots",
        map.version(),
        map.shards().len(),
        map.shards().join(", ")
    );
    for shard in pollster::block_on(db.get_shard_stats())? {
        let slots = format!("{} slots", map.slots_of(&shard.shard).len());
        let tables: Vec<(String, u64)> = shard.tables.into_iter().collect();
        shard_line(&shard.shard, &slots, shard.rows, shard.size_bytes, &tables);
    }
    for name in deployment.files.iter().filter(|f| !map.contains(f)) {
        let role = match growth.running.as_ref().map(|job| &job.operation) {
            Some(Operation::AddShard { shard }) if shard == name => "joining, 0 slots",
            Some(Operation::DrainShard { shard }) if shard == name => "draining, 0 slots",
            _ => "standby, 0 slots",
        };
        match peek(&deployment.file_of(name)) {
            Ok(file) => shard_line(name, role, file.rows(), file.size_bytes, &file.tables),
            Err(error) => println!("  {name:<20} {role:>18}   unreadable: {error}"),
        }
    }
    let entries = pollster::block_on(collegedb::directory::Directory::count(db.directory()))?;
    println!("directory entries: {entries}");
    let now = now_ms();
    match &growth.running {
        Some(job) => running(job, now, folder),
        None => println!("no operation in progress"),
    }
    if let Some(job) = &growth.last {
        last(job, now);
    }
    Ok(())
}

fn shard_line(name: &str, role: &str, rows: u64, bytes: u64, tables: &[(String, u64)]) {
    let tables: Vec<String> = tables
        .iter()
        .map(|(table, rows)| format!("{table} {rows}"))
        .collect();
    println!(
        "  {name:<20} {role:>18} {rows:>10} rows {bytes:>12} bytes   {}",
        tables.join(", ")
    );
}

fn running(job: &Job, now: u64, folder: &Path) {
    let elapsed = report::elapsed_seconds(job, now);
    println!(
        "operation in progress: {}, started {} ago from shard map version {}",
        report::operation(&job.operation),
        report::duration(elapsed),
        job.from_version
    );
    if let Some(t) = job.transfers.get(job.current) {
        println!(
            "  transfer {} of {}: {} {}, phase {}",
            job.current + 1,
            job.transfers.len(),
            report::what(t),
            report::route(t),
            report::phase(t.phase)
        );
    }
    println!(
        "  rows copied {}, deleted {}, estimated {} for the transfers started so far (about {} over all)",
        job.rows_copied(),
        job.rows_deleted(),
        job.rows_estimated(),
        report::projected_rows(job)
    );
    let eta = report::eta_seconds(job, now).map_or("unknown".to_owned(), report::duration);
    println!(
        "  rate {}, ETA {eta} (counted since it started, pauses included)",
        report::rate(job.rate(now))
    );
    println!(
        "  if no collegedb process is running it, `collegedb resume {}` finishes it",
        folder.display()
    );
}

fn last(job: &Job, now: u64) {
    let ago = job
        .finished_ms
        .map(|end| report::duration(now.saturating_sub(end) as f64 / 1000.0));
    println!(
        "last operation: {}, {} rows moved in {}, took {}{} (from shard map version {})",
        report::operation(&job.operation),
        job.rows_copied(),
        report::transfers(job.transfers.len()),
        report::duration(report::elapsed_seconds(job, now)),
        ago.map_or(String::new(), |ago| format!(", finished {ago} ago")),
        job.from_version,
    );
}

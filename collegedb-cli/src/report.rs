//! Wording and numbers shared by `status`, the progress display and the summaries: names of
//! operations and phases, transfers, durations, and how much is left to move.

use collegedb::growth::{Job, Operation, Phase, Transfer};

/// An operation as the command line names it: `add-shard d`, `drain-shard b`.
pub fn operation(op: &Operation) -> String {
    match op {
        Operation::AddShard { shard } => format!("add-shard {shard}"),
        Operation::DrainShard { shard } => format!("drain-shard {shard}"),
        Operation::Reassign { table, key, shard } => format!("reassign {table} {key} {shard}"),
    }
}

/// A phase in lower-case words.
pub fn phase(phase: Phase) -> &'static str {
    match phase {
        Phase::Prepare => "prepare",
        Phase::Copy => "copy",
        Phase::CatchUp => "catch-up",
        Phase::Freeze => "freeze",
        Phase::FinalCatchUp => "final catch-up",
        Phase::Switch => "switch",
        Phase::Delete => "delete",
        Phase::Done => "done",
    }
}

/// Where a transfer goes: `s0 -> s3`, or for a drain's last transfer, which sends directory-placed
/// rows to the other shards, `s1 -> other shards`.
pub fn route(t: &Transfer) -> String {
    if t.is_relocation() {
        format!("{} -> other shards", t.from)
    } else {
        format!("{} -> {}", t.from, t.to)
    }
}

/// What a transfer moves: `341 slots` or `directory-placed rows`.
pub fn what(t: &Transfer) -> String {
    if t.is_relocation() {
        "directory-placed rows".to_owned()
    } else if t.is_reassignment() {
        "one key".to_owned()
    } else {
        format!("{} slots", t.slots.len())
    }
}

/// The rows the whole operation should move, as well as can be told so far: for a finished
/// transfer, the rows it moved; for a started one, the library's estimate (or what it copied
/// already, if more); for a slot transfer not started yet, its slots at the rows per slot of the
/// started ones.
///
/// The library estimates a transfer only when it starts it, from the giving shard's row count
/// (which includes rows that directory entries keep in place), so `Job::rows_estimated` covers only
/// the transfers started so far and can overstate them; a progress bar sized by it alone would
/// fill up once per transfer, or stop short. A drain's relocation is counted once it starts.
pub fn projected_rows(job: &Job) -> u64 {
    let expected = |t: &Transfer| match t.phase {
        Phase::Done => t.copied.max(t.deleted),
        Phase::Prepare => 0,
        _ => t.estimate.max(t.copied),
    };
    let slot_transfers = || job.transfers.iter().filter(|t| !t.is_relocation());
    let started = |t: &&Transfer| t.phase != Phase::Prepare;
    let (seen_rows, seen_slots) = slot_transfers()
        .filter(started)
        .fold((0u64, 0u64), |(rows, slots), t| {
            (rows + expected(t), slots + t.slots.len() as u64)
        });
    let waiting_slots: u64 = slot_transfers()
        .filter(|t| !started(t))
        .map(|t| t.slots.len() as u64)
        .sum();
    let predicted = (seen_rows * waiting_slots)
        .checked_div(seen_slots)
        .unwrap_or(0);
    job.transfers.iter().map(expected).sum::<u64>() + predicted
}

/// Rows written so far: each moved row is copied once and deleted once.
pub fn work_done(job: &Job) -> u64 {
    job.rows_copied() + job.rows_deleted()
}

/// All the writing the operation should take: twice the projected rows (copy and delete), or
/// what was done already if that is more (rows written while it runs).
pub fn work_total(job: &Job) -> u64 {
    (2 * projected_rows(job)).max(work_done(job))
}

/// Seconds left at the pace so far, over the projected rows; `None` when it cannot tell yet.
///
/// The pace is rows copied plus rows deleted per second since the operation started, so time
/// spent interrupted counts: after a resume the estimate is pessimistic until it catches up.
pub fn eta_seconds(job: &Job, now_ms: u64) -> Option<f64> {
    if job.is_finished() {
        return Some(0.0);
    }
    let elapsed = now_ms.saturating_sub(job.started_ms) as f64 / 1000.0;
    let done = work_done(job);
    let total = 2 * projected_rows(job);
    if done == 0 || elapsed <= 0.0 || total <= done {
        return None;
    }
    Some((total - done) as f64 * elapsed / done as f64)
}

/// How long the operation ran (until it finished, or until `now_ms`), in seconds.
pub fn elapsed_seconds(job: &Job, now_ms: u64) -> f64 {
    job.finished_ms
        .unwrap_or(now_ms)
        .saturating_sub(job.started_ms) as f64
        / 1000.0
}

/// A duration for people: `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`.
pub fn duration(seconds: f64) -> String {
    let seconds = seconds.max(0.0);
    if seconds < 1.0 {
        format!("{} ms", (seconds * 1000.0).round() as u64)
    } else if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else if seconds < 3600.0 {
        let s = seconds.round() as u64;
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = (seconds / 60.0).round() as u64;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

/// `1 transfer`, `3 transfers`.
pub fn transfers(count: usize) -> String {
    if count == 1 {
        "1 transfer".to_owned()
    } else {
        format!("{count} transfers")
    }
}

/// A rate for people: `1234 rows/s`.
pub fn rate(rows_per_second: f64) -> String {
    format!("{:.0} rows/s", rows_per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(0.25), "250 ms");
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(245.0), "4 min 05 s");
        assert_eq!(duration(7380.0), "2 h 03 min");
    }
}

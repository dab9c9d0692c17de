//! The progress of a growth operation, driven by the library's `on_step` hook (called after every
//! journaled step: a page copied or deleted, a catch-up pass, a phase change).
//!
//! * On a terminal: an indicatif bar on stderr. Its position is rows copied plus rows deleted and
//!   its length twice the rows to move (each moved row is copied once and deleted once), projected
//!   over the transfers not started yet and corrected as the library's estimates and each
//!   transfer's actual count arrive ([`report::projected_rows`]). Its message names the transfer
//!   and its phase: `2/3 s1 -> s3: copy`. A line is printed above the bar as each transfer
//!   finishes.
//! * Otherwise (a log, CI, a test): indicatif hides the bar by itself, so one plain line per
//!   phase change of each transfer goes to stdout instead. The same lines go to stdout when only
//!   stdout is redirected, so a log of the run shows its progress while the terminal shows the bar.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use collegedb::growth::{Job, Phase, Transfer};
use collegedb::GrowthOptions;
use indicatif::{ProgressBar, ProgressStyle};

use crate::report;

/// The display of one growth operation.
pub struct Progress {
    bar: ProgressBar,
    /// Whether to print a plain line per phase change.
    plain: bool,
    started: Instant,
    /// The phase of each transfer when last seen; empty before the first step.
    seen: Mutex<Vec<Phase>>,
}

impl Progress {
    /// Starts the display (nothing is drawn before the first step).
    pub fn start() -> Arc<Self> {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:24}] {percent:>3}% eta {eta:<3}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let plain = bar.is_hidden() || !std::io::stdout().is_terminal();
        if !bar.is_hidden() {
            // Keeps the spinner and clock moving through steps that take a while (a freeze).
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        Arc::new(Progress {
            bar,
            plain,
            started: Instant::now(),
            seen: Mutex::new(Vec::new()),
        })
    }

    /// Growth options whose hook feeds this display.
    pub fn options(self: &Arc<Self>) -> GrowthOptions {
        let progress = Arc::clone(self);
        GrowthOptions::default().on_step(move |job| progress.step(job))
    }

    /// Removes the bar (the summary follows).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn step(&self, job: &Job) {
        self.bar.set_length(report::work_total(job));
        self.bar.set_position(report::work_done(job));
        if let Some(t) = job.transfers.get(job.current) {
            self.bar.set_message(format!(
                "{}/{} {}: {}",
                job.current + 1,
                job.transfers.len(),
                report::route(t),
                report::phase(t.phase)
            ));
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.is_empty() {
            // The first step: say where the operation starts (a resume starts part-way).
            *seen = job.transfers.iter().map(|t| t.phase).collect();
            if let Some(t) = job.transfers.get(job.current) {
                self.line(job, job.current, t, true);
            }
            return;
        }
        seen.resize(job.transfers.len(), Phase::Prepare);
        for (index, t) in job.transfers.iter().enumerate() {
            if seen[index] != t.phase {
                seen[index] = t.phase;
                self.line(job, index, t, t.phase == Phase::Done);
            }
        }
    }

    /// Prints a phase change: always in plain mode, above the bar when `keep` on a terminal.
    fn line(&self, job: &Job, index: usize, t: &Transfer, keep: bool) {
        let counts = if t.phase == Phase::Done {
            format!("{} rows copied, {} deleted", t.copied, t.deleted)
        } else if t.phase == Phase::Prepare {
            "estimating".to_owned()
        } else {
            format!(
                "copied {}, deleted {} of about {} rows",
                t.copied, t.deleted, t.estimate
            )
        };
        let text = format!(
            "[{:>9}] transfer {}/{} ({} {}): {}; {counts}",
            report::duration(self.started.elapsed().as_secs_f64()),
            index + 1,
            job.transfers.len(),
            report::what(t),
            report::route(t),
            report::phase(t.phase),
        );
        if self.plain {
            // Never panic here (println! does on a closed pipe, say `| head`): the hook runs inside
            // the operation, which must go on whatever happens to its output.
            let _ = writeln!(std::io::stdout().lock(), "{text}");
        } else if keep {
            self.bar.println(text);
        }
    }
}

//! Growth on Cloudflare: a Durable Object whose alarm advances the journaled operation of
//! [`crate::growth`] in bounded slices, so that no invocation comes near the Workers limit of
//! 1,000 subrequests, and the JSON that admin routes answer.
//!
//! A Worker journals an operation through the runner object (`POST /start`, or
//! [`GrowthRunnerClient::start`]); the object sets its alarm at once. Each alarm builds the
//! database handle from the object's `env` (a Durable Object of the same Worker script sees the
//! same D1, KV and Durable Object bindings), calls
//! [`CollegeDb::advance_growth`](crate::CollegeDb::advance_growth) one step at a time within its
//! budget (see [`RunnerSettings`]), and sets the alarm again until the job is finished. An alarm
//! that fails sets the alarm again after a backoff (1 s, doubling, at most 60 s) and records the
//! error. [`GrowthRunnerClient::kick`] sets the alarm when an operation is journaled and no alarm
//! is set: call it from every admin request, so that a lost alarm (a restart, an evicted object)
//! costs no more than the next status request.
//!
//! The journal lives in the coordinator ([`super::CoordinatorClient`]), not in the runner: the
//! runner keeps only its settings and counters, and any process that can reach the coordinator
//! (this object after a restart, or another one) resumes the operation from its last step. Each
//! slice holds the operation's lease ([`crate::growth::Lease`]) while it runs; a slice killed in
//! the middle leaves its lease behind, and the runner then waits for it to end (at most
//! [`crate::growth::LEASE_MS`] after the killed slice's last step) before it goes on.
//!
//! Routes of the runner object ([`serve_growth_runner`]):
//!
//! | request | body | answer |
//! | --- | --- | --- |
//! | `POST /start` | `{"operation": {"kind": "add_shard" \| "drain_shard", "shard"}, "settings"?}` | `{"job", "runner"}`; 409 when another operation is journaled |
//! | `POST /kick` | | `{"journaled": bool, "armed": bool, "runner"}`: sets the alarm if an operation is journaled and none is set |
//! | `GET /status` | | `{"runner"}` |

use serde::{Deserialize, Serialize};
use worker::{Method, ObjectNamespace, Request, RequestInit, Response, State};

use super::Cloudflare;
use crate::error::{Error, Result};
use crate::growth::{now_ms, GrowthOptions, GrowthStatus, Job, Operation, Phase};
use crate::router::CollegeDb;

/// The object name of the growth runner within its namespace.
pub const GROWTH_RUNNER_NAME: &str = "collegedb-growth-runner";

/// A Workers invocation's subrequest limit (D1 queries, Durable Object and KV calls count).
pub const SUBREQUEST_LIMIT: usize = 1000;

/// What an alarm never plans past: nine tenths of [`SUBREQUEST_LIMIT`].
const HARD_LIMIT: usize = SUBREQUEST_LIMIT - SUBREQUEST_LIMIT / 10;

/// Subrequests a step costs besides its rows: the journal's load and store, a handful of D1
/// statements, and the fixed cost of a transfer's preparation (schema, markers, counts, change
/// capture for a few tables).
const STEP_OVERHEAD: usize = 40;

/// The steps from a freeze to its switch (freeze, final catch-up, switch) that a catch-up step
/// must leave room for.
const FROZEN_STEPS: usize = 3;

/// How the runner paces an operation.
///
/// A step reads one page of `page_rows` rows (or makes one phase change). Its worst cost is
/// [`RunnerSettings::step_cost`], `2 × page_rows + 40` subrequests: a few D1 statements and one
/// coordinator call, plus per row of the page at most two more: a directory lookup (only for
/// rows of the moving slots in tables placed by round-robin, random or location; hash-placed
/// tables need none) and, when a drained shard's directory-placed rows move, a directory update
/// or a single-row delete. A step of a hash-placed table actually costs about five.
///
/// An alarm counts the subrequests it has sent ([`super::subrequests_sent`]) and takes another
/// step only while that count plus one worst-case step fits in `budget`. Two exceptions: a
/// transfer between its freeze and its switch goes on up to nine tenths of
/// [`SUBREQUEST_LIMIT`], so that writers of the moving slots wait for the alarm's tail rather
/// than for the next alarm; and a catch-up step, which may freeze, is taken only if three more
/// worst-case steps would fit under that line too. The first step of an alarm is always taken,
/// and no step can reach the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RunnerSettings {
    /// Rows per page (the `page_rows` of [`GrowthOptions`]). Default 100.
    pub page_rows: usize,
    /// Subrequests an alarm plans for ordinary steps. Default 500.
    pub budget: usize,
    /// At most this many steps per alarm, whatever the budget; 0 means no such limit. Default 0.
    pub max_steps: usize,
    /// Milliseconds from the end of one alarm to the next. Default 0.
    pub interval_ms: u64,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        RunnerSettings {
            page_rows: 100,
            budget: 500,
            max_steps: 0,
            interval_ms: 0,
        }
    }
}

impl RunnerSettings {
    /// The worst subrequest cost of one step: `2 × page_rows + 40`.
    pub fn step_cost(&self) -> usize {
        2 * self.page_rows.max(1) + STEP_OVERHEAD
    }

    /// Pages small enough that one step fits under nine tenths of the limit, and a budget of
    /// at least one step.
    fn sanitized(mut self) -> Self {
        self.page_rows = self.page_rows.clamp(1, (HARD_LIMIT - STEP_OVERHEAD) / 2);
        self.budget = self.budget.clamp(self.step_cost(), HARD_LIMIT);
        self
    }
}

/// The runner's own record, kept in its storage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RunnerRecord {
    /// The settings of the operation in progress.
    pub settings: RunnerSettings,
    /// Alarms run.
    pub alarms: u64,
    /// Steps taken.
    pub steps: u64,
    /// Alarms that failed in a row (reset by one that succeeds).
    pub failures: u32,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// When the last alarm ended, in milliseconds since the Unix epoch.
    pub last_run_ms: u64,
    /// Subrequests the isolate sent during the last alarm ([`super::subrequests_sent`]; an upper
    /// bound of the alarm's own).
    pub last_subrequests: u64,
    /// The most subrequests the isolate sent during one alarm of the operation.
    pub max_subrequests: u64,
    /// Set while the runner waits for the lease of a slice that was killed in the middle
    /// ([`crate::growth::LEASE_MS`] after its last step): when it ends.
    pub lease_wait_until_ms: Option<u64>,
    /// Alarms that found the lease held and waited for it.
    pub lease_waits: u64,
}

const RECORD: &str = "runner";

/// The runner's record, as its object stores it (for wrappers of [`serve_growth_runner`]).
pub async fn runner_record(state: &State) -> worker::Result<RunnerRecord> {
    load_record(state).await
}

async fn load_record(state: &State) -> worker::Result<RunnerRecord> {
    Ok(state
        .storage()
        .get::<RunnerRecord>(RECORD)
        .await?
        .unwrap_or_default())
}

async fn runner_json(state: &State, record: &RunnerRecord) -> worker::Result<serde_json::Value> {
    let alarm = state.storage().get_alarm().await?;
    let mut value = serde_json::to_value(record)?;
    value["alarmAt"] = serde_json::json!(alarm);
    value["stepCost"] = serde_json::json!(record.settings.step_cost());
    Ok(value)
}

fn worker_error(error: Error) -> worker::Error {
    worker::Error::RustError(format!("{}: {error}", error.code()))
}

fn json_status(value: &serde_json::Value, status: u16) -> worker::Result<Response> {
    Ok(Response::from_json(value)?.with_status(status))
}

#[derive(Debug, Serialize, Deserialize)]
struct StartBody {
    operation: Operation,
    #[serde(default)]
    settings: Option<RunnerSettings>,
}

/// Serves one request inside the growth runner's Durable Object (see the module docs for the
/// routes). `db` is a handle built from the object's `env`.
pub async fn serve_growth_runner(
    state: &State,
    db: &CollegeDb<Cloudflare>,
    mut request: Request,
) -> worker::Result<Response> {
    let path = request.path();
    match (request.method(), path.as_str()) {
        (Method::Post, "/start") => {
            let body: StartBody = match serde_json::from_str(&request.text().await?) {
                Ok(body) => body,
                Err(error) => return Response::error(format!("POST /start: {error}"), 400),
            };
            let job = match db.start_growth(body.operation).await {
                Ok(job) => job,
                Err(Error::ConfigInvalid(message)) => {
                    return json_status(
                        &serde_json::json!({ "error": message, "code": "CONFIG_INVALID" }),
                        409,
                    )
                }
                Err(error) => return Err(worker_error(error)),
            };
            let mut record = load_record(state).await?;
            if !job.is_finished() {
                record.settings = body.settings.unwrap_or_default().sanitized();
                record.failures = 0;
                record.last_error = None;
                record.max_subrequests = 0;
                state.storage().put(RECORD, &record).await?;
                if !ALARM_RUNNING.with(|r| r.get()) && state.storage().get_alarm().await?.is_none()
                {
                    state.storage().set_alarm(0).await?;
                }
            }
            Response::from_json(&serde_json::json!({
                "job": job_json(&job, now_ms()),
                "runner": runner_json(state, &record).await?,
            }))
        }
        (Method::Post, "/kick") => {
            // Reads the journal only: finishing a job is the alarm's (it then updates the
            // coordinator's registry and statistics).
            let journaled = db
                .growth_status()
                .await
                .map_err(worker_error)?
                .running
                .is_some();
            // While an alarm runs, `get_alarm` answers none; that alarm sets the next one itself.
            let armed = journaled
                && !ALARM_RUNNING.with(|r| r.get())
                && state.storage().get_alarm().await?.is_none();
            if armed {
                state.storage().set_alarm(0).await?;
            }
            let record = load_record(state).await?;
            Response::from_json(&serde_json::json!({
                "journaled": journaled,
                "armed": armed,
                "runner": runner_json(state, &record).await?,
            }))
        }
        (Method::Get, "/status") => {
            let record = load_record(state).await?;
            Response::from_json(
                &serde_json::json!({ "runner": runner_json(state, &record).await? }),
            )
        }
        _ => Response::error(format!("no route for {:?} {path}", request.method()), 404),
    }
}

/// The body of the runner object's `alarm`: advances the journaled operation within the budget
/// of [`RunnerSettings`], then sets the next alarm unless the operation finished. A failure is
/// recorded and retried after a backoff; the alarm itself never fails, so the platform's own
/// retries never run two slices at once.
pub async fn run_growth_alarm(
    state: &State,
    db: &CollegeDb<Cloudflare>,
) -> worker::Result<Response> {
    let _running = AlarmRunning::start();
    let mut record = load_record(state).await?;
    record.alarms += 1;
    let sent = super::subrequests_sent();
    let outcome = advance_slice(db, &record.settings).await;
    record.last_run_ms = now_ms();
    record.last_subrequests = super::subrequests_sent() - sent;
    record.max_subrequests = record.max_subrequests.max(record.last_subrequests);
    match outcome {
        Ok(slice) => {
            record.lease_wait_until_ms = None;
            record.steps += slice.steps as u64;
            record.failures = 0;
            record.last_error = None;
            let finished = slice.job.as_ref().is_none_or(Job::is_finished);
            if finished {
                if let Some(job) = &slice.job {
                    if let Err(error) = after_finish(db, job).await {
                        worker::console_error!("collegedb growth: after the operation: {error}");
                    }
                }
            } else {
                state
                    .storage()
                    .set_alarm(record.settings.interval_ms as i64)
                    .await?;
            }
        }
        Err(error) => match lease_held(db, &error).await {
            Some(until) => {
                // A slice killed in the middle (this object's previous life: alarms of one
                // object never overlap) still holds the operation's lease. Wait for it to end;
                // not a failure.
                record.lease_wait_until_ms = Some(until);
                record.lease_waits += 1;
                let wait = until.saturating_sub(now_ms()) + 250;
                state.storage().set_alarm(wait as i64).await?;
            }
            None => {
                record.failures = record.failures.saturating_add(1);
                record.last_error = Some(format!("{}: {error}", error.code()));
                let backoff = (1000u64 << record.failures.min(6).saturating_sub(1)).min(60_000);
                worker::console_error!(
                    "collegedb growth: alarm failed ({} in a row), again in {backoff} ms: {error}",
                    record.failures
                );
                state.storage().set_alarm(backoff as i64).await?;
            }
        },
    }
    state.storage().put(RECORD, &record).await?;
    Response::ok("")
}

thread_local! {
    /// Whether this isolate is running the runner's alarm. Kept in memory on purpose: a killed
    /// isolate leaves no stale mark behind.
    static ALARM_RUNNING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the alarm as running until dropped.
struct AlarmRunning;

impl AlarmRunning {
    fn start() -> Self {
        ALARM_RUNNING.with(|r| r.set(true));
        AlarmRunning
    }
}

impl Drop for AlarmRunning {
    fn drop(&mut self) {
        ALARM_RUNNING.with(|r| r.set(false));
    }
}

/// When `error` refused a slice because the operation's lease is held: when the lease ends.
async fn lease_held(db: &CollegeDb<Cloudflare>, error: &Error) -> Option<u64> {
    if !matches!(error, Error::ConfigInvalid(_)) {
        return None;
    }
    let status = db.growth_status().await.ok()?;
    let until = status.running?.lease?.until_ms;
    (until > now_ms()).then_some(until)
}

/// What one alarm did.
struct Slice {
    job: Option<Job>,
    steps: usize,
}

/// Advances the journaled operation one step at a time within `settings`' budget.
async fn advance_slice(db: &CollegeDb<Cloudflare>, settings: &RunnerSettings) -> Result<Slice> {
    let settings = settings.sanitized();
    let options = GrowthOptions::default().page_rows(settings.page_rows);
    let cost = settings.step_cost();
    let sent_before = super::subrequests_sent();
    // Loads the journal (one coordinator call) without taking a step.
    let mut job = db.advance_growth(&options, 0).await?;
    let mut steps = 0usize;
    while let Some(current) = job.as_ref().filter(|job| !job.is_finished()) {
        let phase = current
            .transfers
            .get(current.current)
            .map_or(Phase::Done, |t| t.phase);
        let spent = (super::subrequests_sent() - sent_before) as usize;
        let frozen = matches!(phase, Phase::Freeze | Phase::FinalCatchUp | Phase::Switch);
        let fits = steps == 0
            || match phase {
                _ if frozen => spent + cost <= HARD_LIMIT,
                Phase::CatchUp => {
                    spent + cost <= settings.budget
                        && spent + (1 + FROZEN_STEPS) * cost <= HARD_LIMIT
                }
                _ => spent + cost <= settings.budget,
            };
        let paced = settings.max_steps == 0 || steps < settings.max_steps;
        if !fits || !(paced || frozen) {
            break;
        }
        job = db.advance_growth(&options, 1).await?;
        steps += 1;
    }
    Ok(Slice { job, steps })
}

/// After an operation finished: the coordinator's registry follows the map, and its row counts
/// are reset from the shards (the moves write rows behind the typed layer's counting).
async fn after_finish(db: &CollegeDb<Cloudflare>, job: &Job) -> Result<()> {
    match &job.operation {
        Operation::AddShard { shard } => db.coordinator().add_shard(shard).await?,
        Operation::DrainShard { shard } => db.coordinator().remove_shard(shard).await?,
        Operation::Reassign { .. } => {}
    }
    super::recount_stats(db).await.map(drop)
}

/// A journal as the admin routes show it: the operation, the transfer in progress, rows copied,
/// caught up, deleted and estimated, the rate in rows per second and the seconds left.
pub fn job_json(job: &Job, now_ms: u64) -> serde_json::Value {
    let (kind, shard) = match &job.operation {
        Operation::AddShard { shard } => ("add_shard", shard),
        Operation::DrainShard { shard } => ("drain_shard", shard),
        Operation::Reassign { shard, .. } => ("reassign", shard),
    };
    let transfer = job.transfers.get(job.current).map(|t| {
        serde_json::json!({
            "from": t.from,
            "to": t.to,
            "slots": t.slots.len(),
            "relocation": t.is_relocation(),
            "phase": t.phase,
            "copied": t.copied,
            "caughtUp": t.caught_up,
            "deleted": t.deleted,
            "estimated": t.estimate,
            "passes": t.passes,
        })
    });
    serde_json::json!({
        "operation": job.operation.to_string(),
        "kind": kind,
        "shard": shard,
        "fromVersion": job.from_version,
        "transfer": (job.current + 1).min(job.transfers.len()),
        "transfers": job.transfers.len(),
        "phase": job.transfers.get(job.current).map_or(Phase::Done, |t| t.phase),
        "current": transfer,
        "rowsCopied": job.rows_copied(),
        "rowsCaughtUp": job.transfers.iter().map(|t| t.caught_up).sum::<u64>(),
        "rowsDeleted": job.rows_deleted(),
        "rowsEstimated": job.rows_estimated(),
        "rowsPerSecond": job.rate(now_ms),
        "etaSeconds": job.eta_seconds(now_ms),
        "startedMs": job.started_ms,
        "finishedMs": job.finished_ms,
        "finished": job.is_finished(),
        "unroutable": job.unroutable,
        "toVersion": job.to_version,
        "leaseUntilMs": job.lease.as_ref().map(|lease| lease.until_ms),
        "skippedTables": job.skipped_tables,
    })
}

/// The status the admin routes answer: the stored map's version, every configured shard with the
/// slots it owns (`standby`: configured, owning none), the operation in progress and the last
/// finished one (see [`job_json`]).
pub fn growth_status_json(db: &CollegeDb<Cloudflare>, status: &GrowthStatus) -> serde_json::Value {
    let now = now_ms();
    let shards: Vec<serde_json::Value> = db
        .list_known_shards()
        .into_iter()
        .map(|name| {
            let slots = status.map.slots_of(name).len();
            serde_json::json!({ "shard": name, "slots": slots, "standby": slots == 0 })
        })
        .collect();
    serde_json::json!({
        "mapVersion": status.map.version(),
        "shards": shards,
        "running": status.running.as_ref().map(|job| job_json(job, now)),
        "last": status.last.as_ref().map(|job| job_json(job, now)),
    })
}

/// The typed client of the growth runner object, for a Worker's admin routes.
pub struct GrowthRunnerClient {
    namespace: ObjectNamespace,
}

fn failed(error: impl std::fmt::Display) -> Error {
    Error::CoordinatorUnavailable(format!("growth runner: {error}"))
}

impl GrowthRunnerClient {
    /// Wraps the runner's Durable Object namespace binding.
    pub fn new(namespace: ObjectNamespace) -> Self {
        GrowthRunnerClient { namespace }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, serde_json::Value)> {
        let stub = self
            .namespace
            .get_by_name(GROWTH_RUNNER_NAME)
            .map_err(failed)?;
        let mut init = RequestInit::new();
        init.with_method(method).with_body(body.map(Into::into));
        let url = format!("https://collegedb-growth-runner{path}");
        let request = Request::new_with_init(&url, &init).map_err(failed)?;
        let mut response = stub.fetch_with_request(request).await.map_err(failed)?;
        let status = response.status_code();
        let text = response.text().await.map_err(failed)?;
        match serde_json::from_str(&text) {
            Ok(value) if status == 200 || status == 409 => Ok((status, value)),
            _ => Err(failed(format!("{path}: status {status}: {text}"))),
        }
    }

    /// `POST /start`: journals `operation` and sets the alarm. While another operation is
    /// journaled, refused with [`Error::ConfigInvalid`] (the runner answers 409).
    pub async fn start(
        &self,
        operation: &Operation,
        settings: Option<RunnerSettings>,
    ) -> Result<serde_json::Value> {
        let body = serde_json::to_string(&serde_json::json!({
            "operation": operation,
            "settings": settings,
        }))
        .map_err(failed)?;
        match self.call(Method::Post, "/start", Some(body)).await? {
            (409, value) => Err(Error::ConfigInvalid(
                value["error"].as_str().unwrap_or("refused").to_owned(),
            )),
            (_, value) => Ok(value),
        }
    }

    /// `POST /kick`: sets the alarm if an operation is journaled and none is set.
    pub async fn kick(&self) -> Result<serde_json::Value> {
        self.call(Method::Post, "/kick", None)
            .await
            .map(|(_, value)| value)
    }

    /// `GET /status`: the runner's settings and counters.
    pub async fn status(&self) -> Result<serde_json::Value> {
        self.call(Method::Get, "/status", None)
            .await
            .map(|(_, value)| value)
    }
}

//! Growth benchmark in local workerd: the Worker example grows from 3 to 4 shards (`add_shard`
//! of its standby `DB_APAC`) while clients read and write, against a raw copy-and-delete of the
//! same number of rows between the same D1 databases through the same Worker, in the same run.
//!
//! ```text
//! scripts/build-worker.sh
//! cargo run --release -p collegedb-tests --features workerd --bin workerd-move-bench
//! WORKERD_MOVE_ROWS=50000 cargo run --release -p collegedb-tests --features workerd --bin workerd-move-bench
//! ```
//!
//! 1. **Load.** `WORKERD_MOVE_ROWS` (default [`DEFAULT_ROWS`]) hash-placed `users` through
//!    `POST /users/batch`, spread by the stored map over the three serving shards.
//! 2. **Idle latency.** [`CLIENTS`] client threads loop `GET /users/{id}` (`find`) and `POST
//!    /users/upsert` (`upsert`, an existing key's row with a new value) on random loaded keys for
//!    [`IDLE`], after a warm-up that is not measured.
//! 3. **The move under load.** `POST /admin/shards/DB_APAC/add` (the runner's default settings,
//!    or the JSON of `WORKERD_MOVE_SETTINGS`, e.g. `{"pageRows": 200}`) while the same loops
//!    run; `GET /admin/growth` every [`POLL`] until the job is done. Its duration is the
//!    journal's (`startedMs` to `finishedMs`); the loops' latencies are compared with step 2.
//! 4. **Verify.** Every key of every shard is read on the shard (`POST /raw/{shard}`, in pages):
//!    each loaded key exactly once, nothing else; a sample is read back through the routes and
//!    located on the shard that holds it.
//! 5. **The move alone.** `drain_shard(DB_APAC)` takes the rows back (verified), then
//!    `add_shard(DB_APAC)` runs again with nothing else running (verified): the rate of the move
//!    alone, like the baseline's.
//! 6. **Baseline.** Each serving shard's `users` is copied into a scratch table `bench_users`
//!    (on the shard itself, not timed); then, from each, exactly as many rows as step 5 moved off
//!    it go to an empty `bench_users` on `DB_APAC` through the Worker's benchmark route `POST
//!    /bench/move` (raw D1 statements: pages of 100 rows, one `SELECT`, one batch of `INSERT`s
//!    of at most 100 bound values each, one `DELETE` of the page's keys; no routing, no journal,
//!    no fence), [`BASELINE_REQUEST_ROWS`] rows per request, with nothing else running. The
//!    counts are checked and the scratch tables dropped.
//!
//! Prints a Markdown table. The server is stopped at the end, whatever the outcome (also on a
//! panic: [`Workerd`]'s drop).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use collegedb_tests::workerd::{Reply, Workerd};
use serde_json::{json, Value};

const SERVING: [&str; 3] = ["DB_EAST", "DB_WEST", "DB_EU"];
const STANDBY: &str = "DB_APAC";
/// Rows loaded unless `WORKERD_MOVE_ROWS` says otherwise.
const DEFAULT_ROWS: usize = 20_000;
/// Rows per `POST /users/batch`, and the threads that load.
const LOAD_CHUNK: usize = 500;
const LOAD_THREADS: usize = 2;
/// Client threads reading and writing during the idle measurement and the move.
const CLIENTS: usize = 2;
/// The idle measurement, and the warm-up before it.
const IDLE: Duration = Duration::from_secs(15);
const WARM_UP: Duration = Duration::from_secs(5);
/// How often the status is polled while an operation runs.
const POLL: Duration = Duration::from_millis(250);
/// Rows per request of the baseline (20 pages: 60 D1 calls per request).
const BASELINE_REQUEST_ROWS: usize = 2_000;
/// Rows per page when keys are read back for verification.
const KEY_PAGE: usize = 5_000;

fn rows() -> usize {
    std::env::var("WORKERD_MOVE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROWS)
}

fn key(i: usize) -> String {
    format!("mv-{i:07}")
}

fn user(id: &str, karma: i64) -> Value {
    json!({ "id": id, "name": format!("User {id}"), "email": format!("{id}@example.com"),
            "karma": karma, "active": true, "avatar": null, "profile": { "k": karma } })
}

fn all_shards() -> impl Iterator<Item = &'static str> {
    SERVING.into_iter().chain([STANDBY])
}

fn ok(reply: Reply, what: &str, status: u16) -> Value {
    assert_eq!(reply.status, status, "{what}: {}", reply.text);
    reply.json
}

/// Runs `sql` on one shard through `POST /raw/{shard}` and returns the rows.
fn raw(server: &Workerd, shard: &str, sql: &str, params: Value) -> Vec<Value> {
    let reply = server.post(
        &format!("/raw/{shard}"),
        &json!({ "sql": sql, "params": params }),
    );
    match ok(reply, &format!("{shard}: {sql}"), 200) {
        Value::Array(rows) => rows,
        other => panic!("{shard}: {sql}: not rows: {other}"),
    }
}

fn count(server: &Workerd, shard: &str, table: &str) -> usize {
    let rows = raw(
        server,
        shard,
        &format!("SELECT COUNT(*) AS n FROM {table}"),
        json!([]),
    );
    rows[0]["n"].as_u64().expect("a count") as usize
}

/// Every key of `users` on `shard`, read on the shard in pages.
fn keys_on(server: &Workerd, shard: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    loop {
        let after = keys.last().cloned().unwrap_or_default();
        let page = raw(
            server,
            shard,
            "SELECT id FROM users WHERE id > ? ORDER BY id LIMIT ?",
            json!([after, KEY_PAGE]),
        );
        let n = page.len();
        keys.extend(page.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        if n < KEY_PAGE {
            return keys;
        }
    }
}

/// Checks that every loaded key is on exactly one shard and nothing else is, and that a sample
/// reads back through the routes from the shard that holds it. Returns the rows per shard.
fn verify(server: &Workerd, rows: usize) -> BTreeMap<&'static str, usize> {
    let mut holder: HashMap<String, &str> = HashMap::with_capacity(rows);
    let mut per_shard = BTreeMap::new();
    for shard in all_shards() {
        let keys = keys_on(server, shard);
        per_shard.insert(shard, keys.len());
        for k in keys {
            if let Some(other) = holder.insert(k.clone(), shard) {
                panic!("{k} is on {other} and on {shard}");
            }
        }
    }
    let missing: Vec<String> = (0..rows)
        .map(key)
        .filter(|k| !holder.contains_key(k))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "rows missing, first: {missing:?}");
    assert_eq!(holder.len(), rows, "rows nobody loaded: {per_shard:?}");
    for i in (0..rows).step_by((rows / 100).max(1)) {
        let k = key(i);
        let found = ok(server.get(&format!("/users/{k}")), &k, 200);
        assert_eq!(found["id"], k.as_str());
        let at = ok(server.get(&format!("/users/{k}/shard")), &k, 200);
        assert_eq!(at["shard"], holder[&k], "{k}");
    }
    per_shard
}

/// What one client loop saw.
#[derive(Default)]
struct Latencies {
    find_ms: Vec<f64>,
    upsert_ms: Vec<f64>,
    slot_moving: u64,
    errors: Vec<String>,
}

impl Latencies {
    fn merge(&mut self, other: Latencies) {
        self.find_ms.extend(other.find_ms);
        self.upsert_ms.extend(other.upsert_ms);
        self.slot_moving += other.slot_moving;
        self.errors.extend(other.errors);
    }

    fn sort(&mut self) {
        self.find_ms.sort_by(f64::total_cmp);
        self.upsert_ms.sort_by(f64::total_cmp);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One client: `find` then `upsert` on random loaded keys, until `stop` or `until`.
fn client(
    server: &Workerd,
    rows: usize,
    seed: u64,
    stop: &AtomicBool,
    until: Instant,
) -> Latencies {
    // A small xorshift: reproducible choices per client.
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut seen = Latencies::default();
    let mut karma = seed as i64 * 1_000_000_000;
    let note = |seen: &mut Latencies, what: &str, reply: &Reply| match reply.status {
        200 => true,
        503 if reply.json["code"] == "SLOT_MOVING" => {
            seen.slot_moving += 1;
            true
        }
        status => {
            seen.errors.push(format!("{what}: {status} {}", reply.text));
            false
        }
    };
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        let k = key(next() as usize % rows);
        let sent = Instant::now();
        let reply = server.get(&format!("/users/{k}"));
        let ms = sent.elapsed().as_secs_f64() * 1000.0;
        if note(&mut seen, &format!("find {k}"), &reply) {
            seen.find_ms.push(ms);
        }
        karma += 1;
        let k = key(next() as usize % rows);
        let body = user(&k, karma).to_string();
        let sent = Instant::now();
        let reply = server.request("POST", "/users/upsert", Some(&body));
        let ms = sent.elapsed().as_secs_f64() * 1000.0;
        if note(&mut seen, &format!("upsert {k}"), &reply) {
            seen.upsert_ms.push(ms);
        }
    }
    seen
}

/// Sets its flag when dropped.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs [`CLIENTS`] client loops while `work` runs (at most until `limit`), and returns both.
fn with_clients<T>(
    server: &Workerd,
    rows: usize,
    limit: Instant,
    work: impl FnOnce() -> T,
) -> (T, Latencies) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let stop = &stop;
                scope.spawn(move || client(server, rows, c as u64 + 1, stop, limit))
            })
            .collect();
        // The clients stop when `work` returns or panics (the scope waits for them either way).
        let stopping = Stop(&stop);
        let result = work();
        drop(stopping);
        let mut all = Latencies::default();
        for thread in threads {
            all.merge(thread.join().expect("client thread"));
        }
        all.sort();
        (result, all)
    })
}

/// A finished growth operation.
struct Moved {
    /// The journal's duration, `startedMs` to `finishedMs`.
    seconds: f64,
    /// The last status (`last` is the finished job, `runner` the runner's counters).
    status: Value,
}

/// Starts `operation` on the standby shard and polls the status until it is done.
fn grow(server: &Workerd, operation: &str, settings: &str, limit: Duration) -> Moved {
    let path = format!("/admin/shards/{STANDBY}/{operation}");
    let started = ok(server.request("POST", &path, Some(settings)), &path, 202);
    let kind = format!("{operation}_shard");
    assert_eq!(started["job"]["kind"], kind.as_str(), "{started}");
    let deadline = Instant::now() + limit;
    loop {
        let status = ok(server.get("/admin/growth"), "status", 200);
        if status["running"].is_null() {
            let last = &status["last"];
            assert_eq!(last["kind"], kind.as_str(), "{status}");
            assert_eq!(last["finished"], true, "{status}");
            let ms = last["finishedMs"].as_u64().unwrap() - last["startedMs"].as_u64().unwrap();
            return Moved {
                seconds: ms as f64 / 1000.0,
                status,
            };
        }
        assert!(
            Instant::now() < deadline,
            "{operation} did not finish within {} s: {status}\n{}",
            limit.as_secs(),
            server.log_tail()
        );
        std::thread::sleep(POLL);
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Prints an operation's figures; `before` is the runner's record before it started (its
/// counters add up over operations).
fn print_runner(label: &str, moved: &Moved, before: &Value) {
    let (last, runner) = (&moved.status["last"], &moved.status["runner"]);
    let delta =
        |name: &str| runner[name].as_u64().unwrap_or(0) - before[name].as_u64().unwrap_or(0);
    println!(
        "{label}: {:.2} s, rows copied {}, caught up {}, deleted {}; alarms {}, steps {}, \
         most subrequests in one alarm so far {}, failures {}",
        moved.seconds,
        last["rowsCopied"],
        last["rowsCaughtUp"],
        last["rowsDeleted"],
        delta("alarms"),
        delta("steps"),
        runner["maxSubrequests"],
        runner["failures"],
    );
}

fn main() {
    let rows = rows();
    let settings = std::env::var("WORKERD_MOVE_SETTINGS").unwrap_or_default();
    // An operation of this size finishes well within this, or something is wrong.
    let limit = Duration::from_secs(300 + rows as u64 / 20);
    println!(
        "machine: {} cores, load average {} at start; {rows} rows, {CLIENTS} clients, runner settings {}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        if settings.is_empty() { "default" } else { &settings },
    );
    // The server is stopped when this value drops, also when a step panics.
    let server = Workerd::start();
    let setup = ok(server.post("/setup", &json!({})), "setup", 200);
    assert_eq!(setup["coordinator"]["shards"], 3, "{setup}");

    // 1. Load.
    let started = Instant::now();
    let chunks: Vec<Vec<usize>> = (0..rows)
        .collect::<Vec<_>>()
        .chunks(LOAD_CHUNK)
        .map(<[usize]>::to_vec)
        .collect();
    std::thread::scope(|scope| {
        for part in chunks.chunks(chunks.len().div_ceil(LOAD_THREADS).max(1)) {
            let server = &server;
            scope.spawn(move || {
                for chunk in part {
                    let batch: Vec<Value> = chunk.iter().map(|&i| user(&key(i), 0)).collect();
                    let reply = server.post("/users/batch", &Value::Array(batch));
                    assert_eq!(reply.json["inserted"], chunk.len(), "{}", reply.text);
                }
            });
        }
    });
    let loaded = verify(&server, rows);
    println!(
        "loaded {rows} rows in {:.1} s: {loaded:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(loaded[STANDBY], 0, "the standby shard holds nothing");

    // 2. Idle latency, after a warm-up.
    let far = Instant::now() + limit;
    with_clients(&server, rows, far, || std::thread::sleep(WARM_UP));
    let (_, mut idle) = with_clients(&server, rows, far, || std::thread::sleep(IDLE));

    // 3. The move under load.
    let (busy_move, mut busy) = with_clients(&server, rows, Instant::now() + limit, || {
        grow(&server, "add", &settings, limit)
    });
    for seen in [&idle, &busy] {
        assert!(seen.errors.is_empty(), "client errors: {:?}", seen.errors);
    }

    // 4. Verify.
    let after_busy = verify(&server, rows);
    let busy_rows = after_busy[STANDBY];
    println!("after the move under load: {after_busy:?}");
    print_runner("add_shard under load", &busy_move, &Value::Null);

    // 5. The move alone, after a drain that takes the rows back.
    let drain = grow(&server, "drain", &settings, limit);
    let before = verify(&server, rows);
    assert_eq!(before[STANDBY], 0, "{before:?}");
    print_runner("drain_shard alone", &drain, &busy_move.status["runner"]);
    let alone = grow(&server, "add", &settings, limit);
    let after = verify(&server, rows);
    println!("after the move alone: {after:?}");
    print_runner("add_shard alone", &alone, &drain.status["runner"]);
    let alone_rows = after[STANDBY];
    let share = alone_rows as f64 / rows as f64;
    assert!((0.18..=0.32).contains(&share), "{after:?}");

    // 6. Baseline: the same number of rows off each serving shard, raw.
    let schema = raw(
        &server,
        "DB_EAST",
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'users'",
        json!([]),
    );
    let schema = schema[0]["sql"].as_str().expect("the users schema");
    let scratch = schema.replacen("users", "bench_users", 1);
    for shard in all_shards() {
        raw(
            &server,
            shard,
            "DROP TABLE IF EXISTS bench_users",
            json!([]),
        );
        raw(&server, shard, &scratch, json!([]));
    }
    for shard in SERVING {
        raw(
            &server,
            shard,
            "INSERT INTO bench_users SELECT * FROM users",
            json!([]),
        );
    }
    let mut baseline = Duration::ZERO;
    let mut requests = 0;
    for shard in SERVING {
        let mut left = before[shard] - after[shard];
        while left > 0 {
            let n = left.min(BASELINE_REQUEST_ROWS);
            let body = json!({ "from": shard, "to": STANDBY, "table": "bench_users",
                               "key": "id", "rows": n });
            let sent = Instant::now();
            let reply = server.post("/bench/move", &body);
            baseline += sent.elapsed();
            requests += 1;
            assert_eq!(ok(reply, "bench/move", 200)["moved"], n);
            left -= n;
        }
    }
    for shard in SERVING {
        let moved = before[shard] - after[shard];
        let left = count(&server, shard, "bench_users");
        assert_eq!(left, after[shard] - moved, "{shard}");
        assert!(moved > 0, "{shard}");
    }
    assert_eq!(count(&server, STANDBY, "bench_users"), alone_rows);
    for shard in all_shards() {
        raw(&server, shard, "DROP TABLE bench_users", json!([]));
    }
    let baseline_seconds = baseline.as_secs_f64();

    // Report.
    let base_rate = alone_rows as f64 / baseline_seconds;
    let alone_rate = alone_rows as f64 / alone.seconds;
    let busy_rate = busy_rows as f64 / busy_move.seconds;
    println!("\nload average at the end: {}\n", load_average());
    println!("| figure | raw copy-and-delete | collegedb | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| rows moved per second, alone ({alone_rows} of {rows} rows, 3 -> 4 shards) | {base_rate:.0} | {alone_rate:.0} | {:.2} of raw |",
        alone_rate / base_rate
    );
    println!(
        "| move duration, alone | {baseline_seconds:.2} s ({requests} requests, nothing else running) | {:.2} s (online) | - |",
        alone.seconds
    );
    println!(
        "| rows moved per second with {CLIENTS} clients reading and writing ({busy_rows} rows) | - | {busy_rate:.0} | {:.2} of raw |",
        busy_rate / base_rate
    );
    println!(
        "| move duration with {CLIENTS} clients | - | {:.2} s | - |",
        busy_move.seconds
    );
    let drain_rate = busy_rows as f64 / drain.seconds;
    println!(
        "| `drain_shard` of the new shard, alone ({busy_rows} rows back) | - | {drain_rate:.0} rows/s ({:.2} s) | {:.2} of raw |",
        drain.seconds,
        drain_rate / base_rate
    );
    for (name, idle, busy) in [
        ("find", &mut idle.find_ms, &mut busy.find_ms),
        ("upsert", &mut idle.upsert_ms, &mut busy.upsert_ms),
    ] {
        let (a50, b50) = (percentile(idle, 0.5), percentile(busy, 0.5));
        let (a99, b99) = (percentile(idle, 0.99), percentile(busy, 0.99));
        println!(
            "| `{name}` p50 / p99, idle vs during the move | {a50:.1} / {a99:.1} ms | {b50:.1} / {b99:.1} ms | {:.2}x / {:.2}x |",
            b50 / a50,
            b99 / a99
        );
        println!(
            "| `{name}` calls, idle {} s vs during the move | {} | {} | - |",
            IDLE.as_secs(),
            idle.len(),
            busy.len()
        );
    }
    println!(
        "\nSLOT_MOVING answers: {} idle, {} during the move",
        idle.slot_moving, busy.slot_moving
    );
}

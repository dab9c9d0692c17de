//! Load benchmark of the Worker example in local workerd, from this second process on 127.0.0.1.
//!
//! ```text
//! scripts/build-worker.sh
//! cargo run --release -p collegedb-tests --features workerd --bin workerd-load
//! ```
//!
//! Two servers run side by side under `wrangler dev --local`, each on its own port: the Worker
//! example, and the raw D1 Worker of `tests/workerd-raw` (plain JavaScript, the same SQL as the
//! example's hash-placed `users` insert and find, the same JSON in and out, one D1 database).
//!
//! 1. **Worker CPU per request against raw D1.** For hash inserts and hash reads, [`TRIALS`]
//!    trials, each running the scenario on the example and on the raw Worker one after the other
//!    (interleaved, the order alternating per trial), each run [`CPU_TRIAL_TIME`] long (at most
//!    [`CPU_TRIAL_REQUESTS`] requests) from [`CLIENTS`] client threads. The CPU is the workerd
//!    process's user + system time (`/proc/<pid>/stat`) before and after the run, divided by the
//!    requests: the Worker, its Durable Objects and the local D1 simulator all run inside that
//!    process, so this is everything a request costs the server. Prints each side, the ratio
//!    (target: at most [`TARGET_RATIO`]) and the throughput of both. Before the trials each
//!    server gets a warm-up (not measured), and the idle CPU of each workerd is printed: it is
//!    inside every measurement, so it should be near zero.
//! 2. **Every scenario of the example.** Each sends a bounded number of requests (and stops after
//!    60 s regardless) from [`CLIENTS`] threads, and reports throughput, p50/p99 latency, workerd
//!    CPU per request and the directory operations per request that the runtime counted (the
//!    `x-collegedb-directory-ops` header). One baseline is a point read sent straight to one D1
//!    shard through the same Worker, HTTP and JSON path, with no routing.
//!
//! 3. **Durable Object shards against D1 shards.** The example runs a third time, with its four
//!    shards in Durable Objects with SQLite storage (`COLLEGEDB_CONFIG` replaced by
//!    [`OBJECT_SHARDS`]). Point reads and new-key inserts of hash-placed users go to the example
//!    on D1 shards, the example on Durable Object shards and the raw D1 Worker, interleaved per
//!    trial as in part 1, and each side's requests per second and workerd CPU per request are
//!    printed with the ratios.
//!
//! `WORKERD_LOAD_PART=1` runs part 1 only, `WORKERD_LOAD_PART=3` part 3 only. Finally it prints the release bundle's size, raw and
//! gzip. Both servers are stopped at the end,
//! whatever the outcome.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collegedb_tests::workerd::Workerd;
use serde_json::json;

/// Client threads (requests in flight).
const CLIENTS: usize = 8;
/// Part 2: requests per insert scenario, and per read scenario.
const INSERTS: usize = 600;
const READS: usize = 1_500;
/// Part 2: a scenario stops after this long, whatever its count.
const TIME_LIMIT: Duration = Duration::from_secs(60);
/// Part 1: trials, the length of each run, and the most requests one run sends.
const TRIALS: usize = 5;
const CPU_TRIAL_TIME: Duration = Duration::from_secs(6);
const CPU_TRIAL_REQUESTS: usize = 50_000;
/// Part 1: warm-up requests per server and scenario before measuring, and their time limit.
const WARM_UP_REQUESTS: usize = 1_000;
const WARM_UP_TIME: Duration = Duration::from_secs(5);
/// Part 1: the target, example CPU per request over raw D1 CPU per request.
const TARGET_RATIO: f64 = 1.2;
/// Part 3: the example's configuration with every shard in a Durable Object.
const OBJECT_SHARDS: &str = r#"{"shards": [
    {"name": "DB_EAST", "region": "enam", "durable_object": "SHARD_DO"},
    {"name": "DB_WEST", "region": "wnam", "durable_object": "SHARD_DO"},
    {"name": "DB_EU", "region": "weur", "durable_object": "SHARD_DO"},
    {"name": "DB_APAC", "region": "apac", "durable_object": "SHARD_DO"}],
  "strategy": {"read": "hash", "write": "hash"}, "target_region": "enam", "allow_flush": true}"#;

struct Outcome {
    name: String,
    requests: usize,
    elapsed: Duration,
    latencies_ms: Vec<f64>,
    directory_reads: u64,
    directory_writes: u64,
    cpu: Duration,
}

impl Outcome {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_ms_per_request(&self) -> f64 {
        self.cpu.as_secs_f64() * 1000.0 / self.requests as f64
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

type MakeRequest = dyn Fn(usize) -> (&'static str, String, Option<String>) + Send + Sync;

/// Sends up to `count` requests made by `request(i)` from [`CLIENTS`] threads, for at most
/// `time_limit`, and measures the server's workerd CPU over the run.
fn run(
    server: &Workerd,
    name: impl Into<String>,
    expected_status: u16,
    count: usize,
    time_limit: Duration,
    request: Arc<MakeRequest>,
) -> Outcome {
    let base = server.base().to_owned();
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new((
        Vec::with_capacity(count.min(100_000)),
        0u64,
        0u64,
    )));
    let cpu_before = server.workerd_cpu();
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, results, request, base) =
                (next.clone(), results.clone(), request.clone(), base.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build()
                    .into();
                loop {
                    if started.elapsed() > time_limit {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let (method, path, body) = request(i);
                    let url = format!("{base}{path}");
                    let sent = Instant::now();
                    let mut response = match (method, body) {
                        ("GET", _) => agent.get(&url).call(),
                        (_, body) => agent
                            .post(&url)
                            .header("content-type", "application/json")
                            .send(body.unwrap_or_default()),
                    }
                    .expect("request sent");
                    let status = response.status().as_u16();
                    let ops = response
                        .headers()
                        .get("x-collegedb-directory-ops")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split_once(','))
                        .map(|(r, w)| (r.parse::<u64>().unwrap(), w.parse::<u64>().unwrap()));
                    let text = response.body_mut().read_to_string().unwrap_or_default();
                    let latency = sent.elapsed().as_secs_f64() * 1000.0;
                    assert_eq!(status, expected_status, "{method} {path}: {text}");
                    let (reads, writes) = ops.unwrap_or((0, 0));
                    let mut results = results.lock().unwrap();
                    results.0.push(latency);
                    results.1 += reads;
                    results.2 += writes;
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }
    let elapsed = started.elapsed();
    // Work the last responses left behind (`ctx.waitUntil`) belongs to this run.
    std::thread::sleep(Duration::from_millis(300));
    let cpu = server.workerd_cpu().saturating_sub(cpu_before);
    let (mut latencies_ms, directory_reads, directory_writes) =
        Arc::try_unwrap(results).ok().unwrap().into_inner().unwrap();
    latencies_ms.sort_by(f64::total_cmp);
    Outcome {
        name: name.into(),
        requests: latencies_ms.len(),
        elapsed,
        latencies_ms,
        directory_reads,
        directory_writes,
        cpu,
    }
}

fn user_body(id: &str, karma: usize) -> String {
    json!({ "id": id, "name": "n", "email": null, "karma": karma, "active": true,
            "avatar": null, "profile": {} })
    .to_string()
}

fn user(i: usize) -> String {
    user_body(&format!("load-{i:06}"), i)
}

fn post(i: usize) -> String {
    json!({ "id": i, "author": "load", "title": "t", "score": 0.5 }).to_string()
}

/// Part 1's numbers for one side of one scenario, over every trial.
#[derive(Default)]
struct Side {
    requests: usize,
    elapsed: Duration,
    cpu: Duration,
    directory_reads: u64,
    directory_writes: u64,
    per_trial_ms: Vec<f64>,
}

impl Side {
    fn add(&mut self, o: &Outcome) {
        self.requests += o.requests;
        self.elapsed += o.elapsed;
        self.cpu += o.cpu;
        self.directory_reads += o.directory_reads;
        self.directory_writes += o.directory_writes;
        self.per_trial_ms.push(o.cpu_ms_per_request());
    }

    fn cpu_ms(&self) -> f64 {
        self.cpu.as_secs_f64() * 1000.0 / self.requests as f64
    }

    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// Part 1: hash inserts and reads on the example and on raw D1, interleaved.
fn cpu_against_raw_d1(example: &Workerd, raw: &Workerd) {
    println!(
        "## Worker CPU per request: the example against a raw D1 Worker (JavaScript)\n\n\
         {TRIALS} trials x {} s per side and scenario (at most {CPU_TRIAL_REQUESTS} requests), \
         {CLIENTS} clients, interleaved\n",
        CPU_TRIAL_TIME.as_secs()
    );
    // Warm-up, not measured: V8 compiles and tiers up the code (the example's WebAssembly in
    // background threads) during the first requests.
    for (name, server) in [("example", example), ("raw D1", raw)] {
        let warm = run(
            server,
            format!("warm-up insert, {name}"),
            201,
            WARM_UP_REQUESTS,
            WARM_UP_TIME,
            Arc::new(|i| {
                let id = format!("warm-{i:06}");
                ("POST", "/users".into(), Some(user_body(&id, i)))
            }),
        );
        let rows = warm.requests.max(1);
        run(
            server,
            format!("warm-up read, {name}"),
            200,
            WARM_UP_REQUESTS,
            WARM_UP_TIME,
            Arc::new(move |i| ("GET", format!("/users/warm-{:06}", i % rows), None)),
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    for (name, server) in [("example", example), ("raw D1", raw)] {
        let before = server.workerd_cpu();
        std::thread::sleep(Duration::from_secs(2));
        let idle = server.workerd_cpu().saturating_sub(before);
        println!(
            "idle workerd CPU, {name}: {:.1} ms/s (pids {:?})",
            idle.as_secs_f64() * 1000.0 / 2.0,
            server.workerd_pids()
        );
    }
    let servers = [("example", example), ("raw D1", raw)];
    let mut inserts = [Side::default(), Side::default()];
    let mut reads = [Side::default(), Side::default()];
    println!("\n| trial | scenario | worker | requests | req/s | CPU ms/req |");
    println!("| ---: | --- | --- | ---: | ---: | ---: |");
    for trial in 0..TRIALS {
        // Alternate which side goes first.
        let order: [usize; 2] = if trial % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut inserted = [0usize; 2];
        for &side in &order {
            let (label, server) = servers[side];
            let prefix = format!("cpu-t{trial}");
            let outcome = run(
                server,
                format!("insert, hash (users), {label}"),
                201,
                CPU_TRIAL_REQUESTS,
                CPU_TRIAL_TIME,
                Arc::new(move |i| {
                    let id = format!("{prefix}-{i:06}");
                    ("POST", "/users".into(), Some(user_body(&id, i)))
                }),
            );
            inserted[side] = outcome.requests;
            print_trial(trial, "insert, hash (users)", label, &outcome);
            inserts[side].add(&outcome);
        }
        for &side in &order {
            let (label, server) = servers[side];
            let (prefix, rows) = (format!("cpu-t{trial}"), inserted[side].max(1));
            let outcome = run(
                server,
                format!("read, hash (users), {label}"),
                200,
                CPU_TRIAL_REQUESTS,
                CPU_TRIAL_TIME,
                Arc::new(move |i| {
                    // A stride through this trial's rows, so reads are spread over them.
                    let id = format!("{prefix}-{:06}", (i * 7919) % rows);
                    ("GET", format!("/users/{id}"), None)
                }),
            );
            print_trial(trial, "read, hash (users)", label, &outcome);
            reads[side].add(&outcome);
        }
    }
    println!(
        "\nCPU ms/req: over all trials (each trial's in parentheses). Ratio: example over raw D1, \
         over all trials, and the median of the trials' paired ratios.\n"
    );
    println!(
        "| scenario | example CPU ms/req | raw D1 CPU ms/req | ratio | median trial ratio | target | example req/s | raw D1 req/s | req/s ratio | example directory ops/req (r, w) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, [ex, raw]) in [
        ("insert, hash (users)", &inserts),
        ("read, hash (users)", &reads),
    ] {
        let ratio = ex.cpu_ms() / raw.cpu_ms();
        let mut paired: Vec<f64> = ex
            .per_trial_ms
            .iter()
            .zip(&raw.per_trial_ms)
            .map(|(e, r)| e / r)
            .collect();
        paired.sort_by(f64::total_cmp);
        println!(
            "| {name} | {:.2} ({}) | {:.2} ({}) | {ratio:.2}x | {:.2}x | <= {TARGET_RATIO:.1}x: {} | {:.0} | {:.0} | {:.2}x | {:.2}, {:.2} |",
            ex.cpu_ms(),
            trial_list(&ex.per_trial_ms),
            raw.cpu_ms(),
            trial_list(&raw.per_trial_ms),
            paired[paired.len() / 2],
            if ratio <= TARGET_RATIO { "met" } else { "MISSED" },
            ex.per_second(),
            raw.per_second(),
            ex.per_second() / raw.per_second(),
            ex.directory_reads as f64 / ex.requests as f64,
            ex.directory_writes as f64 / ex.requests as f64,
        );
    }
    println!();
}

fn trial_list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn print_trial(trial: usize, scenario: &str, worker: &str, o: &Outcome) {
    println!(
        "| {} | {scenario} | {worker} | {} | {:.0} | {:.2} |",
        trial + 1,
        o.requests,
        o.per_second(),
        o.cpu_ms_per_request()
    );
}

/// Part 3: hash inserts and point reads on D1 shards, on Durable Object shards and on raw D1,
/// interleaved.
fn object_shards_against_d1(sides: [(&str, &Workerd); 3]) {
    println!(
        "## Durable Object shards against D1 shards and raw D1\n\n\
         {TRIALS} trials x {} s per side and scenario, {CLIENTS} clients, interleaved\n",
        CPU_TRIAL_TIME.as_secs()
    );
    for (name, server) in sides {
        run(
            server,
            format!("warm-up, {name}"),
            201,
            WARM_UP_REQUESTS,
            WARM_UP_TIME,
            Arc::new(|i| {
                let id = format!("warm3-{i:06}");
                ("POST", "/users".into(), Some(user_body(&id, i)))
            }),
        );
    }
    let mut inserts: [Side; 3] = Default::default();
    let mut reads: [Side; 3] = Default::default();
    println!("| trial | scenario | worker | requests | req/s | CPU ms/req |");
    println!("| ---: | --- | --- | ---: | ---: | ---: |");
    for trial in 0..TRIALS {
        let order: Vec<usize> = (0..3).map(|k| (k + trial) % 3).collect();
        let mut inserted = [0usize; 3];
        for &side in &order {
            let (label, server) = sides[side];
            let prefix = format!("kinds-t{trial}");
            let outcome = run(
                server,
                format!("insert, {label}"),
                201,
                CPU_TRIAL_REQUESTS,
                CPU_TRIAL_TIME,
                Arc::new(move |i| {
                    let id = format!("{prefix}-{i:06}");
                    ("POST", "/users".into(), Some(user_body(&id, i)))
                }),
            );
            inserted[side] = outcome.requests;
            print_trial(trial, "insert, new key", label, &outcome);
            inserts[side].add(&outcome);
        }
        for &side in &order {
            let (label, server) = sides[side];
            let (prefix, rows) = (format!("kinds-t{trial}"), inserted[side].max(1));
            let outcome = run(
                server,
                format!("read, {label}"),
                200,
                CPU_TRIAL_REQUESTS,
                CPU_TRIAL_TIME,
                Arc::new(move |i| {
                    let id = format!("{prefix}-{:06}", (i * 7919) % rows);
                    ("GET", format!("/users/{id}"), None)
                }),
            );
            print_trial(trial, "point read", label, &outcome);
            reads[side].add(&outcome);
        }
    }
    let names: Vec<&str> = sides.iter().map(|(name, _)| *name).collect();
    println!(
        "\n| scenario | {0} req/s | {1} req/s | {2} req/s | {0} CPU ms/req | {1} CPU ms/req | {2} CPU ms/req | {1} / {0} CPU | {1} / {2} CPU |",
        names[0], names[1], names[2]
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (scenario, all) in [("insert, new key", &inserts), ("point read", &reads)] {
        println!(
            "| {scenario} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2}x |",
            all[0].per_second(),
            all[1].per_second(),
            all[2].per_second(),
            all[0].cpu_ms(),
            all[1].cpu_ms(),
            all[2].cpu_ms(),
            all[1].cpu_ms() / all[0].cpu_ms(),
            all[1].cpu_ms() / all[2].cpu_ms(),
        );
    }
    println!();
}

/// Part 2: every scenario of the example.
fn example_scenarios(server: &Workerd) {
    let mut outcomes = Vec::new();
    let limit = TIME_LIMIT;
    outcomes.push(run(
        server,
        "insert, hash (users)",
        201,
        INSERTS,
        limit,
        Arc::new(|i| ("POST", "/users".into(), Some(user(i)))),
    ));
    // The baseline reads the shard that holds the row, found once up front.
    let home = server.get("/users/load-000000/shard").json["shard"]
        .as_str()
        .unwrap()
        .to_owned();
    let baseline_sql =
        json!({ "sql": "SELECT * FROM users WHERE id = ?", "params": ["load-000000"] }).to_string();
    outcomes.push(run(
        server,
        "read, raw D1 on one shard (baseline)",
        200,
        READS,
        limit,
        Arc::new(move |_| ("POST", format!("/raw/{home}"), Some(baseline_sql.clone()))),
    ));
    outcomes.push(run(
        server,
        "read, hash (users)",
        200,
        READS,
        limit,
        Arc::new(|i| ("GET", format!("/users/load-{:06}", i % INSERTS), None)),
    ));
    outcomes.push(run(
        server,
        "read of unknown keys, hash model (users)",
        404,
        READS / 3,
        limit,
        Arc::new(|i| ("GET", format!("/users/ghost-{i:06}"), None)),
    ));
    outcomes.push(run(
        server,
        "insert, round-robin + Durable Object directory (posts)",
        201,
        INSERTS,
        limit,
        Arc::new(|i| ("POST", "/posts".into(), Some(post(i)))),
    ));
    outcomes.push(run(
        server,
        "read, directory-first, Durable Object directory (posts)",
        200,
        READS,
        limit,
        Arc::new(|i| ("GET", format!("/posts/{}", i % INSERTS), None)),
    ));
    outcomes.push(run(
        server,
        "insert, round-robin + KV directory (posts)",
        201,
        INSERTS,
        limit,
        Arc::new(|i| ("POST", "/posts?dir=kv".into(), Some(post(100_000 + i)))),
    ));
    outcomes.push(run(
        server,
        "read, directory-first, KV directory (posts)",
        200,
        READS,
        limit,
        Arc::new(|i| {
            (
                "GET",
                format!("/posts/{}?dir=kv", 100_000 + i % INSERTS),
                None,
            )
        }),
    ));
    outcomes.push(run(
        server,
        "read of unknown keys, Durable Object directory (posts)",
        404,
        READS / 3,
        limit,
        Arc::new(|i| ("GET", format!("/posts/{}", 900_000 + i), None)),
    ));

    println!("## Every scenario of the example ({CLIENTS} clients)\n");
    println!("| scenario | requests | req/s | p50 ms | p99 ms | CPU ms/req | directory reads/req | directory writes/req |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for o in &outcomes {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            o.name,
            o.requests,
            o.per_second(),
            percentile(&o.latencies_ms, 0.50),
            percentile(&o.latencies_ms, 0.99),
            o.cpu_ms_per_request(),
            o.directory_reads as f64 / o.requests as f64,
            o.directory_writes as f64 / o.requests as f64,
        );
    }
    let stats_calls = server.get("/coordinator/requests").json["POST /stats"]
        .as_u64()
        .unwrap_or(0);
    println!("\ncoordinator statistics calls over the whole run: {stats_calls}");
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    println!(
        "machine: {} cores, load average {} at start\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    // Both servers are stopped when these values drop, also when a step panics.
    let example = Workerd::start();
    let raw = Workerd::start_raw();
    let setup = example.post("/setup", &json!({}));
    assert_eq!(setup.status, 200, "{}", setup.text);
    let setup = raw.post("/setup", &json!({}));
    assert_eq!(setup.status, 200, "{}", setup.text);
    // The two must answer alike: one insert and one read on each, compared.
    let row = user_body("shape-check", 1);
    let a = example.request("POST", "/users", Some(&row));
    let b = raw.request("POST", "/users", Some(&row));
    assert_eq!(
        (a.status, &a.json),
        (b.status, &b.json),
        "insert answers differ"
    );
    let (a, b) = (
        example.get("/users/shape-check"),
        raw.get("/users/shape-check"),
    );
    assert_eq!(
        (a.status, &a.json),
        (b.status, &b.json),
        "read answers differ"
    );
    let (a, b) = (example.get("/users/nobody"), raw.get("/users/nobody"));
    assert_eq!(
        (a.status, &a.json),
        (b.status, &b.json),
        "404 answers differ"
    );

    let part = std::env::var("WORKERD_LOAD_PART").unwrap_or_default();
    if part != "3" {
        cpu_against_raw_d1(&example, &raw);
        println!("load average after part 1: {}\n", load_average());
    }
    if part.is_empty() || part == "3" {
        let objects = Workerd::start_with_vars(&[("COLLEGEDB_CONFIG", OBJECT_SHARDS)]);
        let setup = objects.post("/setup", &json!({}));
        assert_eq!(setup.status, 200, "{}", setup.text);
        object_shards_against_d1([
            ("D1 shards", &example),
            ("Durable Object shards", &objects),
            ("raw D1", &raw),
        ]);
        println!("load average after part 3: {}\n", load_average());
    }
    drop(raw);
    if !part.is_empty() {
        return;
    }
    example_scenarios(&example);

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let wasm = root.join("examples/worker/build/index_bg.wasm");
    let raw = std::fs::metadata(&wasm).expect("built bundle").len();
    let gzip = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -9 -c '{}' | wc -c", wasm.display()))
        .output()
        .expect("gzip");
    let gzip: u64 = String::from_utf8_lossy(&gzip.stdout)
        .trim()
        .parse()
        .unwrap();
    println!(
        "\nbundle: {raw} bytes raw ({:.2} MiB), {gzip} bytes gzip ({:.2} MiB)",
        raw as f64 / 1048576.0,
        gzip as f64 / 1048576.0
    );
}

//! Load benchmark of the Worker example in local workerd, from this second process on 127.0.0.1.
//!
//! ```text
//! scripts/build-worker.sh
//! cargo run --release -p collegedb-tests --features workerd --bin workerd-load
//! ```
//!
//! Each scenario sends a bounded number of requests (and stops after 60 s regardless) from 8
//! client threads, and reports throughput, p50/p99 latency and the directory operations per
//! request that the runtime counted (the `x-collegedb-directory-ops` header). The baseline is a
//! point read sent straight to one D1 shard through the same Worker, HTTP and JSON path, with no
//! routing. Finally it prints the release bundle's size, raw and gzip.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collegedb_tests::workerd::Workerd;
use serde_json::json;

const CLIENTS: usize = 8;
const INSERTS: usize = 600;
const READS: usize = 1_500;
const TIME_LIMIT: Duration = Duration::from_secs(60);

struct Outcome {
    name: &'static str,
    requests: usize,
    elapsed: Duration,
    latencies_ms: Vec<f64>,
    directory_reads: u64,
    directory_writes: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Sends `count` requests made by `request(i)` from [`CLIENTS`] threads.
fn run(
    server: &Workerd,
    name: &'static str,
    expected_status: u16,
    count: usize,
    request: impl Fn(usize) -> (&'static str, String, Option<String>) + Send + Sync + 'static,
) -> Outcome {
    let base = server.base().to_owned();
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new((Vec::with_capacity(count), 0u64, 0u64)));
    let request = Arc::new(request);
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
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || started.elapsed() > TIME_LIMIT {
                        return;
                    }
                    let (method, path, body) = request(i);
                    let url = format!("{base}{path}");
                    let sent = Instant::now();
                    let response = match (method, body) {
                        ("GET", _) => agent.get(&url).call(),
                        (_, body) => agent.post(&url).send(body.unwrap_or_default()),
                    }
                    .expect("request sent");
                    let latency = sent.elapsed().as_secs_f64() * 1000.0;
                    let status = response.status().as_u16();
                    assert_eq!(status, expected_status, "{method} {path}");
                    let (reads, writes) = response
                        .headers()
                        .get("x-collegedb-directory-ops")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split_once(','))
                        .map(|(r, w)| (r.parse::<u64>().unwrap(), w.parse::<u64>().unwrap()))
                        .expect("directory-ops header");
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
    let (mut latencies_ms, directory_reads, directory_writes) =
        Arc::try_unwrap(results).ok().unwrap().into_inner().unwrap();
    latencies_ms.sort_by(f64::total_cmp);
    Outcome {
        name,
        requests: latencies_ms.len(),
        elapsed,
        latencies_ms,
        directory_reads,
        directory_writes,
    }
}

fn user(i: usize) -> String {
    json!({ "id": format!("load-{i:06}"), "name": "n", "email": null, "karma": i, "active": true,
            "avatar": null, "profile": {} })
    .to_string()
}

fn post(i: usize) -> String {
    json!({ "id": i, "author": "load", "title": "t", "score": 0.5 }).to_string()
}

fn main() {
    let server = Workerd::start();
    assert_eq!(server.post("/setup", &json!({})).status, 200);
    let mut outcomes = Vec::new();

    outcomes.push(run(&server, "insert, hash (users)", 201, INSERTS, |i| {
        ("POST", "/users".into(), Some(user(i)))
    }));
    // The baseline reads the shard that holds the row, found once up front.
    let home = server.get("/users/load-000000/shard").json["shard"]
        .as_str()
        .unwrap()
        .to_owned();
    let baseline_sql =
        json!({ "sql": "SELECT * FROM users WHERE id = ?", "params": ["load-000000"] }).to_string();
    outcomes.push(run(
        &server,
        "read, raw D1 on one shard (baseline)",
        200,
        READS,
        move |_| ("POST", format!("/raw/{home}"), Some(baseline_sql.clone())),
    ));
    outcomes.push(run(&server, "read, hash (users)", 200, READS, |i| {
        ("GET", format!("/users/load-{:06}", i % INSERTS), None)
    }));
    outcomes.push(run(
        &server,
        "insert, round-robin + Durable Object directory (posts)",
        201,
        INSERTS,
        |i| ("POST", "/posts".into(), Some(post(i))),
    ));
    outcomes.push(run(
        &server,
        "read, directory-first, Durable Object directory (posts)",
        200,
        READS,
        |i| ("GET", format!("/posts/{}", i % INSERTS), None),
    ));
    outcomes.push(run(
        &server,
        "insert, round-robin + KV directory (posts)",
        201,
        INSERTS,
        |i| ("POST", "/posts?dir=kv".into(), Some(post(100_000 + i))),
    ));
    outcomes.push(run(
        &server,
        "read, directory-first, KV directory (posts)",
        200,
        READS,
        |i| {
            (
                "GET",
                format!("/posts/{}?dir=kv", 100_000 + i % INSERTS),
                None,
            )
        },
    ));
    outcomes.push(run(
        &server,
        "read of unknown keys, Durable Object directory",
        404,
        READS / 3,
        |i| ("GET", format!("/posts/{}", 900_000 + i), None),
    ));

    println!("| scenario | requests | req/s | p50 ms | p99 ms | directory reads/req | directory writes/req |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for o in &outcomes {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            o.name,
            o.requests,
            o.requests as f64 / o.elapsed.as_secs_f64(),
            percentile(&o.latencies_ms, 0.50),
            percentile(&o.latencies_ms, 0.99),
            o.directory_reads as f64 / o.requests as f64,
            o.directory_writes as f64 / o.requests as f64,
        );
    }

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

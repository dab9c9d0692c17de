//! Growth end to end in local workerd: the Worker example adds its standby shard (`DB_APAC`)
//! through `POST /admin/shards/DB_APAC/add` while other requests keep writing and reading; the
//! growth runner's Durable Object alarm advances the job; wrangler and workerd are killed with
//! SIGKILL in the middle of the job and started again on the same persisted state; the job
//! finishes, and every acknowledged write is found exactly once with its last value. Run with
//! `--features workerd` after building the example (scripts/test.sh does both). The server is
//! stopped when the test ends, whatever the outcome.
#![cfg(feature = "workerd")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collegedb_tests::workerd::Workerd;
use serde_json::{json, Value};

const SERVING: [&str; 3] = ["DB_EAST", "DB_WEST", "DB_EU"];
const STANDBY: &str = "DB_APAC";
/// Hash-placed users loaded before the operation.
const USERS: usize = 1500;
/// Round-robin posts loaded before the operation (directory-placed: they stay where they are).
const POSTS: i64 = 90;
/// Threads writing and reading during the operation, and the keys each owns.
const WRITERS: usize = 4;
const KEYS_PER_WRITER: usize = 24;
/// The most requests one writer thread sends.
const MAX_OPS: usize = 600;

fn user(id: &str, karma: i64) -> Value {
    json!({ "id": id, "name": format!("name {id}"), "email": null, "karma": karma,
            "active": true, "avatar": null, "profile": { "k": karma } })
}

fn all_shards() -> impl Iterator<Item = &'static str> {
    SERVING.into_iter().chain([STANDBY])
}

/// What a key may hold: `None` is "no row".
#[derive(Debug, Clone)]
enum Expect {
    /// The last write was acknowledged.
    Known(Option<i64>),
    /// Writes whose outcome is unknown (sent while the server was killed) followed the last
    /// acknowledged state: any of these.
    OneOf(BTreeSet<Option<i64>>),
}

impl Expect {
    fn allows(&self, value: Option<i64>) -> bool {
        match self {
            Expect::Known(known) => *known == value,
            Expect::OneOf(set) => set.contains(&value),
        }
    }

    fn unsure(&mut self, attempted: Option<i64>) {
        let mut set = match self {
            Expect::Known(known) => BTreeSet::from([*known]),
            Expect::OneOf(set) => std::mem::take(set),
        };
        set.insert(attempted);
        *self = Expect::OneOf(set);
    }
}

/// What the writers saw.
#[derive(Default)]
struct Observed {
    /// Requests answered.
    answered: u64,
    /// Requests with no answer (the server was being killed or restarted).
    unanswered: u64,
    /// `SLOT_MOVING` answers: a move held the slot frozen for longer than the router waits.
    slot_moving: u64,
    /// Anything that must not happen: wrong values, lost rows, other errors.
    violations: Vec<String>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// `(status, body)`, or `None` when no answer came.
fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let result = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("POST", body) => agent
            .post(url)
            .header("content-type", "application/json")
            .send(body.map(Value::to_string).unwrap_or_default()),
        _ => unreachable!("{method}"),
    };
    let mut response = result.ok()?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// One writer: upserts its keys with increasing karma and reads them back, checking each read
/// against what it knows. Returns its keys' expectations.
fn writer(
    index: usize,
    base: String,
    stop: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
    observed: Arc<Mutex<Observed>>,
) -> BTreeMap<String, Expect> {
    let agent = agent();
    // A small xorshift: reproducible choices per writer.
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (index as u64 + 1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Half the keys were loaded before the operation (karma 0), half are new.
    let mut keys: BTreeMap<String, Expect> = (0..KEYS_PER_WRITER)
        .map(|k| {
            if k % 2 == 0 {
                let n = (k / 2) * WRITERS + index;
                (format!("u-{n:05}"), Expect::Known(Some(0)))
            } else {
                (format!("w{index}-{k:03}"), Expect::Known(None))
            }
        })
        .collect();
    let names: Vec<String> = keys.keys().cloned().collect();
    let mut karma = (index as i64 + 1) * 1_000_000;
    let note = |f: &mut dyn FnMut(&mut Observed)| f(&mut observed.lock().unwrap());
    for _ in 0..MAX_OPS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if down.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let key = &names[next() as usize % names.len()];
        if next() % 2 == 0 {
            karma += 1;
            let answer = send(
                &agent,
                "POST",
                &format!("{base}/users/upsert"),
                Some(&user(key, karma)),
            );
            let expect = keys.get_mut(key).unwrap();
            match answer {
                Some((200, _)) => {
                    *expect = Expect::Known(Some(karma));
                    note(&mut |o| o.answered += 1);
                }
                Some((503, body)) if body["code"] == "SLOT_MOVING" => {
                    // Refused before any write, but treat it as unknown all the same.
                    expect.unsure(Some(karma));
                    note(&mut |o| {
                        o.answered += 1;
                        o.slot_moving += 1
                    });
                }
                Some((status, body)) => {
                    expect.unsure(Some(karma));
                    note(&mut |o| {
                        o.answered += 1;
                        o.violations.push(format!("upsert {key}: {status} {body}"))
                    });
                }
                None => {
                    expect.unsure(Some(karma));
                    note(&mut |o| o.unanswered += 1);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        } else {
            let answer = send(&agent, "GET", &format!("{base}/users/{key}"), None);
            let expect = &keys[key];
            match answer {
                Some((200, body)) => {
                    let got = body["karma"].as_i64();
                    note(&mut |o| {
                        o.answered += 1;
                        if !expect.allows(got) {
                            o.violations
                                .push(format!("read {key}: karma {got:?}, expected {expect:?}"));
                        }
                    });
                }
                Some((404, _)) => note(&mut |o| {
                    o.answered += 1;
                    if !expect.allows(None) {
                        o.violations
                            .push(format!("read {key}: not found, expected {expect:?}"));
                    }
                }),
                Some((503, body)) if body["code"] == "SLOT_MOVING" => note(&mut |o| {
                    o.answered += 1;
                    o.slot_moving += 1
                }),
                Some((status, body)) => note(&mut |o| {
                    o.answered += 1;
                    o.violations.push(format!("read {key}: {status} {body}"))
                }),
                None => {
                    note(&mut |o| o.unanswered += 1);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    keys
}

fn growth(server: &Workerd) -> Value {
    let reply = server.get("/admin/growth");
    assert_eq!(reply.status, 200, "{}\n{}", reply.text, server.log_tail());
    reply.json
}

/// Every `(key, karma)` of `users` on `shard`, read on the shard itself.
fn users_on(server: &Workerd, shard: &str) -> Vec<(String, i64)> {
    let reply = server.post(
        &format!("/raw/{shard}"),
        &json!({ "sql": "SELECT id, karma FROM users ORDER BY id" }),
    );
    assert_eq!(reply.status, 200, "{shard}: {}", reply.text);
    reply
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["id"].as_str().unwrap().to_owned(),
                row["karma"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Every key of a table on `shard`.
fn keys_on(server: &Workerd, shard: &str, table: &str, key: &str) -> Vec<Value> {
    let reply = server.post(
        &format!("/raw/{shard}"),
        &json!({ "sql": format!("SELECT {key} AS k FROM {table} ORDER BY {key}") }),
    );
    assert_eq!(reply.status, 200, "{shard}: {}", reply.text);
    reply
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["k"].clone())
        .collect()
}

/// Polls `/admin/growth` until the running job satisfies `ready`; fails if it finishes first.
fn wait_for(server: &Workerd, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = growth(server);
        let running = &status["running"];
        assert!(
            !running.is_null(),
            "the job finished before this point: {status}"
        );
        if ready(running) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not get there: {status}\n{}",
            server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn add_shard_survives_a_kill_of_workerd_mid_job() {
    let started = Instant::now();
    let mut server = Workerd::start();
    let setup = server.post("/setup", &json!({}));
    assert_eq!(setup.status, 200, "{}", setup.text);
    assert_eq!(setup.json["coordinator"]["shards"], 3, "{}", setup.text);

    // The standby shard owns no slots and serves nothing.
    let before = growth(&server);
    assert_eq!(before["mapVersion"], 1, "{before}");
    assert!(before["running"].is_null(), "{before}");
    for shard in before["shards"].as_array().unwrap() {
        let standby = shard["shard"] == STANDBY;
        assert_eq!(shard["standby"], standby, "{before}");
    }

    // Load: hash-placed users and round-robin posts.
    for chunk in (0..USERS).collect::<Vec<_>>().chunks(150) {
        let rows: Vec<Value> = chunk
            .iter()
            .map(|i| user(&format!("u-{i:05}"), 0))
            .collect();
        let reply = server.post("/users/batch", &Value::Array(rows));
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let posts: Vec<Value> = (0..POSTS)
        .map(|id| json!({ "id": id, "author": "a", "title": format!("post {id}"), "score": 1.0 }))
        .collect();
    let reply = server.post("/posts/batch", &Value::Array(posts));
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(users_on(&server, STANDBY).len(), 0);

    // Admin routes refuse what they cannot do.
    let unknown = server.post("/admin/shards/DB_NOWHERE/add", &json!({}));
    assert_eq!(unknown.status, 404, "{}", unknown.text);

    // Writers and readers run throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let down = Arc::new(AtomicBool::new(false));
    let observed = Arc::new(Mutex::new(Observed::default()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|index| {
            let (base, stop, down, observed) = (
                server.base().to_owned(),
                stop.clone(),
                down.clone(),
                observed.clone(),
            );
            std::thread::spawn(move || writer(index, base, stop, down, observed))
        })
        .collect();

    // Small pages, two steps per alarm and a pause between alarms: slow enough to be caught
    // in the middle, about 100 steps in all.
    let settings = json!({ "pageRows": 50, "maxSteps": 2, "intervalMs": 100 });
    let start = server.post(&format!("/admin/shards/{STANDBY}/add"), &settings);
    assert_eq!(start.status, 202, "{}", start.text);
    assert_eq!(start.json["job"]["kind"], "add_shard", "{}", start.text);
    assert_eq!(start.json["job"]["transfers"], 3, "{}", start.text);
    // Another operation is refused while this one runs; the same one answers its journal.
    let other = server.post("/admin/shards/DB_EAST/drain", &json!({}));
    assert_eq!(other.status, 409, "{}", other.text);
    assert_eq!(other.json["code"], "CONFIG_INVALID", "{}", other.text);
    let again = server.post(&format!("/admin/shards/{STANDBY}/add"), &settings);
    assert_eq!(again.status, 202, "{}", again.text);

    // A lost alarm (fault injection) stops the job until an admin request sets it again.
    wait_for(&server, |running| running["rowsCopied"].as_u64() > Some(0));
    let lost = server.post("/admin/growth/fault", &json!({ "loseAlarm": true }));
    assert_eq!(lost.status, 200, "{}", lost.text);
    assert!(lost.json["alarmAt"].is_null(), "{}", lost.text);
    std::thread::sleep(Duration::from_secs(1));
    let status = growth(&server);
    assert_eq!(status["rearmed"], true, "{status}");
    assert_eq!(
        status["runner"]["alarms"], lost.json["alarms"],
        "no alarm ran while it was lost: {status}"
    );

    // A lease left behind (as by a slice killed in the middle) makes the runner wait for its
    // end, without counting a failure, and then go on.
    let held = server.post("/admin/growth/fault", &json!({ "holdLease": 3000 }));
    assert_eq!(held.status, 200, "{}", held.text);
    let until = held.json["leaseUntilMs"].as_u64().unwrap();
    let copied = growth(&server)["running"]["rowsCopied"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let waiting = growth(&server);
    assert_eq!(
        waiting["runner"]["leaseWaitUntilMs"].as_u64(),
        Some(until),
        "{waiting}"
    );
    assert_eq!(waiting["runner"]["failures"], 0, "{waiting}");
    assert_eq!(
        waiting["running"]["rowsCopied"].as_u64(),
        Some(copied),
        "no step while the lease is held: {waiting}"
    );

    // Wait until the job is well under way: the first transfer switched, the second started.
    let midway = wait_for(&server, |running| {
        running["transfer"].as_u64() >= Some(2) && running["rowsCopied"].as_u64() > Some(0)
    });
    eprintln!("killing mid-job: {midway}");
    assert!(midway["mapVersion"].as_u64().unwrap() >= 2, "{midway}");
    assert_eq!(midway["running"]["finished"], false, "{midway}");
    let apac = midway["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["shard"] == STANDBY)
        .unwrap()["slots"]
        .as_u64()
        .unwrap();
    assert!(apac > 0 && apac < 1024, "part of the slots moved: {midway}");

    // SIGKILL wrangler and workerd mid-job, with the writers' requests in flight; the writers
    // pause while the server is down, then start again on the same state.
    server.kill();
    let killed_at = Instant::now();
    down.store(true, Ordering::SeqCst);
    server.restart();
    eprintln!("restarted in {:.1} s", killed_at.elapsed().as_secs_f64());
    down.store(false, Ordering::SeqCst);
    // No admin request for a moment: does the alarm persisted before the kill fire by itself?
    std::thread::sleep(Duration::from_secs(3));

    // The job resumes (from the persisted alarm, or re-armed by the status request) and ends.
    let deadline = Instant::now() + Duration::from_secs(120);
    let first = growth(&server);
    eprintln!(
        "first status after the restart (rearmed: the alarm was lost): rearmed {}, {}",
        first["rearmed"], first["runner"]
    );
    let mut rearmed = first["rearmed"] == true;
    let done = loop {
        let status = growth(&server);
        rearmed |= status["rearmed"] == true;
        if status["running"].is_null() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not finish after the restart: {status}\n{}",
            server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("finished (alarm re-armed by a status request: {rearmed}): {done}");
    let last = &done["last"];
    assert_eq!(last["kind"], "add_shard", "{done}");
    assert_eq!(last["finished"], true, "{done}");
    assert_eq!(
        done["mapVersion"], 4,
        "one map version per transfer: {done}"
    );
    for shard in done["shards"].as_array().unwrap() {
        let slots = shard["slots"].as_u64().unwrap();
        assert!((1000..=1050).contains(&slots), "even slots: {done}");
    }
    assert!(
        last["rowsCopied"].as_u64().unwrap() > (USERS / 6) as u64,
        "{done}"
    );
    let runner = &done["runner"];
    assert!(
        runner["failures"] == 0 && runner["alarmAt"].is_null(),
        "{done}"
    );
    assert!(runner["leaseWaits"].as_u64() >= Some(1), "{done}");
    // Every alarm stayed well under the Workers limit of 1,000 subrequests (the counter is the
    // isolate's, so it also counts the writers' requests served meanwhile: an upper bound).
    let most = runner["maxSubrequests"].as_u64().unwrap();
    eprintln!(
        "alarms: {}, steps: {}, most subrequests in one alarm: {most}",
        runner["alarms"], runner["steps"]
    );
    assert!(most > 0 && most < 1000, "{done}");

    // A little more traffic on the grown deployment, then stop the writers.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let mut expected: BTreeMap<String, Expect> = (0..USERS)
        .map(|i| (format!("u-{i:05}"), Expect::Known(Some(0))))
        .collect();
    for handle in writers {
        expected.extend(handle.join().expect("writer thread"));
    }
    let observed = std::mem::take(&mut *observed.lock().unwrap());
    eprintln!(
        "writers: {} answered, {} unanswered (killed), {} SLOT_MOVING",
        observed.answered, observed.unanswered, observed.slot_moving
    );
    assert!(
        observed.violations.is_empty(),
        "{} violations, first: {:#?}",
        observed.violations.len(),
        &observed.violations[..observed.violations.len().min(10)]
    );
    assert!(
        observed.answered > 200,
        "the writers ran: {}",
        observed.answered
    );

    // Exactly once: no key on two shards; every expected row present with its last value.
    let mut holders: BTreeMap<String, Vec<(&str, i64)>> = BTreeMap::new();
    let mut per_shard = BTreeMap::new();
    for shard in all_shards() {
        let rows = users_on(&server, shard);
        per_shard.insert(shard, rows.len());
        for (id, karma) in rows {
            holders.entry(id).or_default().push((shard, karma));
        }
    }
    let twice: Vec<_> = holders.iter().filter(|(_, h)| h.len() > 1).collect();
    assert!(twice.is_empty(), "keys on two shards: {twice:?}");
    for (key, expect) in &expected {
        let found = holders.get(key).map(|h| h[0].1);
        assert!(
            expect.allows(found),
            "{key}: the shards hold {found:?}, expected {expect:?}"
        );
    }
    let unexpected: Vec<_> = holders
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(unexpected.is_empty(), "rows nobody wrote: {unexpected:?}");
    // Through the routes too: every key read back with its value, from the shard that holds it.
    let agent = agent();
    for (i, (key, expect)) in expected.iter().enumerate() {
        let (status, body) = send(
            &agent,
            "GET",
            &format!("{}/users/{key}", server.base()),
            None,
        )
        .expect("an answer");
        let got = (status == 200).then(|| body["karma"].as_i64().unwrap());
        assert!(
            (status == 200 || status == 404) && expect.allows(got),
            "GET /users/{key}: {status} {body}, expected {expect:?}"
        );
        if i % 10 == 0 && got.is_some() {
            let (_, at) = send(
                &agent,
                "GET",
                &format!("{}/users/{key}/shard", server.base()),
                None,
            )
            .expect("an answer");
            assert_eq!(at["shard"], holders[key][0].0, "{key}");
        }
    }

    // The new shard holds about a quarter of the hash-placed rows.
    let total: usize = per_shard.values().sum();
    let share = per_shard[STANDBY] as f64 / total as f64;
    eprintln!(
        "users per shard after the add: {per_shard:?} ({:.1} % on {STANDBY})",
        share * 100.0
    );
    assert!((0.18..=0.32).contains(&share), "{per_shard:?}");
    for shard in SERVING {
        let share = per_shard[shard] as f64 / total as f64;
        assert!((0.18..=0.32).contains(&share), "{per_shard:?}");
    }

    // Directory-placed rows stayed where their entries point, each once.
    let mut posts = BTreeMap::new();
    for shard in all_shards() {
        for key in keys_on(&server, shard, "posts", "id") {
            *posts.entry(key.as_i64().unwrap()).or_insert(0) += 1;
        }
    }
    assert_eq!(posts.len() as i64, POSTS);
    assert!(
        posts.values().all(|&n| n == 1),
        "posts on two shards: {posts:?}"
    );
    assert!(keys_on(&server, STANDBY, "posts", "id").is_empty());
    for id in 0..POSTS {
        let reply = server.get(&format!("/posts/{id}"));
        assert_eq!(reply.status, 200, "{}", reply.text);
    }

    // Change capture is gone from every giving shard.
    for shard in SERVING {
        let reply = server.post(
            &format!("/raw/{shard}"),
            &json!({ "sql": "SELECT name FROM sqlite_master WHERE name = '_collegedb_changes' OR name LIKE '%collegedb_cc_%'" }),
        );
        assert_eq!(reply.json, json!([]), "{shard}: {}", reply.text);
    }

    // New keys follow the new map: some land on the added shard.
    let fresh: Vec<Value> = (0..200)
        .map(|i| user(&format!("after-{i:03}"), i))
        .collect();
    let reply = server.post("/users/batch", &Value::Array(fresh));
    assert_eq!(reply.status, 200, "{}", reply.text);
    let landed = users_on(&server, STANDBY)
        .iter()
        .filter(|(id, _)| id.starts_with("after-"))
        .count();
    assert!(
        (20..=80).contains(&landed),
        "{landed} of 200 new keys on {STANDBY}"
    );

    drain_moves_everything_off_a_shard_through_failing_alarms(&server);
    reassign_moves_one_key_and_every_route_follows_it(&server);
    eprintln!("growth test took {:.1} s", started.elapsed().as_secs_f64());
}

/// Drains `DB_EU` (hash-placed users and round-robin posts) while its first two alarms fail:
/// the runner backs off and goes on, and afterwards `DB_EU` holds nothing and every row is
/// elsewhere exactly once, the posts' directory entries pointing at their new shards.
fn drain_moves_everything_off_a_shard_through_failing_alarms(server: &Workerd) {
    const DRAINED: &str = "DB_EU";
    let mut users = BTreeMap::new();
    let mut posts = BTreeSet::new();
    for shard in all_shards() {
        for (id, karma) in users_on(server, shard) {
            assert!(users.insert(id, karma).is_none(), "a key on two shards");
        }
        posts.extend(
            keys_on(server, shard, "posts", "id")
                .iter()
                .map(|k| k.as_i64().unwrap()),
        );
    }
    assert!(!users_on(server, DRAINED).is_empty());
    assert!(!keys_on(server, DRAINED, "posts", "id").is_empty());

    let fault = server.post("/admin/growth/fault", &json!({ "failAlarms": 2 }));
    assert_eq!(fault.status, 200, "{}", fault.text);
    let start = server.post(
        &format!("/admin/shards/{DRAINED}/drain"),
        &json!({ "pageRows": 100 }),
    );
    assert_eq!(start.status, 202, "{}", start.text);
    assert_eq!(start.json["job"]["kind"], "drain_shard", "{}", start.text);
    // Three slot transfers and the relocation of its directory-placed rows.
    assert_eq!(start.json["job"]["transfers"], 4, "{}", start.text);

    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut failed, mut error) = (0, Value::Null);
    let done = loop {
        let status = growth(server);
        let runner = &status["runner"];
        if runner["failures"].as_u64() > Some(0) {
            failed = failed.max(runner["failures"].as_u64().unwrap());
            error = runner["lastError"].clone();
        }
        if status["running"].is_null() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the drain did not finish: {status}\n{}",
            server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("drain finished after {failed} failed alarm(s) ({error}): {done}");
    assert!(failed >= 1, "the failing alarms were seen: {done}");
    assert!(
        error
            .as_str()
            .unwrap_or("")
            .contains("COORDINATOR_UNAVAILABLE"),
        "{error}"
    );
    assert_eq!(done["runner"]["failures"], 0, "{done}");
    // Default budget: each alarm stopped well before the limit, counting what it sent.
    let most = done["runner"]["maxSubrequests"].as_u64().unwrap();
    assert!(most > 0 && most <= 900, "{done}");
    assert_eq!(done["last"]["kind"], "drain_shard", "{done}");
    for shard in done["shards"].as_array().unwrap() {
        let slots = shard["slots"].as_u64().unwrap();
        if shard["shard"] == DRAINED {
            assert_eq!((slots, &shard["standby"]), (0, &json!(true)), "{done}");
        } else {
            assert!((1300..=1400).contains(&slots), "{done}");
        }
    }

    assert!(
        users_on(server, DRAINED).is_empty(),
        "users left on {DRAINED}"
    );
    assert!(
        keys_on(server, DRAINED, "posts", "id").is_empty(),
        "posts left on {DRAINED}"
    );
    let mut after = BTreeMap::new();
    for shard in all_shards() {
        for (id, karma) in users_on(server, shard) {
            assert!(after.insert(id, karma).is_none(), "a key on two shards");
        }
    }
    assert_eq!(after, users, "every user, once, with its value");
    let agent = agent();
    for (i, (id, karma)) in users.iter().enumerate() {
        if i % 7 == 0 {
            let (status, body) = send(
                &agent,
                "GET",
                &format!("{}/users/{id}", server.base()),
                None,
            )
            .expect("an answer");
            assert_eq!(
                (status, body["karma"].as_i64()),
                (200, Some(*karma)),
                "{id}"
            );
        }
    }
    for id in &posts {
        let reply = server.get(&format!("/posts/{id}"));
        assert_eq!(reply.status, 200, "post {id}: {}", reply.text);
        let at = server.get(&format!("/posts/{id}/shard"));
        assert_ne!(at.json["shard"], DRAINED, "post {id}: {}", at.text);
        let holders = all_shards()
            .filter(|shard| keys_on(server, shard, "posts", "id").contains(&json!(id)))
            .count();
        assert_eq!(holders, 1, "post {id}");
    }
}

/// `POST /admin/reassign` moves one user to another shard: the row is on that shard only, and
/// reads, updates, a duplicate insert, a delete and a new insert of the key all follow it.
fn reassign_moves_one_key_and_every_route_follows_it(server: &Workerd) {
    let serving = ["DB_EAST", "DB_WEST", STANDBY];
    let (from, id) = serving
        .iter()
        .find_map(|shard| {
            users_on(server, shard)
                .first()
                .map(|(id, _)| (*shard, id.clone()))
        })
        .expect("some user");
    let to = serving.iter().find(|shard| **shard != from).unwrap();
    let reply = server.post(
        "/admin/reassign",
        &json!({ "table": "users", "key": id, "shard": to }),
    );
    assert_eq!(reply.status, 200, "{}\n{}", reply.text, server.log_tail());
    assert_eq!(reply.json["kind"], "reassign", "{}", reply.text);
    assert_eq!(reply.json["rowsCopied"], 1, "{}", reply.text);
    let held = |shard: &str| users_on(server, shard).iter().any(|(k, _)| *k == id);
    assert!(held(to) && !held(from), "{id}: {from} -> {to}");
    let at = server.get(&format!("/users/{id}/shard"));
    assert_eq!(at.json["shard"], *to, "{}", at.text);

    let update = server.request(
        "PUT",
        &format!("/users/{id}"),
        Some(&user(&id, 4242).to_string()),
    );
    assert_eq!(update.status, 200, "{}", update.text);
    assert_eq!(server.get(&format!("/users/{id}")).json["karma"], 4242);
    let again = server.post("/users", &user(&id, 1));
    assert_eq!(again.status, 409, "a second copy: {}", again.text);
    let delete = server.request("DELETE", &format!("/users/{id}"), None);
    assert_eq!(delete.status, 200, "{}", delete.text);
    let insert = server.post("/users", &user(&id, 7));
    assert!(insert.status < 300, "{}", insert.text);
    assert!(
        held(to) && !held(from),
        "the key came back where its entry points"
    );
    let total: usize = all_shards()
        .map(|shard| {
            users_on(server, shard)
                .iter()
                .filter(|(k, _)| *k == id)
                .count()
        })
        .sum();
    assert_eq!(total, 1);

    // A malformed body, a key no shard holds, and a shard outside the map, are refused.
    let malformed = server.post("/admin/reassign", &json!({ "table": "users", "key": [1] }));
    assert_eq!(malformed.status, 400, "{}", malformed.text);
    assert_eq!(malformed.json["code"], "BAD_BODY", "{}", malformed.text);
    let missing = server.post(
        "/admin/reassign",
        &json!({ "table": "users", "key": "nobody-at-all", "shard": to }),
    );
    assert_eq!(missing.status, 404, "{}", missing.text);
    let retired = server.post(
        "/admin/reassign",
        &json!({ "table": "users", "key": id, "shard": "DB_EU" }),
    );
    assert_eq!(retired.status, 400, "{}", retired.text);
    assert_eq!(retired.json["code"], "CONFIG_INVALID", "{}", retired.text);
}

/// A shard in a Durable Object joins a running deployment with `add_shard` alone: it has no D1
/// database and no binding of its own (the object is created by name in the `SHARD_DO`
/// namespace), so nothing in `wrangler.toml` changes. Rows move onto it and every one of them
/// stays readable.
#[test]
fn a_durable_object_shard_is_added_without_a_binding_of_its_own() {
    let config = r#"{"shards": [
        {"name": "DB_EAST", "region": "enam"},
        {"name": "DB_WEST", "region": "wnam"},
        {"name": "DB_EU", "region": "weur"},
        {"name": "T_0", "region": "apac", "durable_object": "SHARD_DO"}],
      "strategy": {"read": "hash", "write": "hash"}, "target_region": "enam", "allow_flush": true}"#;
    let server =
        Workerd::start_with_vars(&[("COLLEGEDB_CONFIG", config), ("COLLEGEDB_STANDBY", "T_0")]);
    let setup = server.post("/setup", &json!({}));
    assert_eq!(setup.status, 200, "{}", setup.text);
    assert_eq!(setup.json["coordinator"]["shards"], 3, "{}", setup.text);

    const ROWS: usize = 300;
    let rows: Vec<Value> = (0..ROWS)
        .map(|i| user(&format!("do-{i:04}"), i as i64))
        .collect();
    for chunk in rows.chunks(100) {
        let reply = server.post("/users/batch", &json!(chunk));
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    assert!(users_on(&server, "T_0").is_empty());

    let started = server.post("/admin/shards/T_0/add", &json!({}));
    assert_eq!(started.status, 202, "{}", started.text);
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let status = growth(&server);
        if status["running"].is_null() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not finish: {status}\n{}",
            server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(done["last"]["kind"], "add_shard", "{done}");
    assert_eq!(done["last"]["finished"], true, "{done}");

    // Rows moved onto the object, none was lost or doubled, and every one is found by key.
    let on_object = users_on(&server, "T_0");
    assert!(
        on_object.len() > ROWS / 8,
        "{} rows on T_0",
        on_object.len()
    );
    let mut everywhere: Vec<String> = ["DB_EAST", "DB_WEST", "DB_EU", "T_0"]
        .iter()
        .flat_map(|shard| users_on(&server, shard))
        .map(|(id, _)| id)
        .collect();
    everywhere.sort();
    let expected: Vec<String> = (0..ROWS).map(|i| format!("do-{i:04}")).collect();
    assert_eq!(everywhere, expected);
    for (id, karma) in &on_object {
        let found = server.get(&format!("/users/{id}"));
        assert_eq!(found.status, 200, "{id}: {}", found.text);
        assert_eq!(found.json["karma"].as_i64(), Some(*karma), "{id}");
        let shard = server.get(&format!("/users/{id}/shard"));
        assert_eq!(shard.json["shard"], "T_0", "{id}");
    }
}

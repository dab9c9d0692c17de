//! End to end in local workerd: the Worker example on real (local) D1, KV and Durable Objects,
//! driven over HTTP on 127.0.0.1. Run with `--features workerd` after building the example
//! (scripts/test.sh does both). One server serves every step; it is stopped when the test ends,
//! whatever the outcome.
#![cfg(feature = "workerd")]

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use collegedb_tests::workerd::Workerd;
use serde_json::{json, Value};

const SHARDS: [&str; 3] = ["DB_EAST", "DB_WEST", "DB_EU"];

/// The example's standby shard: configured, owning no slots until `add_shard`.
const STANDBY: &str = "DB_APAC";

fn user(id: &str) -> Value {
    json!({ "id": id, "name": format!("name {id}"), "email": null, "karma": 7, "active": true,
            "avatar": [0, 1, 254, 255], "profile": { "tags": ["a", "b"], "n": 1.5 } })
}

/// Rows of `table` per serving shard, as the shards themselves count them. The standby shard
/// must hold none.
fn rows_per_shard(server: &Workerd, table: &str) -> BTreeMap<String, u64> {
    let stats = server.get("/stats");
    assert_eq!(stats.status, 200, "{}", stats.text);
    let mut counts: BTreeMap<String, u64> = stats
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["shard"].as_str().unwrap().to_owned(),
                s["tables"][table].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts.remove(STANDBY),
        Some(0),
        "{table}: the standby shard holds rows: {}",
        stats.text
    );
    counts
}

fn directory_entries(server: &Workerd, query: &str) -> u64 {
    let reply = server.get(&format!("/directory/count{query}"));
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json["entries"].as_u64().unwrap()
}

#[test]
fn worker_example_end_to_end() {
    let server = Workerd::start();
    scenarios(&server);
}

/// The Worker example's configuration with `DB_EAST` on D1 and the other three shards in
/// Durable Objects with SQLite storage (`SHARD_DO`): one deployment, both kinds of shard.
const MIXED_CONFIG: &str = r#"{"shards": [
    {"name": "DB_EAST", "region": "enam"},
    {"name": "DB_WEST", "region": "wnam", "durable_object": "SHARD_DO"},
    {"name": "DB_EU", "region": "weur", "durable_object": "SHARD_DO"},
    {"name": "DB_APAC", "region": "apac", "durable_object": "SHARD_DO"}],
  "strategy": {"read": "hash", "write": "hash"}, "target_region": "enam", "allow_flush": true}"#;

/// Every scenario of the D1 run, again on a deployment whose shards are mostly Durable Objects:
/// same routes, same assertions, same placement invariants.
#[test]
fn worker_example_end_to_end_on_durable_object_shards() {
    let server = Workerd::start_with_vars(&[("COLLEGEDB_CONFIG", MIXED_CONFIG)]);
    let config = server.get("/admin/config");
    assert_eq!(
        config.json["config"]["shards"][1]["durable_object"], "SHARD_DO",
        "{}",
        config.text
    );
    scenarios(&server);
    statements_reach_the_kind_of_shard_configured(&server);
}

/// A shard in a Durable Object at its size limit refuses what could grow it, with `SHARD_FULL`,
/// and still deletes. The limit is lowered with `COLLEGEDB_SHARD_MAX_BYTES`.
#[test]
fn a_full_durable_object_shard_refuses_growth_and_still_deletes() {
    let server = Workerd::start_with_vars(&[
        ("COLLEGEDB_CONFIG", MIXED_CONFIG),
        ("COLLEGEDB_SHARD_MAX_BYTES", "300000"),
    ]);
    assert_eq!(server.post("/setup", &json!({})).status, 200);
    let big = "x".repeat(40_000);
    let mut refused = None;
    let mut written = Vec::new();
    for i in 0..200 {
        let id = format!("full-{i}");
        let mut row = user(&id);
        row["profile"] = json!({ "padding": big });
        // Where hash placement puts the key (the example seeds its map from these three).
        let shard = json!(seed_owner(&collegedb::Key::text(id.as_str()).unwrap()));
        if shard == "DB_EAST" {
            continue; // the D1 shard has no such limit here
        }
        let reply = server.post("/users", &row);
        if reply.status == 201 {
            written.push((id, shard));
            continue;
        }
        assert_eq!(reply.status, 507, "{}", reply.text);
        assert_eq!(reply.json["code"], "SHARD_FULL", "{}", reply.text);
        assert!(reply.text.contains("delete rows"), "{}", reply.text);
        refused = Some(shard);
        break;
    }
    let full = refused.expect("a shard filled up");
    // A write sent as a query (`RETURNING`) is refused too, however short.
    let raw = server.post(
        &format!("/raw/{}", full.as_str().unwrap()),
        &json!({ "sql": "INSERT INTO events (id, kind) VALUES (999999, 'x') RETURNING id" }),
    );
    assert_eq!(raw.status, 507, "{}", raw.text);
    assert_eq!(raw.json["code"], "SHARD_FULL", "{}", raw.text);
    // Deleting a row of the full shard works, and nothing written was lost.
    let (victim, _) = written
        .iter()
        .find(|(_, shard)| *shard == full)
        .expect("rows on the full shard");
    let deleted = server.request("DELETE", &format!("/users/{victim}"), None);
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    for (id, _) in written.iter().filter(|(id, _)| id != victim) {
        assert_eq!(server.get(&format!("/users/{id}")).status, 200, "{id}");
    }
    // Deleting the full shard's rows makes room: inserts on it are accepted again.
    for (id, _) in written
        .iter()
        .filter(|(id, shard)| *shard == full && id != victim)
    {
        let deleted = server.request("DELETE", &format!("/users/{id}"), None);
        assert_eq!(deleted.status, 200, "{}", deleted.text);
    }
    let again = (200..400)
        .map(|i| format!("full-{i}"))
        .find(|id| json!(seed_owner(&collegedb::Key::text(id.as_str()).unwrap())) == full)
        .expect("a key on the full shard");
    let reply = server.post("/users", &user(&again));
    assert_eq!(reply.status, 201, "{}", reply.text);
}

/// Statements reach the kind of shard the configuration names: a D1 shard in a session returns
/// a bookmark, a Durable Object shard has none to return.
fn statements_reach_the_kind_of_shard_configured(server: &Workerd) {
    let mut seen = BTreeMap::new();
    for i in 0..40 {
        let id = format!("kind-{i}");
        let reply = server.request_with(
            "POST",
            "/users?reads=first-primary",
            Some(&user(&id).to_string()),
            &[],
        );
        assert_eq!(reply.status, 201, "{}", reply.text);
        let shard = server.get(&format!("/users/{id}/shard")).json["shard"]
            .as_str()
            .unwrap()
            .to_owned();
        let bookmarks =
            collegedb::session::Bookmarks::parse(reply.bookmarks.as_deref().unwrap_or("")).unwrap();
        seen.insert(shard.clone(), bookmarks.get(&shard).is_some());
    }
    assert_eq!(seen.get("DB_EAST"), Some(&true), "{seen:?}");
    for shard in ["DB_WEST", "DB_EU"] {
        assert_eq!(seen.get(shard), Some(&false), "{seen:?}");
    }
}

fn scenarios(server: &Workerd) {
    let setup = server.post("/setup", &json!({}));
    assert_eq!(setup.status, 200, "{}", setup.text);
    assert_eq!(
        setup.json["shards"],
        json!(["DB_EAST", "DB_WEST", "DB_EU", STANDBY])
    );
    assert_eq!(setup.json["coordinator"]["status"], "ok", "{}", setup.text);
    assert_eq!(setup.json["coordinator"]["shards"], 3);

    hash_rows_spread_over_every_shard_with_no_directory_operation(server);
    round_robin_is_even_and_recorded_in_the_durable_object_directory(server);
    kv_directory_places_and_finds_rows(server);
    directory_listings_page_with_cursors(server);
    location_places_near_the_requested_region(server);
    location_comes_from_request_cf(server);
    config_comes_from_the_environment(server);
    sessions_carry_bookmarks_across_requests(server);
    random_placement_and_chunked_batches(server);
    concurrent_first_writes_settle_on_one_shard(server);
    unique_emails_hold_across_shards(server);
    comments_live_with_their_user_and_batch_with_it(server);
    reads_of_unknown_keys_create_no_directory_entries(server);
    bad_input_is_answered_with_typed_codes(server);
    values_map_both_ways_through_d1(server);
    updates_upserts_and_deletes_route_to_the_owner(server);
    coordinator_stats_match_the_shards(server);
    statistics_cost_no_coordinator_call_per_write(server);
    recount_sets_the_coordinator_from_the_shards(server);
    coordinator_serves_the_seed_http_api(server);
    coordinator_failure_falls_back_to_a_local_counter(server);
    fence_sql_runs_on_d1(server);
    migrations_reach_every_shard_once_and_models_match_the_tables(server);
    typed_queries_run_on_d1(server);
    health_metrics_and_the_dashboard_in_a_browser(server);
    flush_empties_everything(server);
}

/// Rows per shard over every table, as the shards count them (the standby shard included).
fn all_rows_per_shard(server: &Workerd) -> BTreeMap<String, u64> {
    let stats = server.get("/stats");
    assert_eq!(stats.status, 200, "{}", stats.text);
    stats
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["shard"].as_str().unwrap().to_owned(),
                s["rows"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `/admin/health` probes every D1 shard, the directory and the coordinator; `/admin/metrics`
/// counts this isolate's routed calls; `/admin/dashboard` in headless Chromium lists every shard
/// and shows rows written after it loaded, by itself.
fn health_metrics_and_the_dashboard_in_a_browser(server: &Workerd) {
    let health = server.get("/admin/health");
    assert_eq!(health.status, 200, "{}", health.text);
    assert_eq!(health.json["ok"], true, "{}", health.text);
    let components: Vec<(String, String, bool)> = health.json["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap().to_owned(),
                c["name"].as_str().unwrap().to_owned(),
                c["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    let mut expected: Vec<(String, String, bool)> = SHARDS
        .iter()
        .chain([&STANDBY])
        .map(|s| ("shard".to_owned(), (*s).to_owned(), true))
        .collect();
    expected.push(("directory".into(), "directory".into(), true));
    expected.push(("coordinator".into(), "coordinator".into(), true));
    assert_eq!(components, expected, "{}", health.text);

    // Reads and writes of this test went through this isolate's handles.
    let user_id = "metrics-probe";
    assert_eq!(server.post("/users", &user(user_id)).status, 201);
    assert_eq!(server.get(&format!("/users/{user_id}")).status, 200);
    let metrics = server.get("/admin/metrics");
    assert_eq!(metrics.status, 200, "{}", metrics.text);
    let shards = metrics.json["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 4, "{}", metrics.text);
    let calls: u64 = shards.iter().map(|s| s["calls"].as_u64().unwrap()).sum();
    let rows: u64 = shards.iter().map(|s| s["rows"].as_u64().unwrap()).sum();
    assert!(calls >= 2 && rows >= 2, "{}", metrics.text);

    let json = server.get("/admin/dashboard.json");
    assert_eq!(json.status, 200, "{}", json.text);
    assert_eq!(json.json["shards"].as_array().unwrap().len(), 4);
    assert_eq!(json.json["blocks"]["count"], 0);

    let screenshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../target/dashboard/{}.png",
        // The D1 run and the Durable Object run go on at once: one file each.
        if server.get("/admin/config").text.contains("durable_object") {
            "workerd-objects"
        } else {
            "workerd"
        }
    ));
    let _ = std::fs::remove_file(&screenshot);
    let names: Vec<&str> = SHARDS.iter().chain([&STANDBY]).copied().collect();
    let url = format!("{}/admin/dashboard", server.base());
    let mut browser = collegedb_tests::browser::Browser::open(&url, &names, &screenshot);
    let shown = browser.ready();
    let before = all_rows_per_shard(server);
    assert_eq!(shown, before, "the page's first rows");
    for i in 0..24 {
        let reply = server.post("/users", &user(&format!("dash-{i:02}")));
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    let after = all_rows_per_shard(server);
    assert_eq!(
        after.values().sum::<u64>(),
        before.values().sum::<u64>() + 24
    );
    browser.expect(&after);
    browser.finish();
    assert!(
        screenshot.metadata().unwrap().len() > 10_000,
        "a screenshot"
    );
}

/// The typed-query layer on D1: a filtered, ordered keyset walk across the shards, a count, a
/// grouped aggregate pushed down as partials, and a bulk update, compared with what the rows
/// imply.
fn typed_queries_run_on_d1(server: &Workerd) {
    let karma = |i: i64| (i * 37) % 50;
    for i in 0..40 {
        let mut row = user(&format!("q-{i:02}"));
        row["karma"] = json!(100 + karma(i));
        row["active"] = json!(i % 4 != 0);
        let reply = server.post("/users", &row);
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    // Active users with karma >= 120, karma descending, ties by id.
    let mut expected: Vec<(i64, String)> = (0..40)
        .filter(|i| i % 4 != 0 && 100 + karma(*i) >= 120)
        .map(|i| (-(100 + karma(i)), format!("q-{i:02}")))
        .collect();
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
    let (mut seen, mut cursor) = (Vec::new(), String::new());
    loop {
        let page = server.get(&format!("/query/users?minKarma=120&limit=4{cursor}"));
        assert_eq!(page.status, 200, "{}", page.text);
        assert_eq!(page.json["count"].as_u64(), Some(expected.len() as u64));
        seen.extend(
            page.json["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["id"].as_str().unwrap().to_owned()),
        );
        match page.json["next"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    let page = server.get("/query/users?minKarma=120&limit=4");
    let groups = page.json["groups"].as_array().unwrap();
    let group = |active: i64| {
        groups
            .iter()
            .find(|g| g["active"].as_i64() == Some(active))
            .unwrap_or_else(|| panic!("no group {active}: {}", page.text))
    };
    let (mut counts, mut sums) = ([0u64; 2], [0f64; 2]);
    for i in (0..40).filter(|i| 100 + karma(*i) >= 120) {
        let active = usize::from(i % 4 != 0);
        counts[active] += 1;
        sums[active] += (100 + karma(i)) as f64;
    }
    for active in [0, 1] {
        assert_eq!(group(active as i64)["count"].as_u64(), Some(counts[active]));
        assert_eq!(group(active as i64)["karma"].as_f64(), Some(sums[active]));
    }
    // A bulk update behind the slot fence: every user with karma < 130 becomes inactive (the
    // users of earlier steps too); active users with karma >= 130 are untouched.
    let high = server.get("/query/users?minKarma=130&limit=1");
    let still = high.json["count"].as_u64().unwrap();
    let expected_high = (0..40)
        .filter(|i| i % 4 != 0 && 100 + karma(*i) >= 130)
        .count() as u64;
    assert!(still >= expected_high, "{}", high.text);
    let reply = server.post("/query/users/deactivate", &json!({ "below": 130 }));
    assert_eq!(reply.status, 200, "{}", reply.text);
    let low = (0..40).filter(|i| 100 + karma(*i) < 130).count() as u64;
    let total = reply.json["total"].as_u64().unwrap();
    assert!(total >= 45 + low, "{}", reply.text);
    let per_shard: u64 = reply.json["perShard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_u64().unwrap())
        .sum();
    assert_eq!(per_shard, total);
    let after = server.get("/query/users?minKarma=0&limit=1");
    assert_eq!(after.json["count"].as_u64(), Some(still), "{}", after.text);
}

/// `POST /admin/migrate` applies the example's two migrations to all four shards (the standby
/// one too), each recorded on its shard; a second call applies nothing; every model matches its
/// table on every shard (`GET /admin/schema`).
fn migrations_reach_every_shard_once_and_models_match_the_tables(server: &Workerd) {
    let schema = server.get("/admin/schema");
    assert_eq!(schema.status, 200, "{}", schema.text);
    assert_eq!(schema.json["clean"], true, "{}", schema.text);
    let first = server.post("/admin/migrate", &json!({}));
    assert_eq!(first.status, 200, "{}\n{}", first.text, server.log_tail());
    assert_eq!(
        first.json["applied"].as_array().map(Vec::len),
        Some(8),
        "{}",
        first.text
    );
    for shard in ["DB_EAST", "DB_WEST", "DB_EU", STANDBY] {
        assert_eq!(first.json["shards"][shard], 2, "{}", first.text);
        let reply = server.post(
            &format!("/raw/{shard}"),
            &json!({ "sql": "SELECT version FROM _collegedb_migrations ORDER BY version" }),
        );
        assert_eq!(
            reply.json,
            json!([{ "version": 1 }, { "version": 2 }]),
            "{shard}"
        );
        let index = server.post(
            &format!("/raw/{shard}"),
            &json!({ "sql": "SELECT name FROM sqlite_master WHERE name = 'user_tags_by_tag'" }),
        );
        assert_eq!(
            index.json.as_array().map(Vec::len),
            Some(1),
            "{shard}: {}",
            index.text
        );
    }
    let again = server.post("/admin/migrate", &json!({}));
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json["applied"], json!([]), "{}", again.text);
}

fn hash_rows_spread_over_every_shard_with_no_directory_operation(server: &Workerd) {
    for i in 0..45 {
        let reply = server.post("/users", &user(&format!("user-{i}")));
        assert_eq!(reply.status, 201, "{}", reply.text);
        assert_eq!(
            reply.directory_ops,
            (0, 0),
            "hash insert touched the directory"
        );
    }
    for i in 0..45 {
        let reply = server.get(&format!("/users/user-{i}"));
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.json, user(&format!("user-{i}")));
        assert_eq!(
            reply.directory_ops,
            (0, 0),
            "hash read touched the directory"
        );
    }
    // Same key, same shard on wasm32 (in the Worker) and on x86_64 (here).
    for i in 0..45 {
        let id = format!("user-{i}");
        let native = seed_owner(&collegedb::Key::text(id.as_str()).unwrap());
        let reply = server.get(&format!("/users/{id}/shard"));
        assert_eq!(reply.json["shard"], native, "{id}");
    }
    // A cross-shard scan in pages of 10 returns every user once, in key order.
    let (mut seen, mut after) = (Vec::new(), String::new());
    loop {
        let page = server.get(&format!("/users?limit=10{after}"));
        assert_eq!(page.status, 200, "{}", page.text);
        seen.extend(
            page.json["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["id"].as_str().unwrap().to_owned()),
        );
        match page.json["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..45).map(|i| format!("user-{i}")).collect();
    expected.sort();
    assert_eq!(seen, expected);
    let counts = rows_per_shard(server, "users");
    assert_eq!(counts.values().sum::<u64>(), 45);
    assert!(
        counts.values().all(|&n| n >= 5),
        "every D1 shard holds users: {counts:?}"
    );
    assert_eq!(directory_entries(server, ""), 0);
}

fn round_robin_is_even_and_recorded_in_the_durable_object_directory(server: &Workerd) {
    for id in 0..30 {
        let post = json!({ "id": id, "author": "a", "title": format!("post {id}"), "score": id as f64 / 2.0 });
        let reply = server.post("/posts", &post);
        assert_eq!(reply.status, 201, "{}", reply.text);
        assert_eq!(
            reply.directory_ops.1, 1,
            "one claim per new round-robin key"
        );
    }
    let counts = rows_per_shard(server, "posts");
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{counts:?}"
    );
    assert_eq!(directory_entries(server, ""), 30);
    for id in 0..30 {
        let reply = server.get(&format!("/posts/{id}"));
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.json["title"], format!("post {id}"));
    }
}

fn kv_directory_places_and_finds_rows(server: &Workerd) {
    let before = directory_entries(server, "?dir=kv");
    for id in 100..112 {
        let post = json!({ "id": id, "author": "kv", "title": "via kv", "score": 0.0 });
        let reply = server.post("/posts?dir=kv", &post);
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    assert_eq!(directory_entries(server, "?dir=kv"), before + 12);
    for id in 100..112 {
        let reply = server.get(&format!("/posts/{id}?dir=kv"));
        assert_eq!(reply.status, 200, "{}", reply.text);
        let shard = server.get(&format!("/posts/{id}/shard?dir=kv"));
        assert!(
            SHARDS.contains(&shard.json["shard"].as_str().unwrap()),
            "{}",
            shard.text
        );
    }
}

fn directory_listings_page_with_cursors(server: &Workerd) {
    for (query, expected) in [("", 30), ("&dir=kv", 12)] {
        let (mut keys, mut cursor, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let page = server.get(&format!("/directory/list/posts?limit=5{cursor}{query}"));
            assert_eq!(page.status, 200, "{}", page.text);
            pages += 1;
            let entries = page.json["entries"].as_array().unwrap();
            assert!(entries.len() <= 5, "{}", page.text);
            keys.extend(entries.iter().map(|e| e[0].as_str().unwrap().to_owned()));
            match page.json["cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={}", next.replace(':', "%3A")),
                None => break,
            }
            assert!(pages < 100, "listing does not end");
        }
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), expected, "{query}: every entry once");
        assert!(pages >= expected / 5, "{query}: paged ({pages} pages)");
    }
    // A key too long for a KV name next to its table prefix is stored under a hash of the key,
    // and still found and listed.
    let token = "t".repeat(505);
    let reply = server.post(
        "/sessions?dir=kv",
        &json!({ "token": token, "user_id": "long" }),
    );
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(
        server.get(&format!("/sessions/{token}?dir=kv")).json["user_id"],
        "long"
    );
    let listed = server.get("/directory/list/sessions?dir=kv");
    let entries = listed.json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{}", listed.text);
    assert_eq!(entries[0][0], format!("{token:?}"));
}

fn location_places_near_the_requested_region(server: &Workerd) {
    for (region, expected) in [
        ("weur", "DB_EU"),
        ("eeur", "DB_EU"),
        ("wnam", "DB_WEST"),
        ("enam", "DB_EAST"),
    ] {
        for i in 0..4 {
            let token = format!("{region}-{i}");
            let reply = server.post(
                &format!("/sessions?region={region}"),
                &json!({ "token": token, "user_id": "u" }),
            );
            assert_eq!(reply.status, 201, "{}", reply.text);
            // Read hash-first (the model's read strategy) from a request with no region at all.
            let found = server.get(&format!("/sessions/{token}"));
            assert_eq!(found.status, 200, "{}", found.text);
            let shard = server.get(&format!("/sessions/{token}/shard"));
            assert_eq!(shard.json["shard"], expected, "{region}");
        }
    }
}

/// Without `?region=`, `location` placement targets the region `request.cf` names. Local
/// workerd gives every request the same `cf` (a fixed place), so the test reads it back from
/// `/whereami` and checks the mapping and the placement against it.
fn location_comes_from_request_cf(server: &Workerd) {
    let here = server.get("/whereami");
    assert_eq!(here.status, 200, "{}", here.text);
    let location = collegedb::geo::RequestLocation {
        continent: here.json["continent"].as_str().map(str::to_owned),
        country: here.json["country"].as_str().map(str::to_owned),
        coordinates: here.json["coordinates"]
            .as_array()
            .map(|c| (c[0].as_f64().unwrap(), c[1].as_f64().unwrap())),
    };
    let expected = location.region().expect("local workerd sends a cf object");
    assert_eq!(here.json["cfRegion"], expected.as_str(), "{}", here.text);
    assert_eq!(here.json["region"], expected.as_str(), "{}", here.text);
    // `?region=` still wins over `cf`.
    let chosen = server.get("/whereami?region=oc");
    assert_eq!(chosen.json["region"], "oc", "{}", chosen.text);

    let shard_of_region = |region: &str| {
        let config = server.get("/admin/config");
        config.json["config"]["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| {
                config.json["initialShards"]
                    .as_array()
                    .unwrap()
                    .contains(&s["name"])
            })
            .min_by(|a, b| {
                let distance = |s: &serde_json::Value| {
                    let r: collegedb::Region = s["region"].as_str().unwrap().parse().unwrap();
                    r.distance_km(region.parse().unwrap())
                };
                distance(a).total_cmp(&distance(b))
            })
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let token = "from-cf";
    let reply = server.post("/sessions", &json!({ "token": token, "user_id": "u" }));
    assert_eq!(reply.status, 201, "{}", reply.text);
    let shard = server.get(&format!("/sessions/{token}/shard"));
    assert_eq!(shard.json["shard"], shard_of_region(expected.as_str()));
}

/// The Worker builds its configuration from `COLLEGEDB_CONFIG` in wrangler.toml, or discovers the
/// D1 bindings by prefix; a missing var is a typed error.
fn config_comes_from_the_environment(server: &Workerd) {
    let config = server.get("/admin/config");
    assert_eq!(config.status, 200, "{}", config.text);
    let names: Vec<&str> = config.json["config"]["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["DB_EAST", "DB_WEST", "DB_EU", STANDBY]);
    assert_eq!(config.json["config"]["shards"][2]["region"], "weur");
    assert_eq!(
        config.json["initialShards"],
        json!(["DB_EAST", "DB_WEST", "DB_EU"])
    );
    let discovered = server.get("/admin/config?prefix=DB_");
    assert_eq!(discovered.status, 200, "{}", discovered.text);
    let names: Vec<&str> = discovered.json["config"]["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["DB_APAC", "DB_EAST", "DB_EU", "DB_WEST"]);
    for (path, message) in [
        ("/admin/config?var=NOT_SET", "is not set"),
        (
            "/admin/config?var=COLLEGEDB_STANDBY",
            "var `COLLEGEDB_STANDBY`",
        ),
        (
            "/admin/config?prefix=NOPE_",
            "no D1 binding starts with `NOPE_`",
        ),
        // The KV and Durable Object bindings start with `DIRECTORY_` but are not D1 databases.
        ("/admin/config?prefix=DIRECTORY_", "no D1 binding"),
    ] {
        let refused = server.get(path);
        assert_eq!(refused.status, 500, "{path}: {}", refused.text);
        assert_eq!(refused.json["code"], "CONFIG_INVALID", "{path}");
        assert!(refused.text.contains(message), "{path}: {}", refused.text);
    }
}

/// D1 sessions: a handle that reads through sessions returns each touched shard's bookmark; the
/// client sends them back and the next request starts from them; a model marked
/// `consistency = "primary"` reads outside the session; hostile headers are refused.
fn sessions_carry_bookmarks_across_requests(server: &Workerd) {
    let parse = |header: &Option<String>| {
        collegedb::session::Bookmarks::parse(header.as_deref().unwrap_or("")).unwrap()
    };
    // Primary reads (the default): no session, no bookmark.
    let plain = server.get("/users/nobody-here");
    assert_eq!(plain.bookmarks, None);

    // A user on a D1 shard (a Durable Object shard, in the mixed run, has no sessions).
    let config = server.get("/admin/config").json;
    let on_d1 = |shard: &str| {
        config["config"]["shards"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == shard && s.get("durable_object").is_none())
    };
    let id = (0..)
        .map(|i| format!("bookmarked-{i}"))
        .find(|id| on_d1(&seed_owner(&collegedb::Key::text(id.as_str()).unwrap())))
        .unwrap();
    let written = server.request_with(
        "POST",
        "/users?reads=first-primary",
        Some(&user(&id).to_string()),
        &[],
    );
    assert_eq!(written.status, 201, "{}", written.text);
    let owner = server.get(&format!("/users/{id}/shard")).json["shard"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(on_d1(&owner), "{owner}");
    let after_write = parse(&written.bookmarks);
    let first = after_write
        .get(&owner)
        .unwrap_or_else(|| panic!("no bookmark for {owner}: {:?}", written.bookmarks))
        .to_owned();

    // The next request brings the bookmarks back: its session starts there, reads the write, and
    // returns a bookmark at least as new. Shards it did not touch keep what the client sent.
    let mut sent = after_write.clone();
    let untouched = ["DB_EAST", "DB_WEST", "DB_EU"]
        .into_iter()
        .find(|s| *s != owner)
        .unwrap();
    sent.set(untouched, "00000000-00000001-00000000-carried")
        .unwrap();
    let header = sent.to_header();
    let read = server.request_with(
        "GET",
        &format!("/users/{id}"),
        None,
        &[("x-collegedb-bookmarks", &header)],
    );
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.json["id"], id.as_str());
    let after_read = parse(&read.bookmarks);
    assert!(
        after_read.get(&owner).unwrap() >= first.as_str(),
        "{after_read:?}"
    );
    assert_eq!(
        after_read.get(untouched),
        Some("00000000-00000001-00000000-carried")
    );

    // `first-unconstrained` sessions work as well (local workerd has no replicas: see README).
    let loose = server.get(&format!("/users/{id}?reads=first-unconstrained"));
    assert_eq!(loose.status, 200, "{}", loose.text);
    assert!(parse(&loose.bookmarks).get(&owner).is_some());

    // `Post` reads the primary whatever the handle does: its find runs outside the session, so
    // the response carries no bookmark for the shard it read.
    let post = server.post(
        "/posts",
        &json!({ "id": 990_001, "author": "b", "title": "t", "score": 1.0 }),
    );
    assert_eq!(post.status, 201, "{}", post.text);
    let post_shard = server.get("/posts/990001/shard").json["shard"]
        .as_str()
        .unwrap()
        .to_owned();
    let found = server.get("/posts/990001?reads=first-primary");
    assert_eq!(found.status, 200, "{}", found.text);
    assert_eq!(
        parse(&found.bookmarks).get(&post_shard),
        None,
        "{:?}",
        found.bookmarks
    );

    // A shard the configuration does not have (removed, renamed) is dropped, not an error.
    let stale = server.request_with(
        "GET",
        &format!("/users/{id}"),
        None,
        &[("x-collegedb-bookmarks", "NOT_A_SHARD=00000001")],
    );
    assert_eq!(stale.status, 200, "{}", stale.text);
    assert!(parse(&stale.bookmarks).get("NOT_A_SHARD").is_none());
    for hostile in ["DB_EAST", "DB_EAST=<script>", "DB_EAST=1,../x=2"] {
        let refused = server.request_with(
            "GET",
            &format!("/users/{id}"),
            None,
            &[("x-collegedb-bookmarks", hostile)],
        );
        assert_eq!(refused.status, 400, "{hostile}: {}", refused.text);
        assert_eq!(refused.json["code"], "BOOKMARK_INVALID", "{hostile}");
    }
    let unknown = server.get(&format!("/users/{id}?reads=eventually"));
    assert_eq!(unknown.json["code"], "CONFIG_INVALID", "{}", unknown.text);
}

fn random_placement_and_chunked_batches(server: &Workerd) {
    // 120 events of 2 columns: 50 rows per statement under D1's 100 bound parameters.
    let events: Vec<Value> = (0..120)
        .map(|id| json!({ "id": id, "kind": format!("k{id}") }))
        .collect();
    let reply = server.post("/events/batch", &Value::Array(events));
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["inserted"], 120);
    let counts = rows_per_shard(server, "events");
    assert_eq!(counts.values().sum::<u64>(), 120);
    assert!(
        counts.values().all(|&n| n >= 15),
        "random placement spreads: {counts:?}"
    );
    for id in [0, 49, 50, 119] {
        let reply = server.get(&format!("/events/{id}"));
        assert_eq!(reply.json["kind"], format!("k{id}"), "{}", reply.text);
    }
}

fn concurrent_first_writes_settle_on_one_shard(server: &Workerd) {
    const PARALLEL: usize = 12;
    let base = server.base().to_owned();
    for round in 0..4u32 {
        let id = 10_000 + round;
        let barrier = Arc::new(Barrier::new(PARALLEL));
        let statuses: Vec<u16> = (0..PARALLEL)
            .map(|_| {
                let (barrier, base) = (barrier.clone(), base.clone());
                std::thread::spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .build()
                        .into();
                    barrier.wait();
                    agent
                        .post(&format!("{base}/events"))
                        .send(json!({ "id": id, "kind": "race" }).to_string())
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert_eq!(
            statuses.iter().filter(|&&s| s == 201).count(),
            1,
            "round {round}: {statuses:?}"
        );
        assert!(
            statuses.iter().all(|&s| s == 201 || s == 409),
            "{statuses:?}"
        );
        let mut holders = 0;
        for shard in SHARDS {
            let rows = server.post(
                &format!("/raw/{shard}"),
                &json!({ "sql": "SELECT id FROM events WHERE id = ?", "params": [id] }),
            );
            holders += rows.json.as_array().unwrap().len();
        }
        assert_eq!(holders, 1, "exactly one row for key {id}");
    }
}

/// `#[sharded(unique)]` in the Worker: lookups by email over every shard through the Durable
/// Object directory, `DUPLICATE_KEY` naming the column (also for inserts racing from many
/// connections), and updates and deletes that keep the lookup exact.
fn unique_emails_hold_across_shards(server: &Workerd) {
    let account = |id: &str, email: &str| json!({ "id": id, "email": email, "name": id });
    let mut holders = BTreeMap::new();
    for i in 0..12 {
        let id = format!("acct-{i}");
        let reply = server.post("/accounts", &account(&id, &format!("{id}@example.com")));
        assert_eq!(reply.status, 201, "{}", reply.text);
        let shard = server.get(&format!("/accounts/{id}/shard"));
        holders.insert(shard.json["shard"].as_str().unwrap().to_owned(), id);
    }
    assert_eq!(
        holders.len(),
        SHARDS.len(),
        "accounts on every shard: {holders:?}"
    );
    for i in 0..12 {
        let found = server.get(&format!("/accounts/by-email?email=acct-{i}%40example.com"));
        assert_eq!(found.status, 200, "{}", found.text);
        assert_eq!(found.json["id"], format!("acct-{i}"));
    }
    let missing = server.get("/accounts/by-email?email=nobody%40example.com");
    assert_eq!(missing.status, 404, "{}", missing.text);
    // insert_many claims, then confirms, each column's values in one batch per directory
    // partition: every entry ends live, and every account is found by its email.
    let many: Vec<Value> = (0..40)
        .map(|i| account(&format!("bulk-{i}"), &format!("bulk-{i}@example.com")))
        .collect();
    let reply = server.post("/accounts/batch", &Value::Array(many));
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["inserted"], 40);
    for i in [0, 17, 39] {
        let found = server.get(&format!("/accounts/by-email?email=bulk-{i}%40example.com"));
        assert_eq!(found.json["id"], format!("bulk-{i}"), "{}", found.text);
    }
    let entries = server.get("/directory/list/accounts.email?limit=100");
    let entries = entries.json["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 52, "{entries:?}");
    assert!(
        entries.iter().all(|e| e.to_string().contains("live#")),
        "every entry confirmed: {entries:?}"
    );

    // A taken email, from another key: 409 naming the column, and no row written.
    let clash = server.post("/accounts", &account("acct-x", "acct-3@example.com"));
    assert_eq!(clash.status, 409, "{}", clash.text);
    assert_eq!(clash.json["code"], "DUPLICATE_KEY");
    assert!(clash.text.contains("`email`"), "{}", clash.text);
    assert_eq!(server.get("/accounts/acct-x").status, 404);

    // An update that changes the email frees the old one; a delete frees the new one.
    let moved = server.request(
        "PUT",
        "/accounts/acct-1",
        Some(&account("acct-1", "moved@example.com").to_string()),
    );
    assert_eq!(moved.status, 200, "{}", moved.text);
    assert_eq!(
        server
            .get("/accounts/by-email?email=moved%40example.com")
            .json["id"],
        "acct-1"
    );
    assert_eq!(
        server
            .get("/accounts/by-email?email=acct-1%40example.com")
            .status,
        404
    );
    let taken = server.request(
        "PUT",
        "/accounts/acct-2",
        Some(&account("acct-2", "moved@example.com").to_string()),
    );
    assert_eq!(taken.status, 409, "{}", taken.text);
    assert_eq!(
        server.get("/accounts/acct-2").json["email"],
        "acct-2@example.com"
    );
    let deleted = server.request("DELETE", "/accounts/acct-1", None);
    assert_eq!(deleted.json["deleted"], true, "{}", deleted.text);
    assert_eq!(
        server
            .get("/accounts/by-email?email=moved%40example.com")
            .status,
        404
    );
    let reused = server.post("/accounts", &account("acct-1b", "moved@example.com"));
    assert_eq!(reused.status, 201, "{}", reused.text);
    // KV has no compare-and-set: unique writes through it are refused, reads still work.
    let kv = server.post("/accounts?dir=kv", &account("acct-kv", "kv@example.com"));
    assert_eq!(kv.status, 500, "a deployment's configuration: {}", kv.text);
    assert_eq!(kv.json["code"], "CONFIG_INVALID");
    assert!(kv.text.contains("Durable Object directory"), "{}", kv.text);
    assert_eq!(server.get("/accounts/acct-kv").status, 404);

    // Inserts of one email under different keys, racing from separate connections: one wins.
    const PARALLEL: usize = 8;
    let base = server.base().to_owned();
    for round in 0..3 {
        let barrier = Arc::new(Barrier::new(PARALLEL));
        let statuses: Vec<u16> = (0..PARALLEL)
            .map(|t| {
                let (barrier, base) = (barrier.clone(), base.clone());
                std::thread::spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .build()
                        .into();
                    let body = json!({
                        "id": format!("race-{round}-{t}"),
                        "email": format!("race{round}@example.com"),
                        "name": "racer",
                    });
                    barrier.wait();
                    agent
                        .post(&format!("{base}/accounts"))
                        .send(body.to_string())
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert_eq!(
            statuses.iter().filter(|&&s| s == 201).count(),
            1,
            "round {round}: {statuses:?}"
        );
        assert!(
            statuses.iter().all(|&s| s == 201 || s == 409),
            "{statuses:?}"
        );
        let mut rows = 0;
        for shard in SHARDS {
            let found = server.post(
                &format!("/raw/{shard}"),
                &json!({ "sql": "SELECT id FROM accounts WHERE email = ?", "params": [format!("race{round}@example.com")] }),
            );
            rows += found.json.as_array().unwrap().len();
        }
        assert_eq!(rows, 1, "round {round}: one row holds the email");
    }
}

/// `#[sharded(colocate = User)]` in the Worker: each user's comments on the user's shard, listed
/// from that shard alone, and a D1 `batch()` of the user and a comment that commits all or
/// nothing.
fn comments_live_with_their_user_and_batch_with_it(server: &Workerd) {
    let mut home = BTreeMap::new();
    for u in 0..9 {
        let id = format!("commenter-{u}");
        let user = json!({ "id": id, "name": id, "email": null, "karma": 0, "active": true,
            "avatar": null, "profile": {} });
        let created = server.post("/users", &user);
        assert_eq!(created.status, 201, "{}", created.text);
        for c in 0..4 {
            let comment = json!({ "user_id": id, "id": c, "body": format!("comment {c}") });
            let added = server.post(&format!("/users/{id}/comments"), &comment);
            assert_eq!(added.status, 201, "{}", added.text);
        }
        let shard = server.get(&format!("/users/{id}/shard"));
        home.insert(id, shard.json["shard"].as_str().unwrap().to_owned());
    }
    assert!(
        home.values()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1
    );
    // On the shards themselves: every comment beside its user.
    for shard in SHARDS {
        let rows = server.post(
            &format!("/raw/{shard}"),
            &json!({ "sql": "SELECT user_id FROM comments WHERE user_id LIKE 'commenter-%'", "params": [] }),
        );
        for row in rows.json.as_array().unwrap() {
            let user = row["user_id"].as_str().unwrap();
            assert_eq!(home[user], shard, "a comment of {user} on {shard}");
        }
    }
    let listed = server.get("/users/commenter-3/comments");
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(listed.json["rows"].as_array().unwrap().len(), 4);
    assert_eq!(listed.json["shards"], 1, "one shard read: {}", listed.text);

    // A batch of the user and a comment: both, or neither.
    let batch = |karma: i64, comment: Value| {
        server.post(
            "/users/commenter-3/batch",
            &json!({ "karma": karma, "comment": comment }),
        )
    };
    let done = batch(
        42,
        json!({ "user_id": "commenter-3", "id": 10, "body": "new" }),
    );
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.json["changed"], json!([1, 1]));
    assert_eq!(server.get("/users/commenter-3").json["karma"], 42);
    let failed = batch(
        7,
        json!({ "user_id": "commenter-3", "id": 1, "body": "taken" }),
    );
    assert_eq!(failed.status, 409, "{}", failed.text);
    assert_eq!(failed.json["code"], "DUPLICATE_KEY");
    assert_eq!(
        server.get("/users/commenter-3").json["karma"],
        42,
        "the karma update was rolled back with the failed insert"
    );
    let cross = batch(
        7,
        json!({ "user_id": "commenter-4", "id": 1, "body": "elsewhere" }),
    );
    assert_eq!(cross.status, 400, "{}", cross.text);
    assert_eq!(cross.json["code"], "CROSS_SHARD");
    assert_eq!(
        server.get("/users/commenter-3/comments").json["rows"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
}

fn reads_of_unknown_keys_create_no_directory_entries(server: &Workerd) {
    let (before_do, before_kv) = (
        directory_entries(server, ""),
        directory_entries(server, "?dir=kv"),
    );
    for i in 0..40 {
        for path in [
            format!("/posts/{}", 900_000 + i),
            format!("/posts/{}?dir=kv", 900_000 + i),
            format!("/users/ghost-{i}"),
        ] {
            let reply = server.get(&path);
            assert_eq!(reply.status, 404, "{path}: {}", reply.text);
            assert_eq!(reply.json["code"], "ROW_NOT_FOUND");
            assert_eq!(
                reply.directory_ops.1, 0,
                "{path}: a read wrote to the directory"
            );
            // A hash-placed table has no off-hash marker: its misses are final on the hash
            // shard, with no directory read at all.
            let most_reads = if path.starts_with("/users/") { 0 } else { 1 };
            assert!(
                reply.directory_ops.0 <= most_reads,
                "{path}: {:?}",
                reply.directory_ops
            );
        }
    }
    assert_eq!(directory_entries(server, ""), before_do);
    assert_eq!(directory_entries(server, "?dir=kv"), before_kv);
}

fn bad_input_is_answered_with_typed_codes(server: &Workerd) {
    let long = "k".repeat(513);
    let cases: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        ("GET", format!("/users/{long}"), None, 400, "KEY_TOO_LARGE"),
        (
            "POST",
            "/users".into(),
            Some(user(&long)),
            400,
            "KEY_TOO_LARGE",
        ),
        ("POST", "/users".into(), Some(user("")), 400, "KEY_INVALID"),
        (
            "GET",
            "/posts/9007199254740993".into(),
            None,
            400,
            "INTEGER_OUT_OF_RANGE",
        ),
        (
            "POST",
            "/posts".into(),
            Some(json!({ "id": 9007199254740993i64, "author": "a", "title": "t", "score": 0.0 })),
            400,
            "INTEGER_OUT_OF_RANGE",
        ),
        (
            "POST",
            "/users".into(),
            Some(
                json!({ "id": "big", "name": "n", "email": null, "karma": 9007199254740993i64, "active": true, "avatar": null, "profile": {} }),
            ),
            400,
            "INTEGER_OUT_OF_RANGE",
        ),
        (
            "POST",
            "/raw/DB_EAST".into(),
            Some(
                json!({ "sql": format!("SELECT {}", vec!["?"; 101].join(",")), "params": vec![1; 101] }),
            ),
            400,
            "TOO_MANY_PARAMETERS",
        ),
        // D1's size limits, enforced before sending, with the codes the native backend gives.
        (
            "POST",
            "/users".into(),
            Some(
                json!({ "id": "big", "name": "n".repeat(collegedb::MAX_VALUE_BYTES + 1), "email": null, "karma": 1, "active": true, "avatar": null, "profile": {} }),
            ),
            413,
            "VALUE_TOO_LARGE",
        ),
        (
            "POST",
            "/raw/DB_EAST".into(),
            Some(
                json!({ "sql": format!("SELECT '{}'", "x".repeat(collegedb::MAX_STATEMENT_BYTES)) }),
            ),
            400,
            "STATEMENT_TOO_LARGE",
        ),
        (
            "POST",
            "/raw/DB_NOWHERE".into(),
            Some(json!({ "sql": "SELECT 1" })),
            404,
            "SHARD_NOT_FOUND",
        ),
        (
            "POST",
            "/users".into(),
            Some(user("user-1")),
            409,
            "DUPLICATE_KEY",
        ),
        (
            "PUT",
            "/users/nobody".into(),
            Some(user("nobody")),
            404,
            "ROW_NOT_FOUND",
        ),
        (
            "POST",
            "/raw/DB_EAST".into(),
            Some(json!({ "sql": "SELECT * FROM no_such_table" })),
            500,
            "QUERY_FAILED",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let reply = server.request(method, &path, body.map(|b| b.to_string()).as_deref());
        assert_eq!(
            (reply.status, reply.json["code"].as_str()),
            (status, Some(code)),
            "{method} {}: {}",
            &path[..path.len().min(60)],
            reply.text
        );
    }
    // Nothing was written by the refused requests.
    assert_eq!(server.get("/users/big").status, 404);
}

fn values_map_both_ways_through_d1(server: &Workerd) {
    let sql = "SELECT ? AS n, ? AS i, ? AS neg, ? AS r, ? AS t, ? AS b, ? AS yes, ? AS j, \
               typeof(?) AS ti, typeof(?) AS tr, typeof(?) AS tb";
    let text = "quote ' double \" nul \u{0} emoji 🦀";
    let params = json!([null, 9007199254740991i64, -9007199254740991i64, 2.5, text, { "blob": [0, 1, 127, 128, 255] }, true,
                        "{\"a\":[1,2]}", 42, 2.5, { "blob": [1] }]);
    let reply = server.post("/raw/DB_WEST", &json!({ "sql": sql, "params": params }));
    assert_eq!(reply.status, 200, "{}", reply.text);
    let row = &reply.json[0];
    assert_eq!(row["n"], Value::Null);
    assert_eq!(
        row["i"],
        json!(9007199254740991i64),
        "2^53 - 1 survives exactly"
    );
    assert_eq!(row["neg"], json!(-9007199254740991i64));
    assert_eq!(row["r"], json!(2.5));
    assert_eq!(row["t"], json!(text));
    assert_eq!(row["b"], json!({ "blob": [0, 1, 127, 128, 255] }));
    assert_eq!(row["yes"], json!(1), "booleans are 0/1");
    assert_eq!(row["j"], json!("{\"a\":[1,2]}"), "JSON stays text");
    // D1 binds every JavaScript number as a double: a bare parameter is REAL in SQL...
    assert_eq!(
        (row["ti"].as_str(), row["tr"].as_str(), row["tb"].as_str()),
        (Some("real"), Some("real"), Some("blob"))
    );
    // Beyond 2^53 D1 itself loses precision: the read comes back as a REAL, and an integer field
    // would refuse it rather than hold a wrong value.
    let big = server.post(
        "/raw/DB_WEST",
        &json!({ "sql": "SELECT 9007199254740993 AS big" }),
    );
    assert!(big.json[0]["big"].is_f64(), "{}", big.text);
    // ...but model columns are declared INTEGER, and INTEGER affinity stores integral values as
    // integers: check rows the model layer wrote.
    let stored = server.post(
        "/raw/DB_WEST",
        &json!({ "sql": "SELECT typeof(karma) AS k, typeof(avatar) AS a, \
        typeof(active) AS b, json_extract(profile, '$.n') AS n FROM users LIMIT 1" }),
    );
    let row = &stored.json[0];
    assert_eq!(
        (
            row["k"].as_str(),
            row["a"].as_str(),
            row["b"].as_str(),
            row["n"].as_f64()
        ),
        (Some("integer"), Some("blob"), Some("integer"), Some(1.5)),
        "{}",
        stored.text
    );
}

fn updates_upserts_and_deletes_route_to_the_owner(server: &Workerd) {
    let mut changed = user("user-3");
    changed["name"] = json!("renamed");
    let reply = server.request("PUT", "/users/user-3", Some(&changed.to_string()));
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(server.get("/users/user-3").json["name"], "renamed");
    let post = json!({ "id": 5, "author": "a", "title": "upserted", "score": 1.0 });
    assert_eq!(server.post("/posts/upsert", &post).status, 200);
    assert_eq!(server.get("/posts/5").json["title"], "upserted");
    let fresh = json!({ "id": 500, "author": "a", "title": "new via upsert", "score": 1.0 });
    assert_eq!(server.post("/posts/upsert", &fresh).status, 200);
    assert_eq!(server.get("/posts/500").json["title"], "new via upsert");
    let deleted = server.request("DELETE", "/posts/7", None);
    assert_eq!(deleted.json["deleted"], true, "{}", deleted.text);
    assert_eq!(server.get("/posts/7").status, 404);
    assert_eq!(
        server.request("DELETE", "/posts/7", None).json["deleted"],
        false
    );
}

/// `Err` with both sides when the coordinator's row counts differ from the shards' own.
fn coordinator_matches_shards(server: &Workerd) -> Result<(), String> {
    let real = server.get("/stats");
    let kept = server.get("/stats/coordinator");
    assert_eq!(kept.status, 200, "{}", kept.text);
    let real: BTreeMap<String, Value> = real
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["shard"].as_str().unwrap().to_owned(), s["tables"].clone()))
        .collect();
    let kept: BTreeMap<String, Value> = kept
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["binding"].as_str().unwrap().to_owned(),
                s["tables"].clone(),
            )
        })
        .collect();
    let matches = SHARDS.iter().all(|shard| {
        [
            "users", "posts", "sessions", "events", "accounts", "comments",
        ]
        .iter()
        .all(|table| {
            real[*shard][table].as_u64().unwrap_or(0)
                == kept
                    .get(*shard)
                    .and_then(|t| t[table].as_u64())
                    .unwrap_or(0)
        })
    });
    if matches {
        Ok(())
    } else {
        Err(format!(
            "coordinator stats {kept:?} != shard counts {real:?}"
        ))
    }
}

/// Requests the coordinator object has received with this method and path.
fn coordinator_requests(server: &Workerd, method_and_path: &str) -> u64 {
    let reply = server.get("/coordinator/requests");
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json[method_and_path].as_u64().unwrap_or(0)
}

fn coordinator_stats_match_the_shards(server: &Workerd) {
    // Every write so far (inserts, batches, upserts, updates, deletes, on every model) changed the
    // counts incrementally. Send this isolate's batch now rather than wait for its timer; the
    // last requests' changes join the batch just after their responses, so retry briefly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let sync = server.post("/stats/sync", &json!({}));
        assert_eq!(sync.status, 200, "{}", sync.text);
        match coordinator_matches_shards(server) {
            Ok(()) => return,
            Err(message) => assert!(
                std::time::Instant::now() < deadline,
                "{message}\n{}",
                server.log_tail()
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn statistics_cost_no_coordinator_call_per_write(server: &Workerd) {
    const INSERTS: u64 = 40;
    let sync = server.post("/stats/sync", &json!({}));
    assert_eq!(sync.status, 200, "{}", sync.text);
    let before = coordinator_requests(server, "POST /stats");
    for i in 0..INSERTS {
        let reply = server.post("/users", &user(&format!("batched-{i:03}")));
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    let pending = server.get("/stats/pending");
    assert_eq!(pending.status, 200, "{}", pending.text);
    // The statistics converge without being asked to: the isolate's timer sends the batch at
    // most 10 s (StatsBatching::DEFAULT) after its first change.
    let started = std::time::Instant::now();
    loop {
        match coordinator_matches_shards(server) {
            Ok(()) => break,
            Err(message) => assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "not converged 20 s after the inserts: {message}\npending then: {}\n{}",
                pending.text,
                server.log_tail()
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let calls = coordinator_requests(server, "POST /stats") - before;
    eprintln!(
        "{INSERTS} inserts: {calls} statistics calls; converged {:.1} s after the last insert; pending then: {}",
        started.elapsed().as_secs_f64(),
        pending.text
    );
    assert!(
        calls < INSERTS,
        "{INSERTS} inserts made {calls} statistics calls"
    );
    // One batch per 10 s: these inserts take well under that (two calls allow for a batch that
    // was already open when they started).
    assert!(
        calls <= 2,
        "{INSERTS} inserts made {calls} statistics calls; pending then: {}",
        pending.text
    );
    let after = server.get("/stats/pending");
    assert_eq!(after.json["rows"], 0, "{}", after.text);
}

fn recount_sets_the_coordinator_from_the_shards(server: &Workerd) {
    // Knock the coordinator's figures off (as a lost batch would), then recount.
    let skew = server.post(
        "/coordinator/stats",
        &json!({ "deltas": [{ "shard": "DB_EAST", "table": "users", "delta": 5 },
                            { "shard": "DB_WEST", "table": "posts", "delta": -3 }] }),
    );
    assert_eq!(skew.status, 200, "{}", skew.text);
    assert!(coordinator_matches_shards(server).is_err());
    let recount = server.post("/stats/recount", &json!({}));
    assert_eq!(recount.status, 200, "{}", recount.text);
    let counts = recount.json.as_array().unwrap();
    assert!(
        counts
            .iter()
            .any(|c| c["shard"] == "DB_EAST" && c["table"] == "users"),
        "{}",
        recount.text
    );
    coordinator_matches_shards(server).unwrap();
}

fn coordinator_serves_the_seed_http_api(server: &Workerd) {
    assert_eq!(
        server.get("/coordinator/shards").json,
        json!(SHARDS),
        "registration order"
    );
    assert_eq!(
        server
            .post("/coordinator/shards", &json!({ "shard": "DB_EXTRA" }))
            .json["success"],
        true
    );
    assert_eq!(
        server
            .get("/coordinator/shards")
            .json
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let removed = server.request(
        "DELETE",
        "/coordinator/shards",
        Some(&json!({ "shard": "DB_EXTRA" }).to_string()),
    );
    assert_eq!(removed.json["success"], true, "{}", removed.text);
    assert_eq!(server.get("/coordinator/shards").json, json!(SHARDS));
    // Hash allocation agrees with the router's own placement.
    for id in ["user-1", "user-2", "user-3"] {
        let allocation = server.post(
            "/coordinator/allocate",
            &json!({ "primaryKey": id, "strategy": "hash" }),
        );
        let native = seed_owner(&collegedb::Key::text(id).unwrap());
        assert_eq!(allocation.json["shard"], native, "{}", allocation.text);
    }
    // Round-robin allocation cycles through the registered shards.
    let shards: Vec<Value> = (0..6)
        .map(|_| {
            server
                .post("/coordinator/allocate", &json!({ "table": "seed-api" }))
                .json["shard"]
                .clone()
        })
        .collect();
    assert_eq!(shards[..3], shards[3..], "{shards:?}");
    let distinct: std::collections::BTreeSet<String> =
        shards.iter().map(|s| s.to_string()).collect();
    assert_eq!(distinct.len(), 3, "{shards:?}");
    let random = server.post("/coordinator/allocate", &json!({ "strategy": "random" }));
    assert!(
        SHARDS.contains(&random.json["shard"].as_str().unwrap()),
        "{}",
        random.text
    );
    assert_eq!(server.get("/coordinator/health").json["status"], "ok");
    assert_eq!(server.get("/coordinator/nowhere").status, 404);
}

fn coordinator_failure_falls_back_to_a_local_counter(server: &Workerd) {
    assert_eq!(
        server
            .post("/coordinator/fault", &json!({ "fail": true }))
            .status,
        200
    );
    // More inserts than one reserved block of tickets, so the coordinator is asked and refuses.
    for id in 2_000..2_040 {
        let post = json!({ "id": id, "author": "a", "title": "during outage", "score": 0.0 });
        let reply = server.post("/posts", &post);
        assert_eq!(
            reply.status, 201,
            "insert must survive a coordinator outage: {}",
            reply.text
        );
    }
    for id in 2_000..2_040 {
        assert_eq!(server.get(&format!("/posts/{id}")).status, 200);
    }
    assert_eq!(
        server
            .post("/coordinator/fault", &json!({ "fail": false }))
            .status,
        200
    );
    let health = server.get("/coordinator/health");
    assert_eq!(health.json["status"], "ok", "{}", health.text);
}

/// The fence's SQL, run by hand on local D1: the table, view and trigger exist on every shard
/// (the standby one included), the guard's `RAISE(ABORT)` refuses a slot the shard does not own
/// with collegedb's message, `json_each` binds a JSON array, and a fenced upsert
/// (`INSERT ... SELECT ... WHERE EXISTS ... ON CONFLICT`) writes only where the slot is owned.
fn fence_sql_runs_on_d1(server: &Workerd) {
    let raw = |shard: &str, sql: &str, params: Value| {
        server.post(
            &format!("/raw/{shard}"),
            &json!({ "sql": sql, "params": params }),
        )
    };
    for shard in SHARDS.iter().chain([&STANDBY]) {
        let objects = raw(
            shard,
            "SELECT type, name FROM sqlite_master WHERE name LIKE '\\_collegedb\\_%' ESCAPE '\\' ORDER BY name",
            json!([]),
        );
        assert_eq!(objects.status, 200, "{}", objects.text);
        for (kind, name) in [
            ("view", "_collegedb_guard"),
            ("trigger", "_collegedb_guard_check"),
            ("table", "_collegedb_slots"),
        ] {
            assert!(
                objects
                    .json
                    .as_array()
                    .unwrap()
                    .contains(&json!({ "type": kind, "name": name })),
                "{shard}: no {kind} {name}: {}",
                objects.text
            );
        }
    }
    // The seed of the three serving shards (sorted: DB_EAST, DB_EU, DB_WEST) gives slot 0 to
    // DB_EAST and slot 4095 to DB_WEST; the standby shard owns none.
    let owned = raw(
        "DB_EAST",
        "INSERT INTO _collegedb_guard (slot) VALUES (?)",
        json!([0]),
    );
    assert_eq!(owned.status, 200, "{}", owned.text);
    for (shard, slot) in [("DB_EAST", 4095), (STANDBY, 0)] {
        let refused = raw(
            shard,
            "INSERT INTO _collegedb_guard (slot) VALUES (?)",
            json!([slot]),
        );
        eprintln!("D1's answer to a refused guard: {}", refused.text);
        assert_eq!(refused.status, 500, "{}", refused.text);
        assert!(
            refused
                .text
                .contains("collegedb: slot not owned by this shard"),
            "{}",
            refused.text
        );
    }
    let slots = raw(
        "DB_EAST",
        "SELECT value FROM json_each(?) WHERE value IN (SELECT slot FROM _collegedb_slots) \
         ORDER BY value",
        json!(["[0, 1, 4095, -1]"]),
    );
    assert_eq!(
        slots.json,
        json!([{ "value": -1 }, { "value": 0 }, { "value": 1 }]),
        "{}",
        slots.text
    );
    let upsert = "INSERT INTO events (id, kind) SELECT ?, ? \
                  WHERE EXISTS (SELECT 1 FROM _collegedb_slots WHERE slot = ?) \
                  ON CONFLICT (id) DO UPDATE SET kind = excluded.kind";
    for (slot, kind) in [(0, "owned"), (4095, "not owned"), (0, "owned again")] {
        let reply = raw("DB_EAST", upsert, json!([777_777, kind, slot]));
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let row = raw(
        "DB_EAST",
        "SELECT kind FROM events WHERE id = ?",
        json!([777_777]),
    );
    assert_eq!(row.json, json!([{ "kind": "owned again" }]), "{}", row.text);
    let gone = raw(
        "DB_EAST",
        "DELETE FROM events WHERE id = ?",
        json!([777_777]),
    );
    assert_eq!(gone.status, 200, "{}", gone.text);
}

fn flush_empties_everything(server: &Workerd) {
    // Each handle flushes the directory it uses: the Durable Object one, then the KV one.
    for path in ["/flush", "/flush?dir=kv"] {
        let reply = server.post(path, &json!({}));
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    for table in [
        "users", "posts", "sessions", "events", "accounts", "comments",
    ] {
        assert_eq!(
            rows_per_shard(server, table).values().sum::<u64>(),
            0,
            "{table}"
        );
    }
    assert_eq!(directory_entries(server, ""), 0);
    assert_eq!(directory_entries(server, "?dir=kv"), 0);
}

/// The shard that the seed map of `SHARDS` gives `key`: what the Worker's router must pick.
fn seed_owner(key: &collegedb::Key) -> String {
    let names: Vec<String> = SHARDS.iter().map(|s| s.to_string()).collect();
    let map = collegedb::slots::ShardMap::seed(&names).unwrap();
    map.owner(collegedb::slots::slot_of(key)).to_owned()
}

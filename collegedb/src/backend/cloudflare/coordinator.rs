//! The ShardCoordinator: a Durable Object with SQLite storage that keeps the shard registry, the
//! round-robin counters, per-shard, per-table row counts, the stored shard map
//! ([`crate::slots`]) and the growth journal ([`crate::growth`]), behind the seed's HTTP API and
//! a few routes of its own:
//!
//! | request | body | answer |
//! | --- | --- | --- |
//! | `GET /shards` | | `["db-east", ...]` |
//! | `POST /shards` | `{"shard": "db-east"}` | `{"success": true}` |
//! | `DELETE /shards` | `{"shard": "db-east"}` | `{"success": true}` |
//! | `GET /stats` | | `[{"binding", "count", "tables": {..}, "lastUpdated"}]` |
//! | `POST /stats` | `{"deltas": [{"shard", "table", "delta"}]}` | `{"success": true}` |
//! | `PUT /stats` | `{"counts": [{"shard", "table", "rows"}]}` | `{"success": true}`; replaces the figures of the shards named |
//! | `POST /allocate` | `{"table"?, "count"?, "primaryKey"?, "strategy"?}` | `{"ticket", "count", "shard"?}` |
//! | `POST /flush` | | `{"success": true}`; refused with 403 unless the object's `COLLEGEDB_ALLOW_FLUSH` var is `"true"` |
//! | `GET /health` | | `{"status": "ok", "shards": n, "mapVersion": v}` (`v` 0: no map stored) |
//! | `GET /map` | | the stored shard map's JSON ([`ShardMap::to_json`]), or `null` |
//! | `PUT /map` | a map's JSON | `{"stored": bool, "version": v}`: stored only if the stored version is the map's minus one (nothing stored counts as 0); `v` is the version stored afterwards |
//! | `GET /jobs?name=` | | `{"name", "state"}`: the journal document, or `null` |
//! | `PUT /jobs` | `{"name", "state"}`, optionally `"swap": {"expected": state or null}` | `{"success": true, "stored": bool}`; a `null` state removes the document; with `swap`, only if the stored document is `expected` (checked and written with no `await` between) |
//!
//! [`CoordinatorClient`] is the typed client; the router uses it for round-robin tickets (reserved
//! [`TICKET_BLOCK`] at a time and kept per isolate, so the object is not on every insert's path)
//! and to send the row-count changes of its writes.
//!
//! Statistics are batched per isolate: see [`super::stats`] for how, and how stale they may be.
//!
//! The map and the journal live in the object's tables `slot_map (id, version, map)` and
//! `jobs (name, state)`. The compare-and-set of `PUT /map` reads and writes with no `await`
//! between, so the object applies it as one unit: of two writers of the same next version, one
//! stores and the other is told `stored: false`. `POST /flush` keeps both (the shards' fences
//! follow the map, and emptying rows changes neither).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use worker::{
    Delay, Env, Method, ObjectNamespace, Request, RequestInit, Response, SqlStorageValue, State,
};

use super::stats::{now_ms, RowCount, TimerStep, STATS};
use crate::backend::{Coordinator, RowDelta};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::slots::ShardMap;

/// Round-robin tickets reserved per call to the coordinator.
pub const TICKET_BLOCK: u64 = 16;

/// The object name of the coordinator within its namespace.
pub const COORDINATOR_NAME: &str = "collegedb-coordinator";

thread_local! {
    /// Per isolate: per table, the next ticket and the end of the reserved block.
    static TICKETS: RefCell<HashMap<String, (u64, u64)>> = RefCell::new(HashMap::new());
}

/// One shard's statistics as the coordinator keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorShardStats {
    /// The shard (the seed calls it the binding).
    pub binding: String,
    /// Rows over all tables.
    pub count: i64,
    /// Rows per table.
    pub tables: BTreeMap<String, i64>,
    /// Milliseconds since the epoch of the last change.
    pub last_updated: i64,
}

/// The answer of `POST /allocate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The first ticket of the reserved block.
    pub ticket: u64,
    /// How many tickets were reserved.
    pub count: u64,
    /// The registered shard for the first ticket (or key), when shards are registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AllocateRequest {
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    primary_key: Option<String>,
    #[serde(default)]
    strategy: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ShardBody {
    shard: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct StatsBody {
    deltas: Vec<RowDelta>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CountsBody {
    counts: Vec<RowCount>,
}

/// The typed client of the ShardCoordinator.
pub struct CoordinatorClient {
    namespace: ObjectNamespace,
}

fn failed(error: impl std::fmt::Display) -> Error {
    Error::CoordinatorUnavailable(error.to_string())
}

impl CoordinatorClient {
    /// Wraps the coordinator's Durable Object namespace binding.
    pub fn new(namespace: ObjectNamespace) -> Self {
        CoordinatorClient { namespace }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<T> {
        let text = self.call_text(method, path, body).await?;
        serde_json::from_str(&text).map_err(|e| failed(format!("{path}: {e}")))
    }

    /// One request; the answer's body as text (parsed by serde_json, not by JavaScript, so that
    /// documents such as the map and the journal round-trip exactly).
    async fn call_text(&self, method: Method, path: &str, body: Option<String>) -> Result<String> {
        let stub = self
            .namespace
            .get_by_name(COORDINATOR_NAME)
            .map_err(failed)?;
        let mut init = RequestInit::new();
        init.with_method(method).with_body(body.map(Into::into));
        let url = format!("https://collegedb-coordinator{path}");
        let request = Request::new_with_init(&url, &init).map_err(failed)?;
        super::note_subrequest();
        let mut response = stub.fetch_with_request(request).await.map_err(failed)?;
        let text = response.text().await.unwrap_or_default();
        if response.status_code() != 200 {
            return Err(failed(format!(
                "{path}: status {}: {text}",
                response.status_code()
            )));
        }
        Ok(text)
    }

    /// `GET /shards`.
    pub async fn list_shards(&self) -> Result<Vec<String>> {
        self.call(Method::Get, "/shards", None).await
    }

    /// `POST /shards`.
    pub async fn add_shard(&self, shard: &str) -> Result<()> {
        let body = serde_json::json!({ "shard": shard }).to_string();
        self.call::<serde_json::Value>(Method::Post, "/shards", Some(body))
            .await
            .map(drop)
    }

    /// `DELETE /shards`.
    pub async fn remove_shard(&self, shard: &str) -> Result<()> {
        let body = serde_json::json!({ "shard": shard }).to_string();
        self.call::<serde_json::Value>(Method::Delete, "/shards", Some(body))
            .await
            .map(drop)
    }

    /// `GET /stats`: the coordinator's figures (see the module docs for how stale they may be).
    pub async fn stats(&self) -> Result<Vec<CoordinatorShardStats>> {
        self.call(Method::Get, "/stats", None).await
    }

    /// `PUT /stats`: replaces the figures of every shard named in `counts` (tables not listed
    /// for such a shard are dropped). [`recount_stats`] feeds it from the shards.
    pub async fn set_rows(&self, counts: Vec<RowCount>) -> Result<()> {
        let body = serde_json::to_string(&CountsBody { counts }).map_err(failed)?;
        self.call::<serde_json::Value>(Method::Put, "/stats", Some(body))
            .await
            .map(drop)
    }

    /// Sends this isolate's batch of row-count changes now, if it has one (one `POST /stats`).
    /// Returns how many `(shard, table)` changes were sent. On failure the batch is kept.
    pub async fn flush_stats(&self) -> Result<usize> {
        let Some(taken) = STATS.with(|s| s.borrow_mut().take()) else {
            return Ok(0);
        };
        let deltas: Vec<RowDelta> = taken
            .deltas
            .iter()
            .filter(|(_, delta)| **delta != 0)
            .map(|((shard, table), delta)| RowDelta {
                shard: shard.clone(),
                table: table.clone(),
                delta: *delta,
            })
            .collect();
        if deltas.is_empty() {
            return Ok(0);
        }
        let sent = deltas.len();
        let body = serde_json::to_string(&StatsBody { deltas }).map_err(failed)?;
        match self
            .call::<serde_json::Value>(Method::Post, "/stats", Some(body))
            .await
        {
            Ok(_) => {
                STATS.with(|s| s.borrow_mut().batches_sent += 1);
                Ok(sent)
            }
            Err(error) => {
                STATS.with(|s| s.borrow_mut().restore(taken, now_ms()));
                Err(error)
            }
        }
    }

    /// The isolate's statistics timer: if this isolate has a batch and no running timer, sleeps
    /// until the batch is due, sends it, and goes on while new batches open behind it; otherwise
    /// returns at once (no I/O). Call it from `ctx.wait_until` after every response, so that a
    /// batch is sent [`StatsBatching::max_age_ms`](super::stats::StatsBatching::max_age_ms) after its first change even if no request
    /// follows.
    pub async fn flush_stats_when_due(&self) -> Result<()> {
        let Some(token) = STATS.with(|s| s.borrow_mut().start_timer(now_ms())) else {
            return Ok(());
        };
        let result = loop {
            match STATS.with(|s| s.borrow_mut().timer_step(token, now_ms())) {
                TimerStep::Stop => break Ok(()),
                TimerStep::Sleep(ms) => Delay::from(Duration::from_millis(ms)).await,
                TimerStep::Send => {
                    if let Err(error) = self.flush_stats().await {
                        break Err(error);
                    }
                }
            }
        };
        STATS.with(|s| s.borrow_mut().stop_timer(token));
        result
    }

    /// `POST /allocate` for `count` round-robin tickets of `table`.
    pub async fn allocate(&self, table: &str, count: u64) -> Result<Allocation> {
        let body = serde_json::to_string(&AllocateRequest {
            table: Some(table.to_owned()),
            count: Some(count),
            ..AllocateRequest::default()
        })
        .map_err(failed)?;
        self.call(Method::Post, "/allocate", Some(body)).await
    }

    /// `POST /flush` (development only).
    pub async fn flush(&self) -> Result<()> {
        self.call::<serde_json::Value>(Method::Post, "/flush", None)
            .await
            .map(drop)
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<serde_json::Value> {
        self.call(Method::Get, "/health", None).await
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct JobBody {
    name: String,
    state: Option<String>,
    /// Present: store only if the document holds `expected` now (`null`: only if there is none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    swap: Option<Expected>,
}

/// The document a compare-and-set of `PUT /jobs` expects.
#[derive(Debug, Serialize, Deserialize)]
struct Expected {
    expected: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredAnswer {
    stored: bool,
    version: u64,
}

fn job_path(name: &str) -> String {
    let query: String =
        worker::Url::parse_with_params("https://collegedb-coordinator/jobs", &[("name", name)])
            .map(|url| url.query().unwrap_or_default().to_owned())
            .unwrap_or_default();
    format!("/jobs?{query}")
}

impl Coordinator for CoordinatorClient {
    async fn probe(&self) -> Result<()> {
        self.health().await.map(drop)
    }

    async fn next_ticket(&self, table: &str) -> Result<u64> {
        let cached = TICKETS.with(|t| {
            let mut tickets = t.borrow_mut();
            match tickets.get_mut(table) {
                Some((next, end)) if *next < *end => {
                    *next += 1;
                    Some(*next - 1)
                }
                _ => None,
            }
        });
        if let Some(ticket) = cached {
            return Ok(ticket);
        }
        let allocation = self.allocate(table, TICKET_BLOCK).await?;
        TICKETS.with(|t| {
            t.borrow_mut().insert(
                table.to_owned(),
                (allocation.ticket + 1, allocation.ticket + allocation.count),
            )
        });
        Ok(allocation.ticket)
    }

    fn tracks_rows(&self) -> bool {
        true
    }

    /// `GET /map`.
    async fn load_map(&self) -> Result<Option<ShardMap>> {
        let text = self.call_text(Method::Get, "/map", None).await?;
        if text.trim() == "null" {
            return Ok(None);
        }
        ShardMap::from_json(&text).map(Some)
    }

    /// `PUT /map`: compare and set inside the object (stored only over version `map.version() - 1`,
    /// nothing stored counting as version 0).
    async fn store_map(&self, map: &ShardMap) -> Result<bool> {
        let answer: StoredAnswer = self.call(Method::Put, "/map", Some(map.to_json())).await?;
        Ok(answer.stored)
    }

    /// `GET /jobs?name=`.
    async fn load_job(&self, name: &str) -> Result<Option<String>> {
        let body: JobBody = self.call(Method::Get, &job_path(name), None).await?;
        Ok(body.state)
    }

    /// `PUT /jobs` with `swap`.
    async fn swap_job(
        &self,
        name: &str,
        expected: Option<&str>,
        json: Option<&str>,
    ) -> Result<bool> {
        let body = serde_json::to_string(&JobBody {
            name: name.to_owned(),
            state: json.map(str::to_owned),
            swap: Some(Expected {
                expected: expected.map(str::to_owned),
            }),
        })
        .map_err(failed)?;
        let answer: serde_json::Value = self.call(Method::Put, "/jobs", Some(body)).await?;
        Ok(answer["stored"].as_bool() == Some(true))
    }

    /// `PUT /jobs`.
    async fn store_job(&self, name: &str, json: Option<&str>) -> Result<()> {
        let body = serde_json::to_string(&JobBody {
            name: name.to_owned(),
            state: json.map(str::to_owned),
            swap: None,
        })
        .map_err(failed)?;
        self.call::<serde_json::Value>(Method::Put, "/jobs", Some(body))
            .await
            .map(drop)
    }

    /// Adds the changes to this isolate's batch. No I/O, unless the batch is now due (it holds
    /// [`StatsBatching::max_rows`](super::stats::StatsBatching::max_rows) changed rows, or is older than [`StatsBatching::max_age_ms`](super::stats::StatsBatching::max_age_ms)):
    /// then the batch is sent by this call.
    async fn record_rows(&self, deltas: Vec<RowDelta>) -> Result<()> {
        let due = STATS.with(|s| {
            let mut batch = s.borrow_mut();
            let now = now_ms();
            batch.add(deltas, now);
            batch.is_due(now)
        });
        if due {
            self.flush_stats().await.map(drop)
        } else {
            Ok(())
        }
    }
}

#[derive(Deserialize)]
struct NameRow {
    name: String,
}

#[derive(Deserialize)]
struct ValueRow {
    value: f64,
}

#[derive(Deserialize)]
struct MapRow {
    version: f64,
    map: String,
}

#[derive(Deserialize)]
struct StateRow {
    state: String,
}

#[derive(Deserialize)]
struct StatsRow {
    shard: String,
    table_name: String,
    row_count: f64,
    updated_at: f64,
}

fn text(value: &str) -> SqlStorageValue {
    SqlStorageValue::String(value.to_owned())
}

fn success() -> worker::Result<Response> {
    Response::from_json(&serde_json::json!({ "success": true }))
}

/// Serves one coordinator request inside the coordinator's Durable Object. Call it from the
/// class's `fetch` (see [`super::serve_directory`] for the shape).
pub async fn serve_coordinator(
    state: &State,
    env: &Env,
    mut request: Request,
) -> worker::Result<Response> {
    let sql = state.storage().sql();
    sql.exec(
        "CREATE TABLE IF NOT EXISTS shards (name TEXT PRIMARY KEY NOT NULL, added_at INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS stats (
             shard TEXT NOT NULL, table_name TEXT NOT NULL,
             row_count INTEGER NOT NULL, updated_at INTEGER NOT NULL,
             PRIMARY KEY (shard, table_name)
         );
         CREATE TABLE IF NOT EXISTS slot_map (
             id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, map TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS jobs (name TEXT PRIMARY KEY NOT NULL, state TEXT NOT NULL);",
        None,
    )?;
    // The stored map, if any: `(version, JSON)`.
    let stored_map = || -> worker::Result<Option<(u64, String)>> {
        let rows: Vec<MapRow> = sql
            .exec("SELECT version, map FROM slot_map WHERE id = 1", None)?
            .to_array()?;
        Ok(rows.into_iter().next().map(|r| (r.version as u64, r.map)))
    };
    let now = worker::Date::now().as_millis() as i64;
    // Registration order (rowid), which hash allocation maps keys onto.
    let registered = || -> worker::Result<Vec<String>> {
        let rows: Vec<NameRow> = sql
            .exec("SELECT name FROM shards ORDER BY rowid", None)?
            .to_array()?;
        Ok(rows.into_iter().map(|r| r.name).collect())
    };
    let path = request.path();
    match (request.method(), path.as_str()) {
        (Method::Get, "/health") => Response::from_json(&serde_json::json!({
            "status": "ok",
            "shards": registered()?.len(),
            "mapVersion": stored_map()?.map_or(0, |(version, _)| version),
        })),
        (Method::Get, "/map") => match stored_map()? {
            Some((_, json)) => Response::ok(json),
            None => Response::ok("null"),
        },
        (Method::Put, "/map") => {
            let body = request.text().await?;
            let map = match ShardMap::from_json(&body) {
                Ok(map) => map,
                Err(error) => return Response::error(format!("PUT /map: {error}"), 400),
            };
            // No await from here to the answer: the object applies the check and the write as
            // one unit.
            let current = stored_map()?.map_or(0, |(version, _)| version);
            let stored = map.version() == current + 1;
            if stored {
                sql.exec(
                    "INSERT INTO slot_map (id, version, map) VALUES (1, ?, ?)
                     ON CONFLICT (id) DO UPDATE SET version = excluded.version, map = excluded.map",
                    vec![
                        SqlStorageValue::Integer(map.version() as i64),
                        text(&map.to_json()),
                    ],
                )?;
            }
            Response::from_json(&StoredAnswer {
                stored,
                version: if stored { map.version() } else { current },
            })
        }
        (Method::Get, "/jobs") => {
            let url = request.url()?;
            let Some(name) = url
                .query_pairs()
                .find(|(k, _)| k == "name")
                .map(|(_, v)| v.into_owned())
            else {
                return Response::error("GET /jobs needs ?name=", 400);
            };
            let rows: Vec<StateRow> = sql
                .exec("SELECT state FROM jobs WHERE name = ?", vec![text(&name)])?
                .to_array()?;
            Response::from_json(&JobBody {
                name,
                state: rows.into_iter().next().map(|r| r.state),
                swap: None,
            })
        }
        (Method::Put, "/jobs") => {
            let body: JobBody = match serde_json::from_str(&request.text().await?) {
                Ok(body) => body,
                Err(error) => return Response::error(format!("PUT /jobs: {error}"), 400),
            };
            if let Some(swap) = &body.swap {
                // Read and write with no `await` between: no other request runs in between.
                let rows: Vec<StateRow> = sql
                    .exec(
                        "SELECT state FROM jobs WHERE name = ?",
                        vec![text(&body.name)],
                    )?
                    .to_array()?;
                if rows.into_iter().next().map(|r| r.state) != swap.expected {
                    return Response::from_json(
                        &serde_json::json!({ "success": true, "stored": false }),
                    );
                }
            }
            match &body.state {
                Some(state) => sql.exec(
                    "INSERT INTO jobs (name, state) VALUES (?, ?)
                     ON CONFLICT (name) DO UPDATE SET state = excluded.state",
                    vec![text(&body.name), text(state)],
                )?,
                None => sql.exec("DELETE FROM jobs WHERE name = ?", vec![text(&body.name)])?,
            };
            Response::from_json(&serde_json::json!({ "success": true, "stored": true }))
        }
        (Method::Get, "/shards") => Response::from_json(&registered()?),
        (Method::Post, "/shards") => {
            let body: ShardBody = request.json().await?;
            sql.exec(
                "INSERT OR IGNORE INTO shards (name, added_at) VALUES (?, ?)",
                vec![text(&body.shard), SqlStorageValue::Integer(now)],
            )?;
            success()
        }
        (Method::Delete, "/shards") => {
            let body: ShardBody = request.json().await?;
            sql.exec("DELETE FROM shards WHERE name = ?", vec![text(&body.shard)])?;
            success()
        }
        (Method::Get, "/stats") => {
            let rows: Vec<StatsRow> = sql
                .exec(
                    "SELECT shard, table_name, row_count, updated_at FROM stats ORDER BY shard, table_name",
                    None,
                )?
                .to_array()?;
            let mut by_shard: BTreeMap<String, CoordinatorShardStats> = BTreeMap::new();
            for name in registered()? {
                by_shard.insert(
                    name.clone(),
                    CoordinatorShardStats {
                        binding: name,
                        count: 0,
                        tables: BTreeMap::new(),
                        last_updated: 0,
                    },
                );
            }
            for row in rows {
                let entry =
                    by_shard
                        .entry(row.shard.clone())
                        .or_insert_with(|| CoordinatorShardStats {
                            binding: row.shard.clone(),
                            count: 0,
                            tables: BTreeMap::new(),
                            last_updated: 0,
                        });
                entry.count += row.row_count as i64;
                entry.tables.insert(row.table_name, row.row_count as i64);
                entry.last_updated = entry.last_updated.max(row.updated_at as i64);
            }
            Response::from_json(&by_shard.into_values().collect::<Vec<_>>())
        }
        (Method::Post, "/stats") => {
            let body: StatsBody = request.json().await?;
            for delta in body.deltas {
                sql.exec(
                    "INSERT INTO stats (shard, table_name, row_count, updated_at) VALUES (?, ?, ?, ?)
                     ON CONFLICT (shard, table_name)
                     DO UPDATE SET row_count = row_count + excluded.row_count, updated_at = excluded.updated_at",
                    vec![
                        text(&delta.shard),
                        text(&delta.table),
                        SqlStorageValue::Integer(delta.delta),
                        SqlStorageValue::Integer(now),
                    ],
                )?;
            }
            success()
        }
        (Method::Put, "/stats") => {
            let body: CountsBody = request.json().await?;
            // No await between these statements: the object applies them as one unit.
            let shards: BTreeSet<&str> = body.counts.iter().map(|c| c.shard.as_str()).collect();
            for shard in shards {
                sql.exec("DELETE FROM stats WHERE shard = ?", vec![text(shard)])?;
            }
            for count in &body.counts {
                sql.exec(
                    "INSERT INTO stats (shard, table_name, row_count, updated_at) VALUES (?, ?, ?, ?)",
                    vec![
                        text(&count.shard),
                        text(&count.table),
                        SqlStorageValue::Integer(count.rows as i64),
                        SqlStorageValue::Integer(now),
                    ],
                )?;
            }
            success()
        }
        (Method::Post, "/allocate") => {
            let body: AllocateRequest = request.json().await.unwrap_or_default();
            let shards = registered()?;
            if let (Some(key), Some("hash")) = (&body.primary_key, body.strategy.as_deref()) {
                let shard = crate::slots::ShardMap::seed(&shards).ok().map(|map| {
                    let slot = crate::slots::slot_of(&Key::Text(key.clone()));
                    map.owner(slot).to_owned()
                });
                return Response::from_json(&Allocation {
                    ticket: 0,
                    count: 0,
                    shard,
                });
            }
            if body.strategy.as_deref() == Some("random") {
                let ticket = fastrand::u64(..);
                let shard = (!shards.is_empty())
                    .then(|| shards[(ticket % shards.len() as u64) as usize].clone());
                return Response::from_json(&Allocation {
                    ticket,
                    count: 1,
                    shard,
                });
            }
            let table = body.table.unwrap_or_else(|| "default".to_owned());
            let count = body.count.unwrap_or(1).clamp(1, 1024);
            let rows: Vec<ValueRow> = sql
                .exec(
                    "INSERT INTO counters (name, value) VALUES (?, ?)
                     ON CONFLICT (name) DO UPDATE SET value = value + excluded.value
                     RETURNING value",
                    vec![text(&table), SqlStorageValue::Integer(count as i64)],
                )?
                .to_array()?;
            let end = rows.first().map_or(count, |r| r.value as u64);
            let ticket = end - count;
            let shard = (!shards.is_empty())
                .then(|| shards[(ticket % shards.len() as u64) as usize].clone());
            Response::from_json(&Allocation {
                ticket,
                count,
                shard,
            })
        }
        (Method::Post, "/flush") => {
            let allowed = env
                .var("COLLEGEDB_ALLOW_FLUSH")
                .map(|v| v.to_string() == "true")
                .unwrap_or(false);
            if !allowed {
                return Response::error(
                    "flush is disabled: set the COLLEGEDB_ALLOW_FLUSH var to \"true\" in development only",
                    403,
                );
            }
            sql.exec(
                "DELETE FROM counters; DELETE FROM stats; DELETE FROM shards;",
                None,
            )?;
            success()
        }
        _ => Response::error(format!("no route for {:?} {path}", request.method()), 404),
    }
}

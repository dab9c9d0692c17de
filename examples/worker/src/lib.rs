//! collegedb in a Cloudflare Worker: three D1 shards serving rows and a fourth on standby, a KV
//! and a Durable Object directory, the ShardCoordinator, the growth runner, a namespace for shards
//! kept in Durable Objects ([`ShardObject`]), and six models with their own strategies, behind a
//! small JSON API. The shard list is `COLLEGEDB_CONFIG` in `wrangler.toml`.
//!
//! | request | does |
//! | --- | --- |
//! | `POST /setup` | creates every model's table on every shard, registers the shards with the coordinator |
//! | `POST /{model}` | inserts (`users`, `posts`, `sessions`, `events`, `accounts`); `PUT /{model}/{id}` updates; `DELETE` deletes |
//! | `POST /users/{id}/comments`, `GET /users/{id}/comments` | a comment of the user, colocated with it (`#[sharded(colocate = User)]`); the user's comments, read from their shard alone |
//! | `POST /users/{id}/batch` | `{"karma": n, "comment": {...}}`: the user's karma and a new comment in one D1 `batch()` on the user's shard (`db.batch_for`); a comment of another user is 400 `CROSS_SHARD` |
//! | `GET /accounts/by-email?email=` | finds an account by its unique email (`find_by_email`): one directory read, one shard query; a taken email answers 409 `DUPLICATE_KEY` naming the column on insert and update |
//! | `GET /{model}/{id}` | finds by key; `GET /{model}/{id}/shard` names the shard holding it |
//! | `GET /{model}?after=&limit=` | a page of rows in key order across every shard (`scan`) |
//! | `POST /{model}/batch` | `insert_many` |
//! | `POST /{model}/upsert` | `upsert` |
//! | `GET /query/users?minKarma=&limit=&cursor=` | typed query across shards: active users with `karma >= minKarma`, by karma descending, one keyset page, with `count` and a `GROUP BY active` aggregate |
//! | `POST /query/users/deactivate` | `{"below": n}`: `update_many` sets `active = false` where `karma < n`; rows changed per shard |
//! | `GET /shards/{shard}/{model}` | every row of that model on that shard |
//! | `POST /raw/{shard}` | `{"sql", "params"}` on one shard, for value-mapping checks |
//! | `GET /stats` | rows per table and size per shard, counted on the shards |
//! | `GET /stats/coordinator` | the coordinator's statistics, through the typed client (they lag: see below) |
//! | `GET /stats/pending` | this isolate's row-count changes not yet sent to the coordinator |
//! | `POST /stats/sync` | sends this isolate's pending changes now: `{"sent": n}` |
//! | `POST /stats/recount` | counts the rows on the shards and sets the coordinator's figures to them (exact as of now) |
//! | `/coordinator/...` | the coordinator's own HTTP API, passed through (`/shards`, `/stats`, `/allocate`, `/flush`, `/health`) |
//! | `POST /coordinator/fault` | `{"fail": true}` makes the coordinator object refuse `/allocate` (fault injection) |
//! | `GET /coordinator/requests` | requests the coordinator object has received, by method and path (for tests) |
//! | `GET /directory/count` | directory entries |
//! | `GET /directory/list/{table}?cursor=&limit=` | one page of a table's directory entries |
//! | `POST /flush` | empties every table, the directory and the coordinator (development only) |
//! | `POST /bench/move` | the growth benchmark's raw baseline: moves rows between two D1 bindings with plain statements (development only, see `bench_move`) |
//! | `POST /admin/shards/{shard}/add` | journals `add_shard` for a standby shard and starts its runner (202, with the journal); 409 while another operation runs; body (optional): [`cloudflare::RunnerSettings`] |
//! | `POST /admin/shards/{shard}/drain` | journals `drain_shard` and starts its runner; same body |
//! | `POST /admin/reassign` | `{"table": "users", "key": "alice", "shard": "DB_EU"}` (an integer key as a JSON number): moves the key's row to that shard and records it in the directory, now (200, with the journal); 404 if no shard holds it; 409 while another operation runs |
//! | `POST /admin/migrate` | applies the example's `migrations/` (compiled in) to every shard, each migration in one transaction with its record: `{"applied": [[shard, version], ...], "shards": {shard: version}}`; a shard that refuses one answers 500 `MIGRATION_FAILED` saying where every shard stands |
//! | `GET /admin/schema` | every model against its table on every shard (`schema_drift`): `{"clean": bool, "report": text}` |
//! | `GET /admin/growth` | the map's version, every shard's slots, the operation in progress (phase, rows copied, deleted and estimated, rate, ETA), the last one, and the runner's counters |
//! | `GET /whereami` | what `request.cf` says about where the request arrived (continent, country, coordinates), the region it maps to, and the region this request's handle places `location` keys in |
//! | `GET /admin/config` | the configuration built from the environment (`COLLEGEDB_CONFIG`), and the shards that serve rows at first; `?var=NAME` reads another var, `?prefix=DB_` discovers the D1 bindings by prefix |
//! | `GET /admin/health` | probes every shard, the directory and the coordinator, each within 2 s: one entry per component (`ok`, `latency_us`, `error`, `code`); 503 if one fails |
//! | `GET /admin/metrics` | routed calls per shard since the isolate started: calls, rows, errors by code, a latency histogram (per isolate: see [`dashboard`]) |
//! | `GET /admin/dashboard` | the HTML dashboard: shards with rows, bytes and fill against D1's 10 GB, health, directory size, moves, migrations, blocks, error rates; refreshes itself from `GET /admin/dashboard.json` every 2 s |
//! | `POST /admin/growth/fault` | fault injection for tests: `{"loseAlarm": true}` deletes the runner's alarm as a lost alarm would be (the next admin request sets it again), answering `{"alarmAt": null, "alarms": n}`; `{"failAlarms": n}` makes the next `n` alarms fail (their handle reaches a Durable Object that is not the coordinator); `{"holdLease": ms}` gives the operation's lease to another runner for `ms`, as a slice killed in the middle leaves it |
//!
//! Every response carries `x-collegedb-directory-ops: <reads>,<writes>`: the directory store calls
//! the request made. `?dir=kv` selects the KV directory (default: the Durable Object directory);
//! `?region=weur` sets the target region of `location` placement (default: the region
//! `request.cf` names, else the configured `target_region`; `GET /whereami` shows it).
//! `?reads=first-primary` or `?reads=first-unconstrained` reads through D1 sessions, as does a
//! request that sends `x-collegedb-bookmarks`; such responses carry the latest bookmarks back.
//! The configuration comes from the `COLLEGEDB_CONFIG` var in `wrangler.toml`.
//!
//! Statistics cost no coordinator call per write: after each response the handle's row-count
//! changes join the isolate's batch, which is sent at most 10 s after its first change (by a
//! timer in `ctx.wait_until`) or once it holds 1,000 changed rows
//! ([`cloudflare::StatsBatching`]). The coordinator's figures therefore lag the shards by up to
//! about 10 s, and lose the unsent batch of an isolate that is evicted; `POST /stats/recount`
//! resets them from the shards. The exact numbers are always `GET /stats`.
//!
//! Growth: `DB_APAC` is configured but owns no slots (the stored map is seeded from the other
//! three, once, by the first request of the deployment: see [`STANDBY_VAR`]). `POST
//! /admin/shards/DB_APAC/add` journals the operation in the coordinator and sets the alarm of the
//! `GrowthRunner` object, which advances it in bounded slices (see
//! [`cloudflare::RunnerSettings`]) while the routes above keep serving; `GET /admin/growth`
//! shows the progress, and sets the runner's alarm again if it was lost. The runner consults the
//! Durable Object directory: rows placed through `?dir=kv` are not known to it, so grow a
//! deployment that uses one directory.

mod dashboard;

use collegedb::backend::cloudflare::{self, Cloudflare, ConfigSource, DirectoryChoice};
use collegedb::directory::Directory;
use collegedb::growth::Operation;
use collegedb::session::{Bookmarks, ReadConsistency, SessionStart};
use collegedb::{CollegeDb, Config, Model, Region, Sharded, Value};
use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use worker::{
    durable_object, event, Context, DurableObject, Env, Method, Request, Response, Result, State,
};

type Db = CollegeDb<Cloudflare>;

/// Hash placement for reads and writes: no directory operation at all.
#[derive(Sharded, Serialize, Deserialize, Debug, Clone)]
#[sharded(table = "users", strategy = "hash")]
pub struct User {
    #[sharded(key)]
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub karma: i64,
    pub active: bool,
    pub avatar: Option<Vec<u8>>,
    pub profile: serde_json::Value,
}

/// Round-robin through the coordinator; read directory-first, always from each shard's primary
/// (even on a request that reads through D1 sessions).
#[derive(Sharded, Serialize, Deserialize, Debug, Clone)]
#[sharded(table = "posts", strategy = "round-robin", consistency = "primary")]
pub struct Post {
    #[sharded(key)]
    pub id: i64,
    pub author: String,
    pub title: String,
    pub score: f64,
}

/// Mixed: placed near the request's region, read hash-first.
#[derive(Sharded, Serialize, Deserialize, Debug, Clone)]
#[sharded(table = "sessions", read = "hash", write = "location")]
pub struct Session {
    #[sharded(key)]
    pub token: String,
    pub user_id: String,
}

/// Random placement.
#[derive(Sharded, Serialize, Deserialize, Debug, Clone)]
#[sharded(table = "events", strategy = "random")]
pub struct Event {
    #[sharded(key)]
    pub id: u32,
    pub kind: String,
}

/// Hash placement, with a unique email over every shard: `GET /accounts/by-email?email=` finds
/// an account with one directory read and one shard query.
#[derive(Sharded, Serialize, Deserialize, Debug, Clone)]
#[sharded(table = "accounts")]
pub struct Account {
    #[sharded(key)]
    pub id: String,
    #[sharded(unique)]
    pub email: String,
    pub name: String,
}

/// Colocated with [`User`]: a user's comments live on the user's shard and move with it, so
/// `GET /users/{id}/comments` reads one shard and `POST /users/{id}/batch` writes the user and a
/// comment in one transaction.
#[derive(Sharded, Serialize, Deserialize, Debug, Clone)]
#[sharded(table = "comments", colocate = User)]
pub struct Comment {
    #[sharded(shard_key)]
    pub user_id: String,
    #[sharded(key)]
    pub id: i64,
    pub body: String,
}

const MODELS: [&str; 6] = [
    "users", "posts", "sessions", "events", "accounts", "comments",
];

/// The var holding the configuration (shards, regions, strategies) in `wrangler.toml`.
pub const CONFIG_VAR: &str = "COLLEGEDB_CONFIG";

/// The var naming the configured shards that own no slots at first (comma-separated): standby
/// until `POST /admin/shards/{shard}/add`. The others serve rows from the start.
pub const STANDBY_VAR: &str = "COLLEGEDB_STANDBY";

/// The growth runner's Durable Object binding.
const GROWTH_RUNNER: &str = "GROWTH_RUNNER";

/// The configuration, from [`CONFIG_VAR`]: the shard list is written once, in `wrangler.toml`.
fn config(env: &Env) -> collegedb::Result<Config> {
    cloudflare::config_from_env(env, ConfigSource::Json(CONFIG_VAR))
}

/// The shards that serve rows from the start: the configured ones not named in [`STANDBY_VAR`].
fn initial_shards(env: &Env, config: &Config) -> Vec<String> {
    let standby = env
        .var(STANDBY_VAR)
        .map(|v| v.to_string())
        .unwrap_or_default();
    let standby: Vec<&str> = standby.split(',').map(str::trim).collect();
    config
        .shards
        .iter()
        .map(|s| s.name.clone())
        .filter(|name| !standby.contains(&name.as_str()))
        .collect()
}

/// Routes by the coordinator's stored map, storing the seed of the initial shards (see
/// [`STANDBY_VAR`]) if the deployment has none yet, so a standby shard owns no slots. Only the
/// isolate's first call makes requests.
async fn ready(env: &Env, db: Db) -> collegedb::Result<Db> {
    let initial = initial_shards(env, db.config());
    let initial: Vec<&str> = initial.iter().map(String::as_str).collect();
    cloudflare::use_stored_map(&db, &initial).await?;
    Ok(db)
}

/// The handle the growth runner uses: the Durable Object directory, the configured region.
async fn open_for_growth(env: &Env) -> collegedb::Result<Db> {
    let db = cloudflare::open(
        env,
        config(env)?,
        DirectoryChoice::DurableObject("DIRECTORY_DO".into()),
        "COORDINATOR",
    )?;
    ready(env, db).await
}

/// How a request's handle reads and where it places `location` keys.
struct Opening {
    directory: DirectoryChoice,
    /// `?region=`, else the region the request arrived in (`request.cf`), else the configured
    /// target region.
    region: Option<Region>,
    /// `?reads=first-primary` or `?reads=first-unconstrained` reads through D1 sessions; so
    /// does any request that brings bookmarks back.
    reads: ReadConsistency,
    /// The bookmarks the request brought ([`Bookmarks::HEADER`]).
    bookmarks: Bookmarks,
}

fn opening(req: &Request) -> collegedb::Result<Opening> {
    let url = req
        .url()
        .map_err(|e| collegedb::Error::ConfigInvalid(e.to_string()))?;
    let bookmarks = cloudflare::request_bookmarks(req)?;
    let mut opening = Opening {
        directory: DirectoryChoice::DurableObject("DIRECTORY_DO".into()),
        region: cloudflare::request_location(req).region(),
        reads: if bookmarks.is_empty() {
            ReadConsistency::Primary
        } else {
            ReadConsistency::Sessions(SessionStart::FirstPrimary)
        },
        bookmarks,
    };
    for (name, value) in url.query_pairs() {
        match (name.as_ref(), value.as_ref()) {
            ("dir", "kv") => opening.directory = DirectoryChoice::Kv("DIRECTORY_KV".into()),
            ("dir", _) => {}
            ("region", r) => opening.region = Some(r.parse()?),
            ("reads", "first-primary") => {
                opening.reads = ReadConsistency::Sessions(SessionStart::FirstPrimary)
            }
            ("reads", "first-unconstrained") => {
                opening.reads = ReadConsistency::Sessions(SessionStart::FirstUnconstrained)
            }
            ("reads", "primary") => opening.reads = ReadConsistency::Primary,
            ("reads", other) => {
                return Err(collegedb::Error::ConfigInvalid(format!(
                    "unknown `reads={other}`: use primary, first-primary or first-unconstrained"
                )))
            }
            _ => {}
        }
    }
    Ok(opening)
}

async fn open(env: &Env, opening: &Opening) -> collegedb::Result<Db> {
    let db = cloudflare::open_with(
        env,
        config(env)?,
        opening.directory.clone(),
        "COORDINATOR",
        opening.reads,
        &opening.bookmarks,
    )?;
    let db = match opening.region {
        Some(region) => db.near(region),
        None => db,
    };
    ready(env, db).await
}

/// `GET /whereami`: what `request.cf` says about where the request arrived, and the region its
/// handle places `location` keys in.
fn whereami(db: &Db, req: &Request) -> Response {
    let location = cloudflare::request_location(req);
    Response::from_json(&serde_json::json!({
        "continent": location.continent,
        "country": location.country,
        "coordinates": location.coordinates,
        "cfRegion": location.region().map(Region::as_str),
        "region": db.target_region().map(Region::as_str),
    }))
    .expect("JSON")
}

/// `GET /admin/config`: the configuration from the environment (`?var=NAME` reads another var,
/// `?prefix=DB_` discovers the D1 bindings by prefix instead).
fn config_route(env: &Env, req: &Request) -> collegedb::Result<Response> {
    let url = req
        .url()
        .map_err(|e| collegedb::Error::ConfigInvalid(e.to_string()))?;
    let mut source = ConfigSource::Json(CONFIG_VAR);
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    for (name, value) in &pairs {
        match name.as_str() {
            "var" => source = ConfigSource::Json(value),
            "prefix" => source = ConfigSource::BindingPrefix(value),
            _ => {}
        }
    }
    let config = cloudflare::config_from_env(env, source)?;
    Ok(Response::from_json(&serde_json::json!({
        "config": config,
        "initialShards": initial_shards(env, &config),
    }))
    .expect("JSON"))
}

fn json_error(error: &collegedb::Error) -> Result<Response> {
    Ok(Response::from_json(&serde_json::json!({
        "error": error.to_string(),
        "code": error.code(),
    }))?
    .with_status(error.http_status()))
}

/// 400 `BAD_BODY`: a request body that does not parse.
fn bad_body(message: impl std::fmt::Display) -> Response {
    Response::from_json(&serde_json::json!({ "error": message.to_string(), "code": "BAD_BODY" }))
        .expect("JSON")
        .with_status(400)
}

fn bad_request(code: &str, message: impl std::fmt::Display) -> Result<Response> {
    Ok(
        Response::from_json(&serde_json::json!({ "error": message.to_string(), "code": code }))?
            .with_status(400),
    )
}

/// JSON to a bound value: integers stay integers (the router refuses those beyond 2^53),
/// `{"blob": [..]}` is a BLOB.
fn value_from_json(value: &serde_json::Value) -> std::result::Result<Value, String> {
    Ok(match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Integer(*b as i64),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64().ok_or("number out of range")?),
        },
        serde_json::Value::String(s) => Value::Text(s.clone()),
        serde_json::Value::Object(o) if o.contains_key("blob") => {
            Value::Blob(serde_json::from_value(o["blob"].clone()).map_err(|e| e.to_string())?)
        }
        other => return Err(format!("unsupported parameter {other}")),
    })
}

fn value_to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => serde_json::json!(i),
        Value::Real(f) => serde_json::json!(f),
        Value::Text(s) => serde_json::json!(s),
        Value::Blob(b) => serde_json::json!({ "blob": b }),
    }
}

fn rows_to_json(rows: &[collegedb::Row]) -> serde_json::Value {
    rows.iter()
        .map(|row| {
            row.columns()
                .iter()
                .zip(row.values())
                .map(|(c, v)| (c.clone(), value_to_json(v)))
                .collect::<serde_json::Map<_, _>>()
        })
        .collect()
}

/// Parses a JSON body with serde_json from its text. (`Request::json` parses in JavaScript, where
/// integers beyond 2^53 are silently rounded before collegedb could refuse them.)
async fn body<T: DeserializeOwned>(req: &mut Request) -> std::result::Result<T, String> {
    let text = req.text().await.map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// The CRUD routes of one model.
async fn model_route<M>(db: &Db, mut req: Request, rest: &[&str]) -> Result<Response>
where
    M: Model + Serialize + DeserializeOwned,
    M::Key: std::str::FromStr + Serialize,
    // Models identified by their key alone: the id is the key.
    M::Id: From<M::Key>,
{
    use collegedb::crud;
    let parse_key = |raw: &str| raw.parse::<M::Key>().map_err(|_| ());
    let result = match (req.method(), rest) {
        (Method::Post, []) => match body::<M>(&mut req).await {
            Ok(row) => crud::insert::<M, Cloudflare>(db, &row)
                .await
                .map(|_| Response::from_json(&row).map(|r| r.with_status(201))),
            Err(e) => return bad_request("BAD_BODY", e),
        },
        (Method::Get, []) => {
            // `?after=<key>&limit=<n>`: a page in key order across every shard.
            let url = req.url()?;
            let (mut after, mut limit) = (None, 100);
            for (name, value) in url.query_pairs() {
                match name.as_ref() {
                    "after" => match parse_key(&value) {
                        Ok(key) => after = Some(key),
                        Err(()) => {
                            return bad_request(
                                "KEY_INVALID",
                                format!("`{value}` is not a valid key"),
                            )
                        }
                    },
                    "limit" => limit = value.parse().unwrap_or(100),
                    _ => {}
                }
            }
            collegedb::scan::scan::<M, Cloudflare>(db, after, limit)
                .await
                .map(|page| {
                    Response::from_json(
                        &serde_json::json!({ "rows": page.rows, "next": page.next }),
                    )
                })
        }
        (Method::Post, ["batch"]) => match body::<Vec<M>>(&mut req).await {
            Ok(rows) => collegedb::bulk::insert_many::<M, Cloudflare>(db, &rows)
                .await
                .map(|n| Response::from_json(&serde_json::json!({ "inserted": n }))),
            Err(e) => return bad_request("BAD_BODY", e),
        },
        (Method::Post, ["upsert"]) => match body::<M>(&mut req).await {
            Ok(row) => crud::upsert::<M, Cloudflare>(db, &row)
                .await
                .map(|_| Response::from_json(&row)),
            Err(e) => return bad_request("BAD_BODY", e),
        },
        (method, [id, tail @ ..]) => {
            let Ok(key) = parse_key(id) else {
                return bad_request("KEY_INVALID", format!("`{id}` is not a valid key"));
            };
            match (method, tail) {
                (Method::Get, []) => crud::find::<M, Cloudflare>(db, key.into())
                    .await
                    .map(|row| match row {
                        Some(row) => Response::from_json(&row),
                        None => Response::from_json(
                            &serde_json::json!({ "error": "not found", "code": "ROW_NOT_FOUND" }),
                        )
                        .map(|r| r.with_status(404)),
                    }),
                (Method::Get, ["shard"]) => crud::locate::<M, Cloudflare>(db, key.into())
                    .await
                    .map(|shard| Response::from_json(&serde_json::json!({ "shard": shard }))),
                (Method::Put, []) => match body::<M>(&mut req).await {
                    Ok(row) => crud::update::<M, Cloudflare>(db, &row)
                        .await
                        .map(|_| Response::from_json(&row)),
                    Err(e) => return bad_request("BAD_BODY", e),
                },
                (Method::Delete, []) => crud::delete::<M, Cloudflare>(db, key.into())
                    .await
                    .map(|deleted| Response::from_json(&serde_json::json!({ "deleted": deleted }))),
                _ => return Response::error("no such route", 404),
            }
        }
        _ => return Response::error("no such route", 404),
    };
    match result {
        Ok(response) => response,
        Err(error) => json_error(&error),
    }
}

/// A user's comments, colocated with the user: `POST /users/{id}/comments` adds one,
/// `GET /users/{id}/comments` lists them from the user's shard alone, and `POST
/// /users/{id}/batch` (`{"karma": n, "comment": {...}}`) sets the user's karma and adds the
/// comment in one transaction, all or nothing.
async fn comments_route(db: &Db, mut req: Request, id: &str) -> Result<Response> {
    #[derive(Deserialize)]
    struct Checkout {
        karma: i64,
        comment: Comment,
    }
    let path = req.path();
    let outcome: collegedb::Result<Response> = match req.method() {
        Method::Get => Comment::query_for(id)
            .order_by(Comment::fields().id().asc())
            .all_with_report(db)
            .await
            .map(|(rows, report)| {
                Response::from_json(&serde_json::json!({ "rows": rows, "shards": report.shards }))
                    .expect("JSON of comments")
            }),
        Method::Post if path.ends_with("/comments") => match body::<Comment>(&mut req).await {
            Ok(comment) if comment.user_id == id => Comment::insert(db, &comment).await.map(|()| {
                Response::from_json(&comment)
                    .expect("JSON")
                    .with_status(201)
            }),
            Ok(_) => return bad_request("BAD_BODY", "the comment's `user_id` is not this user"),
            Err(e) => return bad_request("BAD_BODY", e),
        },
        Method::Post => match body::<Checkout>(&mut req).await {
            Ok(checkout) => {
                let mut batch = db.batch_for::<User>(id);
                let karma = [Value::Integer(checkout.karma), Value::Text(id.to_owned())];
                let added = batch
                    .execute("UPDATE users SET karma = ? WHERE id = ?", karma)
                    .and_then(|batch| batch.insert(&checkout.comment));
                match added {
                    Ok(_) => batch.commit().await.map(|changed| {
                        Response::from_json(&serde_json::json!({ "changed": changed }))
                            .expect("JSON")
                    }),
                    Err(error) => Err(error),
                }
            }
            Err(e) => return bad_request("BAD_BODY", e),
        },
        _ => return Response::error("no such route", 404),
    };
    match outcome {
        Ok(response) => Ok(response),
        Err(error) => json_error(&error),
    }
}

/// Typed queries across shards on `users`: filters, keyset pages, counts, aggregates and a bulk
/// update, the same code as natively.
async fn query_route(db: &Db, mut req: Request, rest: &[&str]) -> Result<Response> {
    use collegedb::query::{Aggregate, Cursor};
    let f = User::fields();
    let outcome: collegedb::Result<serde_json::Value> = match (req.method(), rest) {
        (Method::Get, []) => {
            let url = req.url()?;
            let (mut min_karma, mut limit, mut cursor) = (0i64, 10usize, None);
            for (name, value) in url.query_pairs() {
                match name.as_ref() {
                    "minKarma" => min_karma = value.parse().unwrap_or(0),
                    "limit" => limit = value.parse().unwrap_or(10),
                    "cursor" => cursor = Some(Cursor::from_text(value.as_ref())),
                    _ => {}
                }
            }
            let query = User::query()
                .filter(f.karma().ge(min_karma) & f.active().eq(true))
                .order_by(f.karma().desc())
                .limit(limit);
            let run = async {
                let page = query.page(db, cursor.as_ref()).await?;
                let count = query.count(db).await?;
                let groups = User::query()
                    .filter(f.karma().ge(min_karma))
                    .group_by(f.active())
                    .aggregate(db, &[Aggregate::count(), Aggregate::sum(f.karma())])
                    .await?;
                let groups: Vec<serde_json::Value> = groups
                    .iter()
                    .map(|g| {
                        serde_json::json!({
                            "active": value_to_json(&g.group[0]),
                            "count": value_to_json(&g.values[0]),
                            "karma": value_to_json(&g.values[1]),
                        })
                    })
                    .collect();
                Ok::<_, collegedb::Error>(serde_json::json!({
                    "rows": page.rows,
                    "next": page.next.map(|c| c.as_str().to_owned()),
                    "count": count,
                    "groups": groups,
                }))
            };
            run.await
        }
        (Method::Post, ["deactivate"]) => {
            let below = match body::<serde_json::Value>(&mut req).await {
                Ok(v) => v["below"].as_i64().unwrap_or(0),
                Err(e) => return bad_request("BAD_BODY", e),
            };
            User::query()
                .filter(f.karma().lt(below))
                .update_many(db, &[f.active().set(false)])
                .await
                .map(|report| {
                    serde_json::json!({ "total": report.total, "perShard": report.per_shard })
                })
        }
        _ => return Response::error("no such route", 404),
    };
    match outcome {
        Ok(json) => Response::from_json(&json),
        Err(error) => json_error(&error),
    }
}

async fn create_tables(db: &Db) -> collegedb::Result<()> {
    User::create_table(db).await?;
    Post::create_table(db).await?;
    Session::create_table(db).await?;
    Event::create_table(db).await?;
    Account::create_table(db).await?;
    Comment::create_table(db).await?;
    // The coordinator's registry lists the shards that serve rows; the growth runner adds a
    // shard there when its `add_shard` finishes.
    let map = db.shard_map();
    for shard in db.list_known_shards() {
        if map.contains(shard) {
            db.coordinator().add_shard(shard).await?;
        }
    }
    Ok(())
}

fn growth_runner(env: &Env) -> collegedb::Result<cloudflare::GrowthRunnerClient> {
    env.durable_object(GROWTH_RUNNER)
        .map(cloudflare::GrowthRunnerClient::new)
        .map_err(|e| collegedb::Error::ConfigInvalid(format!("binding `{GROWTH_RUNNER}`: {e}")))
}

/// `POST /admin/shards/{shard}/{add|drain}`: journals the operation and starts the runner.
async fn start_growth(
    db: &Db,
    env: &Env,
    req: &mut Request,
    shard: &str,
    operation: Operation,
) -> collegedb::Result<Response> {
    if !db.list_known_shards().contains(&shard) {
        return Err(collegedb::Error::ShardNotFound {
            shard: shard.to_owned(),
            known: db.list_known_shards().join(", "),
        });
    }
    let text = req.text().await.unwrap_or_default();
    let settings: Option<cloudflare::RunnerSettings> = if text.trim().is_empty() {
        None
    } else {
        match serde_json::from_str(&text) {
            Ok(settings) => Some(settings),
            Err(e) => return Ok(bad_body(format!("runner settings: {e}"))),
        }
    };
    match growth_runner(env)?.start(&operation, settings).await {
        Ok(started) => Ok(Response::from_json(&started)
            .expect("JSON")
            .with_status(202)),
        // Another operation is journaled: a conflict with the deployment's state.
        Err(error @ collegedb::Error::ConfigInvalid(_)) => Ok(Response::from_json(
            &serde_json::json!({ "error": error.to_string(), "code": error.code() }),
        )
        .expect("JSON")
        .with_status(409)),
        Err(error) => Err(error),
    }
}

/// The example's migrations, compiled in: a Worker has no file system.
fn migrations() -> collegedb::Result<collegedb::migrate::Migrations> {
    collegedb::migrate::Migrations::new([
        (
            "0001_user_tags.sql",
            include_str!("../migrations/0001_user_tags.sql"),
        ),
        (
            "0002_user_tags_index.sql",
            include_str!("../migrations/0002_user_tags_index.sql"),
        ),
    ])
}

/// `POST /admin/migrate`: a handful of statements per shard and migration, within one request.
async fn migrate(db: &Db) -> collegedb::Result<Response> {
    let applied = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook = {
        let applied = applied.clone();
        std::sync::Arc::new(move |step: &collegedb::migrate::Applied| {
            if let Ok(mut applied) = applied.lock() {
                applied.push((step.shard.clone(), step.version));
            }
        })
    };
    let status = db.migrate_with(&migrations()?, Some(hook)).await?;
    let shards: BTreeMap<String, Option<u32>> = status.versions().into_iter().collect();
    let applied = applied.lock().map(|a| a.clone()).unwrap_or_default();
    Ok(
        Response::from_json(&serde_json::json!({ "applied": applied, "shards": shards }))
            .expect("JSON"),
    )
}

/// `GET /admin/schema`: every model against every shard.
async fn schema(db: &Db) -> collegedb::Result<Response> {
    let reports = [
        db.schema_drift::<User>().await?,
        db.schema_drift::<Post>().await?,
        db.schema_drift::<Session>().await?,
        db.schema_drift::<Event>().await?,
        db.schema_drift::<Account>().await?,
        db.schema_drift::<Comment>().await?,
    ];
    let clean = reports.iter().all(|r| r.is_clean());
    let report: Vec<String> = reports.iter().map(ToString::to_string).collect();
    Ok(
        Response::from_json(&serde_json::json!({ "clean": clean, "report": report.join("\n") }))
            .expect("JSON"),
    )
}

/// The body of `POST /admin/reassign`.
#[derive(Deserialize)]
struct ReassignRequest {
    table: String,
    key: serde_json::Value,
    shard: String,
}

/// `POST /admin/reassign`: moves one key now. A reassignment is a handful of statements, well
/// within one request's limits; if the request dies midway, its journal stays, and
/// `GET /admin/growth` sets the runner's alarm to finish it.
async fn reassign(db: &Db, env: &Env, req: &mut Request) -> collegedb::Result<Response> {
    let text = req.text().await.unwrap_or_default();
    let request: ReassignRequest = match serde_json::from_str(&text) {
        Ok(request) => request,
        Err(e) => return Ok(bad_body(format!("reassign request: {e}"))),
    };
    let key = match &request.key {
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(n) => collegedb::Key::int(n)?,
            None => {
                return Ok(bad_body(format!(
                    "reassign request: the key {n} is not an integer"
                )))
            }
        },
        serde_json::Value::String(s) => collegedb::Key::text(s.clone())?,
        other => {
            return Ok(bad_body(format!(
                "reassign request: a key is a string or an integer, not {other}"
            )))
        }
    };
    let reply = |error: collegedb::Error, status: u16| {
        Response::from_json(
            &serde_json::json!({ "error": error.to_string(), "code": error.code() }),
        )
        .expect("JSON")
        .with_status(status)
    };
    // Another operation in progress is a conflict with the deployment's state (409); any other
    // refusal of the request (a shard outside the map, say) is the caller's to fix (400).
    if let Some(running) = db.growth_status().await?.running {
        let ours = collegedb::growth::Operation::Reassign {
            table: request.table.clone(),
            key: key.clone(),
            shard: request.shard.clone(),
        };
        if running.operation != ours {
            let why = format!(
                "another growth operation is in progress ({}): wait for it (GET /admin/growth)",
                running.operation
            );
            return Ok(reply(collegedb::Error::ConfigInvalid(why), 409));
        }
    }
    match db.reassign(&request.table, key, &request.shard).await {
        Ok(job) => {
            let now = collegedb::growth::now_ms();
            Ok(Response::from_json(&cloudflare::job_json(&job, now)).expect("JSON"))
        }
        Err(error @ collegedb::Error::ConfigInvalid(_)) => Ok(reply(error, 400)),
        Err(error) => {
            // Stopped midway (a failed statement): its journal stays, and the runner finishes
            // it rather than leaving the key's slot frozen.
            if db.growth_status().await.is_ok_and(|s| s.running.is_some()) {
                if let Ok(runner) = growth_runner(env) {
                    let _ = runner.kick().await;
                }
            }
            Err(error)
        }
    }
}

/// `GET /admin/growth`: the status, and the runner's alarm set again if a job is journaled.
async fn growth_status(db: &Db, env: &Env) -> collegedb::Result<Response> {
    let runner = growth_runner(env)?.kick().await?;
    let status = db.growth_status().await?;
    let mut body = cloudflare::growth_status_json(db, &status);
    body["runner"] = runner["runner"].clone();
    body["rearmed"] = runner["armed"].clone();
    Ok(Response::from_json(&body).expect("JSON"))
}

async fn route(db: &Db, env: &Env, mut req: Request) -> Result<Response> {
    let path = req.path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let outcome: collegedb::Result<Response> = match (req.method(), segments.as_slice()) {
        (Method::Post, ["setup"]) => match create_tables(db).await {
            Ok(()) => db.coordinator().health().await.map(|health| {
                Response::from_json(&serde_json::json!({
                    "shards": db.list_known_shards(),
                    "coordinator": health,
                }))
                .expect("JSON")
            }),
            Err(e) => Err(e),
        },
        (Method::Get, ["whereami"]) => Ok(whereami(db, &req)),
        (Method::Get, ["admin", "config"]) => config_route(env, &req),
        (Method::Post, ["admin", "reassign"]) => reassign(db, env, &mut req).await,
        (Method::Post, ["admin", "migrate"]) => migrate(db).await,
        (Method::Get, ["admin", "schema"]) => schema(db).await,
        (Method::Post, ["admin", "shards", shard, "add"]) => {
            let operation = Operation::AddShard {
                shard: (*shard).to_owned(),
            };
            start_growth(db, env, &mut req, shard, operation).await
        }
        (Method::Post, ["admin", "shards", shard, "drain"]) => {
            let operation = Operation::DrainShard {
                shard: (*shard).to_owned(),
            };
            start_growth(db, env, &mut req, shard, operation).await
        }
        (Method::Get, ["admin", "growth"]) => growth_status(db, env).await,
        (Method::Get, ["admin", "health"]) => dashboard::health(db).await,
        (Method::Get, ["admin", "metrics"]) => dashboard::metrics(db),
        (Method::Get, ["admin", "dashboard"]) => dashboard::page(db).await,
        (Method::Get, ["admin", "dashboard.json"]) => dashboard::data(db).await,
        (Method::Post, ["admin", "growth", "fault"]) => {
            let body = req.text().await?;
            let stub = env
                .durable_object(GROWTH_RUNNER)?
                .get_by_name(cloudflare::GROWTH_RUNNER_NAME)?;
            let mut init = worker::RequestInit::new();
            init.with_method(Method::Post).with_body(Some(body.into()));
            let request = Request::new_with_init("https://collegedb-growth-runner/fault", &init)?;
            let mut upstream = stub.fetch_with_request(request).await?;
            let status = upstream.status_code();
            return Ok(Response::ok(upstream.text().await?)?.with_status(status));
        }
        (Method::Get, ["stats", "coordinator"]) => db
            .coordinator()
            .stats()
            .await
            .map(|s| Response::from_json(&s).expect("JSON of stats")),
        (Method::Get, ["stats", "pending"]) => {
            Ok(Response::from_json(&cloudflare::pending_stats()).expect("JSON of pending stats"))
        }
        (Method::Post, ["stats", "sync"]) => db.coordinator().flush_stats().await.map(|sent| {
            Response::from_json(&serde_json::json!({ "sent": sent })).expect("JSON")
        }),
        (Method::Post, ["stats", "recount"]) => cloudflare::recount_stats(db)
            .await
            .map(|counts| Response::from_json(&counts).expect("JSON of counts")),
        (_, ["query", "users", rest @ ..]) => return query_route(db, req, rest).await,
        (_, ["users", id, "comments"]) | (_, ["users", id, "batch"]) => {
            return comments_route(db, req, id).await
        }
        (_, ["users", rest @ ..]) => return model_route::<User>(db, req, rest).await,
        (_, ["posts", rest @ ..]) => return model_route::<Post>(db, req, rest).await,
        (_, ["sessions", rest @ ..]) => return model_route::<Session>(db, req, rest).await,
        (_, ["events", rest @ ..]) => return model_route::<Event>(db, req, rest).await,
        (Method::Get, ["accounts", "by-email"]) => {
            let url = req.url()?;
            let Some((_, email)) = url.query_pairs().find(|(name, _)| name == "email") else {
                return bad_request("BAD_QUERY", "`?email=` is missing");
            };
            Account::find_by_email(db, email.into_owned())
                .await
                .map(|found| match found {
                    Some(account) => Response::from_json(&account).expect("JSON of an account"),
                    None => Response::from_json(
                        &serde_json::json!({ "error": "not found", "code": "ROW_NOT_FOUND" }),
                    )
                    .expect("JSON")
                    .with_status(404),
                })
        }
        (_, ["accounts", rest @ ..]) => return model_route::<Account>(db, req, rest).await,
        (Method::Get, ["shards", shard, table]) => {
            if !MODELS.contains(table) {
                return bad_request("UNKNOWN_TABLE", format!("unknown table `{table}`"));
            }
            let sql = format!("SELECT * FROM {table} ORDER BY 1");
            db.all_shard(shard, &sql, &[]).await.map(|rows| {
                Response::from_json(&rows_to_json(&rows)).expect("JSON of rows")
            })
        }
        (Method::Post, ["raw", shard]) => {
            #[derive(Deserialize)]
            struct Raw {
                sql: String,
                #[serde(default)]
                params: Vec<serde_json::Value>,
            }
            let raw: Raw = match body(&mut req).await {
                Ok(raw) => raw,
                Err(e) => return bad_request("BAD_BODY", e),
            };
            let params = match raw.params.iter().map(value_from_json).collect::<std::result::Result<Vec<_>, _>>() {
                Ok(params) => params,
                Err(e) => return bad_request("BAD_PARAMS", e),
            };
            db.all_shard(shard, &raw.sql, &params)
                .await
                .map(|rows| Response::from_json(&rows_to_json(&rows)).expect("JSON of rows"))
        }
        (Method::Get, ["stats"]) => db.get_shard_stats().await.map(|stats| {
            let body: Vec<_> = stats
                .iter()
                .map(|s| serde_json::json!({ "shard": s.shard, "rows": s.rows, "tables": s.tables, "sizeBytes": s.size_bytes }))
                .collect();
            Response::from_json(&body).expect("JSON of stats")
        }),
        (method, ["coordinator", rest @ ..]) => {
            // The coordinator's own HTTP API (the seed's), passed through: /coordinator/shards,
            // /stats, /allocate, /flush, /health, and the test-only /fault.
            let body = req.text().await.unwrap_or_default();
            let stub = env.durable_object("COORDINATOR")?.get_by_name(cloudflare::COORDINATOR_NAME)?;
            let mut init = worker::RequestInit::new();
            init.with_method(method);
            if !body.is_empty() {
                init.with_body(Some(body.into()));
            }
            let url = format!("https://collegedb-coordinator/{}", rest.join("/"));
            let mut upstream = stub.fetch_with_request(Request::new_with_init(&url, &init)?).await?;
            // A fetched response's headers are immutable: copy it into a fresh response.
            let status = upstream.status_code();
            return Ok(Response::ok(upstream.text().await?)?.with_status(status));
        }
        (Method::Get, ["directory", "list", table]) => {
            // `?cursor=<opaque>&limit=<n>`: one page of the table's directory entries.
            let url = req.url()?;
            let (mut cursor, mut limit) = (None, 100);
            for (name, value) in url.query_pairs() {
                match name.as_ref() {
                    "cursor" => cursor = Some(value.into_owned()),
                    "limit" => limit = value.parse().unwrap_or(100),
                    _ => {}
                }
            }
            db.directory().list(table, cursor.as_deref(), limit).await.map(|page| {
                let entries: Vec<_> = page.entries.iter().map(|(k, s)| (k.to_string(), s)).collect();
                Response::from_json(&serde_json::json!({ "entries": entries, "cursor": page.cursor }))
                    .expect("JSON of a directory page")
            })
        }
        (Method::Get, ["directory", "count"]) => db
            .directory()
            .count()
            .await
            .map(|n| Response::from_json(&serde_json::json!({ "entries": n })).expect("JSON")),
        (Method::Post, ["bench", "move"]) => return bench_move(env, req).await,
        (Method::Post, ["flush"]) => match db.flush().await {
            Ok(()) => {
                // The rows are gone: so are this isolate's unsent changes to their counts.
                cloudflare::discard_pending_stats();
                db
                .coordinator()
                .flush()
                .await
                .map(|_| Response::from_json(&serde_json::json!({ "success": true })).expect("JSON"))
            }
            Err(e) => Err(e),
        },
        _ => return Response::error("no such route", 404),
    };
    match outcome {
        Ok(response) => Ok(response),
        Err(error) => json_error(&error),
    }
}

/// `POST /bench/move`, a benchmark route: the raw baseline of the growth benchmark
/// (`tests/src/bin/workerd_move_bench.rs`). Development only, like `POST /flush`: refused with 403
/// unless the `COLLEGEDB_ALLOW_FLUSH` var is `"true"`. Body `{"from", "to", "table", "key",
/// "rows"}`: moves up to `rows` rows (at most 10,000 per request) of `table` from the D1 binding
/// `from` to the binding `to` with plain D1 statements, without routing, journal, fence or change
/// capture. Per page of 100 rows in key order, three D1 calls: one `SELECT`, one batch of
/// multi-row `INSERT`s on `to` (at most 100 bound values per statement), one `DELETE ... WHERE
/// key IN (...)` of the page's keys on `from`. Answers `{"moved": n}`.
async fn bench_move(env: &Env, mut req: Request) -> Result<Response> {
    use worker::js_sys::{Array, Uint8Array};
    use worker::wasm_bindgen::{JsCast, JsValue};
    const PAGE: usize = 100;
    const MAX_PARAMETERS: usize = 100;
    #[derive(Deserialize)]
    struct Move {
        from: String,
        to: String,
        table: String,
        key: String,
        rows: usize,
    }
    let allowed = env
        .var("COLLEGEDB_ALLOW_FLUSH")
        .map(|v| v.to_string() == "true")
        .unwrap_or(false);
    if !allowed {
        return Response::error(
            "benchmark routes are disabled: set the COLLEGEDB_ALLOW_FLUSH var to \"true\" in development only",
            403,
        );
    }
    let job: Move = match body(&mut req).await {
        Ok(job) => job,
        Err(e) => return bad_request("BAD_BODY", e),
    };
    let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !plain(&job.table) || !plain(&job.key) || job.rows > 10_000 {
        return bad_request(
            "BAD_BODY",
            "`table` and `key` must be plain names, and `rows` at most 10000",
        );
    }
    let (from, to) = (env.d1(&job.from)?, env.d1(&job.to)?);
    let (table, key) = (&job.table, &job.key);
    let select =
        format!("SELECT \"{key}\" AS bench_key, * FROM \"{table}\" ORDER BY \"{key}\" LIMIT ?");
    let mut moved = 0;
    while moved < job.rows {
        let limit = JsValue::from_f64(PAGE.min(job.rows - moved) as f64);
        let rows: Vec<Array> = from
            .prepare(&select)
            .bind(&[limit])?
            .raw_js_value()
            .await?
            .into_iter()
            .map(JsCast::unchecked_into)
            .collect();
        let Some(first) = rows.first() else {
            break;
        };
        let columns = (first.length() as usize).saturating_sub(1).max(1);
        let one = format!("({})", vec!["?"; columns].join(", "));
        let mut keys = Vec::with_capacity(rows.len());
        let mut inserts = Vec::new();
        for chunk in rows.chunks((MAX_PARAMETERS / columns).max(1)) {
            let mut values = Vec::with_capacity(chunk.len() * columns);
            for row in chunk {
                keys.push(row.get(0));
                // D1 reads a BLOB back as an array of bytes; bind it as one again.
                values.extend((1..=columns as u32).map(|i| match row.get(i) {
                    v if Array::is_array(&v) => Uint8Array::new(&v).buffer().into(),
                    v => v,
                }));
            }
            let sql = format!(
                "INSERT INTO \"{table}\" VALUES {}",
                vec![one.as_str(); chunk.len()].join(", ")
            );
            inserts.push(to.prepare(sql).bind(&values)?);
        }
        to.batch(inserts).await?;
        let delete = format!(
            "DELETE FROM \"{table}\" WHERE \"{key}\" IN ({})",
            vec!["?"; keys.len()].join(", ")
        );
        from.prepare(delete).bind(&keys)?.run().await?;
        moved += rows.len();
    }
    Response::from_json(&serde_json::json!({ "moved": moved }))
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    let opened = match opening(&req) {
        Ok(opening) => open(&env, &opening).await.map(|db| (db, opening)),
        Err(error) => Err(error),
    };
    let (db, opening) = match opened {
        Ok(opened) => opened,
        Err(error) => return json_error(&error),
    };
    let mut response = route(&db, &env, req).await?;
    let ops = db.directory_ops();
    response.headers_mut().set(
        "x-collegedb-directory-ops",
        &format!("{},{}", ops.reads, ops.writes),
    )?;
    // A handle reading through D1 sessions sends its latest bookmarks back, for the client to
    // return on its next request and read its own writes.
    if let ReadConsistency::Sessions(_) = opening.reads {
        let sent = cloudflare::bookmarks(&db, &opening.bookmarks)
            .and_then(|latest| cloudflare::set_bookmarks(response.headers_mut(), &latest));
        if let Err(error) = sent {
            return json_error(&error);
        }
    }
    // The handle's row-count changes join the isolate's batch: no I/O, unless the batch is full
    // (then its send finishes after the response). A request that finds a batch without a timer
    // hosts the timer that sends it when due. Most requests need no `wait_until` at all.
    let sync = {
        let db = db.clone();
        async move {
            if let Err(error) = db.sync_stats().await {
                worker::console_error!("collegedb: stats not synced: {error}");
            }
        }
    };
    finish_after_response(&ctx, sync);
    if cloudflare::stats_timer_needed() {
        ctx.wait_until(async move {
            if let Err(error) = db.coordinator().flush_stats_when_due().await {
                worker::console_error!("collegedb: stats not sent: {error}");
            }
        });
    }
    Ok(response)
}

/// Runs `future` up to its first wait for I/O now, and the rest (if any) after the response
/// (`ctx.wait_until`). For futures that usually finish without I/O, this saves the promise and
/// the task that `wait_until` costs. Only for futures whose I/O is JavaScript promises (they
/// take the real waker when polled again); not for timers.
fn finish_after_response(ctx: &Context, future: impl std::future::Future<Output = ()> + 'static) {
    let mut future = Box::pin(future);
    let mut poll = std::task::Context::from_waker(std::task::Waker::noop());
    if future.as_mut().poll(&mut poll).is_pending() {
        ctx.wait_until(future);
    }
}

/// The ShardCoordinator. Wraps the library's handler with two test aids: a fault switch (after
/// `POST /fault {"fail": true}`, `/allocate` answers 503, as an unreachable coordinator would),
/// and a count of the requests it receives, by method and path (`GET /requests`).
#[durable_object]
pub struct ShardCoordinator {
    state: State,
    env: Env,
}

impl DurableObject for ShardCoordinator {
    fn new(state: State, env: Env) -> Self {
        Self { state, env }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        match self.serve(req).await {
            Ok(response) => Ok(response),
            Err(error) => Response::error(format!("coordinator: {error}"), 500),
        }
    }
}

impl ShardCoordinator {
    async fn serve(&self, mut req: Request) -> Result<Response> {
        let path = req.path();
        let storage = self.state.storage();
        if path == "/requests" {
            let counts = storage
                .get::<BTreeMap<String, u64>>("requests")
                .await?
                .unwrap_or_default();
            return Response::from_json(&counts);
        }
        let mut counts = storage
            .get::<BTreeMap<String, u64>>("requests")
            .await?
            .unwrap_or_default();
        *counts
            .entry(format!("{} {path}", req.method()))
            .or_default() += 1;
        storage.put("requests", &counts).await?;
        if path == "/fault" {
            let body: serde_json::Value = req.json().await?;
            let fail = body.get("fail").and_then(|f| f.as_bool()).unwrap_or(false);
            self.state.storage().put("fault", fail).await?;
            return Response::from_json(&serde_json::json!({ "fail": fail }));
        }
        if path == "/allocate"
            && self
                .state
                .storage()
                .get::<bool>("fault")
                .await?
                .unwrap_or(false)
        {
            return Response::error("coordinator fault injected", 503);
        }
        cloudflare::serve_coordinator(&self.state, &self.env, req).await
    }
}

/// The strongly consistent directory's objects.
#[durable_object]
pub struct ShardDirectory {
    state: State,
}

impl DurableObject for ShardDirectory {
    fn new(state: State, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        cloudflare::serve_directory(&self.state, req).await
    }
}

/// Shards kept in Durable Objects with SQLite storage: one object per shard configured with
/// `durable_object = "SHARD_DO"`, named after the shard. The `COLLEGEDB_SHARD_MAX_BYTES` var
/// lowers the 10 GB limit (for tests of `SHARD_FULL`).
#[durable_object]
pub struct ShardObject {
    state: State,
    env: Env,
}

impl DurableObject for ShardObject {
    fn new(state: State, env: Env) -> Self {
        Self { state, env }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let limit = self
            .env
            .var("COLLEGEDB_SHARD_MAX_BYTES")
            .ok()
            .and_then(|v| v.to_string().parse().ok())
            .unwrap_or(cloudflare::MAX_OBJECT_BYTES);
        cloudflare::serve_shard_with_limit(&self.state, &mut req, limit).await
    }
}

/// Runs growth operations: its alarm advances the journaled operation in bounded slices
/// ([`cloudflare::run_growth_alarm`]); its `fetch` serves [`cloudflare::serve_growth_runner`]
/// (start, kick, status) for the admin routes. It builds the database handle from its own `env`,
/// which holds the same bindings as the Worker's.
#[durable_object]
pub struct GrowthRunner {
    state: State,
    env: Env,
}

impl DurableObject for GrowthRunner {
    fn new(state: State, env: Env) -> Self {
        Self { state, env }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        if req.path() == "/fault" {
            return self.fault(req).await;
        }
        match open_for_growth(&self.env).await {
            Ok(db) => cloudflare::serve_growth_runner(&self.state, &db, req).await,
            Err(error) => Response::error(format!("growth runner: {error}"), 500),
        }
    }

    async fn alarm(&self) -> Result<Response> {
        if self.state.storage().get::<bool>("lose-alarms").await? == Some(true) {
            // Fault injection: this alarm is lost, and sets no other.
            return Response::ok("");
        }
        let failing = self
            .state
            .storage()
            .get::<u32>("fail-alarms")
            .await?
            .unwrap_or(0);
        if failing > 0 {
            // Fault injection: a handle whose coordinator binding names another class, so the
            // slice fails at its first coordinator request and the runner backs off.
            self.state.storage().put("fail-alarms", failing - 1).await?;
            let db = config(&self.env).and_then(|config| {
                cloudflare::open(
                    &self.env,
                    config,
                    DirectoryChoice::DurableObject("DIRECTORY_DO".into()),
                    "DIRECTORY_DO",
                )
            });
            return match db {
                Ok(db) => cloudflare::run_growth_alarm(&self.state, &db).await,
                Err(error) => Response::error(error.to_string(), 500),
            };
        }
        match open_for_growth(&self.env).await {
            Ok(db) => cloudflare::run_growth_alarm(&self.state, &db).await,
            Err(error) => {
                // Nothing could run: try again later, as a failed slice would.
                worker::console_error!("collegedb growth: cannot open the database: {error}");
                self.state.storage().set_alarm(5_000).await?;
                Response::ok("")
            }
        }
    }
}

impl GrowthRunner {
    /// Fault injection (`POST /fault`): `{"failAlarms": n}` or `{"loseAlarm": true}`.
    async fn fault(&self, mut req: Request) -> Result<Response> {
        let body: serde_json::Value = req.json().await?;
        if let Some(n) = body["failAlarms"].as_u64() {
            self.state.storage().put("fail-alarms", n as u32).await?;
            return Response::from_json(&serde_json::json!({ "failAlarms": n }));
        }
        if body["loseAlarm"] == true {
            return self.lose_alarm().await;
        }
        if let Some(ms) = body["holdLease"].as_u64() {
            return self.hold_lease(ms).await;
        }
        Response::error(
            "expected {\"failAlarms\": n}, {\"loseAlarm\": true} or {\"holdLease\": ms}",
            400,
        )
    }

    /// Gives the operation's lease to another runner for `ms` milliseconds, as a slice killed
    /// in the middle leaves it: alarms pause while the journal is rewritten, then the alarm is
    /// set, finds the lease held, and waits for it to end.
    async fn hold_lease(&self, ms: u64) -> Result<Response> {
        use collegedb::backend::Coordinator;
        let storage = self.state.storage();
        storage.put("lose-alarms", true).await?;
        worker::Delay::from(std::time::Duration::from_millis(1500)).await;
        let held = async {
            let db = open_for_growth(&self.env).await?;
            let Some(mut job) = db.growth_status().await?.running else {
                return Err(collegedb::Error::ConfigInvalid(
                    "no operation in progress".into(),
                ));
            };
            let until_ms = collegedb::growth::now_ms() + ms;
            job.lease = Some(collegedb::growth::Lease {
                runner: 1,
                until_ms,
            });
            // The journal's name in the coordinator (see `collegedb::growth`).
            let json = serde_json::to_string(&job).expect("a job serializes");
            db.coordinator().store_job("growth", Some(&json)).await?;
            Ok(until_ms)
        }
        .await;
        storage.put("lose-alarms", false).await?;
        storage.set_alarm(0).await?;
        match held {
            Ok(until_ms) => Response::from_json(&serde_json::json!({ "leaseUntilMs": until_ms })),
            Err(error) => Response::error(error.to_string(), 500),
        }
    }

    /// Loses the alarm: alarms that fire during the next 1.5 s (one already running sets the
    /// next before it ends) do nothing and set none, and the alarm is deleted; afterwards no
    /// alarm is set until an admin request sets it again.
    async fn lose_alarm(&self) -> Result<Response> {
        let storage = self.state.storage();
        storage.put("lose-alarms", true).await?;
        worker::Delay::from(std::time::Duration::from_millis(1500)).await;
        storage.delete_alarm().await?;
        storage.put("lose-alarms", false).await?;
        let record = cloudflare::runner_record(&self.state).await?;
        Response::from_json(&serde_json::json!({
            "alarmAt": storage.get_alarm().await?,
            "alarms": record.alarms,
        }))
    }
}

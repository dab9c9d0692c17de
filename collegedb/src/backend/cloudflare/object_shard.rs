//! Shards on Durable Objects with SQLite storage: [`ObjectShard`] on the Worker's side, and
//! [`serve_shard`] inside the object.
//!
//! Each shard is one object of a namespace the Worker binds once, named `collegedb-shard-<name>`
//! after the shard, so a shard comes into being by name: adding one needs no binding and no
//! deploy. The object runs the statements it receives on its own SQLite database
//! (`ctx.storage.sql`), one request at a time, next to the data.
//!
//! The wire format is JSON with every value tagged (`"n"` for NULL, `{"i": 7}`, `{"r": 2.0}`,
//! `{"t": "text"}`, `{"b": "00ff"}` for a blob in hex), so integers, reals, text, blobs and NULL
//! arrive exactly as they were sent, both ways. Values are bound in the object as D1 binds them
//! (numbers as JavaScript numbers, blobs as `ArrayBuffer`), so a column behaves the same on either
//! kind of shard, and integers beyond ±(2^53 − 1) are refused before sending, as for D1.
//!
//! A batch runs inside the storage's synchronous transaction (`transactionSync`, which the
//! `worker` crate does not wrap, so it is called here through JavaScript): all statements or
//! none. The database's own error messages come back unchanged and map to the same typed errors
//! as D1's (`QUERY_FAILED`, `DUPLICATE_KEY`, ...). An object holds at most
//! [`MAX_OBJECT_BYTES`]; once its database reaches that size, statements that could grow it are
//! refused with `SHARD_FULL`, while `DELETE` and `DROP` still run to make room.

use std::cell::RefCell;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use worker::js_sys::{Function, Reflect};
use worker::wasm_bindgen::closure::Closure;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::{
    Method, ObjectNamespace, Request, RequestInit, Response, SqlStorage, SqlStorageValue, State,
};

use super::d1::to_js;
use crate::backend::{Row, ShardConn, Statement};
use crate::error::{Error, Result};
use crate::value::Value;

/// The most a Durable Object's SQLite storage holds: 10 GB.
pub const MAX_OBJECT_BYTES: u64 = 10_000_000_000;

/// A value on the wire, tagged so that nothing changes type on the way.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Wire {
    #[serde(rename = "n")]
    Null,
    #[serde(rename = "i")]
    Integer(i64),
    #[serde(rename = "r")]
    Real(f64),
    /// A real JSON cannot carry: `"inf"` or `"-inf"`.
    #[serde(rename = "f")]
    NonFinite(String),
    #[serde(rename = "t")]
    Text(String),
    #[serde(rename = "b")]
    Blob(String),
}

impl Wire {
    fn from_value(value: &Value) -> Wire {
        match value {
            Value::Null => Wire::Null,
            Value::Integer(i) => Wire::Integer(*i),
            Value::Real(f) => Wire::real(*f),
            Value::Text(s) => Wire::Text(s.clone()),
            Value::Blob(b) => Wire::Blob(hex::encode(b)),
        }
    }

    fn real(f: f64) -> Wire {
        if f.is_finite() {
            Wire::Real(f)
        } else {
            Wire::NonFinite(if f > 0.0 { "inf" } else { "-inf" }.into())
        }
    }

    fn into_value(self) -> std::result::Result<Value, String> {
        Ok(match self {
            Wire::Null => Value::Null,
            Wire::Integer(i) => Value::Integer(i),
            Wire::Real(f) => Value::Real(f),
            Wire::NonFinite(text) => Value::Real(match text.as_str() {
                "inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                other => return Err(format!("bad real `{other}`")),
            }),
            Wire::Text(s) => Value::Text(s),
            Wire::Blob(hex_text) => {
                Value::Blob(hex::decode(hex_text).map_err(|e| format!("bad blob: {e}"))?)
            }
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Execute,
    Query,
    Batch,
    Size,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireStatement {
    sql: String,
    params: Vec<Wire>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Call {
    op: Op,
    #[serde(default)]
    statements: Vec<WireStatement>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Reply {
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    rows: Vec<Vec<Wire>>,
    #[serde(default)]
    changes: Vec<u64>,
    #[serde(default)]
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Set with `error` when the object is full.
    #[serde(default)]
    full: bool,
}

/// One shard: a Durable Object with SQLite storage, in the namespace the Worker binds.
pub struct ObjectShard {
    name: String,
    namespace: ObjectNamespace,
    /// The Durable Object location hint of the shard's region: where the object is created.
    location: Option<&'static str>,
}

impl std::fmt::Debug for ObjectShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectShard")
            .field("name", &self.name)
            .finish()
    }
}

impl ObjectShard {
    /// The shard `name` in `namespace` (a binding whose class calls [`serve_shard`]).
    pub fn new(name: impl Into<String>, namespace: ObjectNamespace) -> Self {
        ObjectShard {
            name: name.into(),
            namespace,
            location: None,
        }
    }

    /// Creates the object in `region` (a Durable Object location hint) when it does not exist
    /// yet, rather than wherever its first request comes from. An existing object stays where
    /// it is.
    #[must_use]
    pub fn in_region(mut self, region: Option<crate::Region>) -> Self {
        self.location = region.map(|region| match region {
            crate::Region::Af => "afr",
            other => other.as_str(),
        });
        self
    }

    /// The shard's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The object's name in its namespace.
    pub fn object_name(shard: &str) -> String {
        format!("collegedb-shard-{shard}")
    }

    fn failed(&self, error: impl std::fmt::Display) -> Error {
        Error::from_database(&self.name, error.to_string())
    }

    async fn call(&self, op: Op, statements: &[Statement]) -> Result<Reply> {
        let call = Call {
            op,
            statements: statements
                .iter()
                .map(|s| WireStatement {
                    sql: s.sql.clone(),
                    params: s.params.iter().map(Wire::from_value).collect(),
                })
                .collect(),
        };
        for statement in statements {
            for value in &statement.params {
                value.check_bindable()?;
            }
        }
        let body = serde_json::to_string(&call).map_err(|e| self.failed(e))?;
        let name = Self::object_name(&self.name);
        let stub = match self.location {
            Some(hint) => self.namespace.get_by_name_with_location_hint(&name, hint),
            None => self.namespace.get_by_name(&name),
        }
        .map_err(|e| self.failed(e))?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post).with_body(Some(body.into()));
        let request = Request::new_with_init("https://collegedb-shard/sql", &init)
            .map_err(|e| self.failed(e))?;
        super::note_subrequest();
        let mut response = stub
            .fetch_with_request(request)
            .await
            .map_err(|e| self.failed(e))?;
        let status = response.status_code();
        let text = response.text().await.map_err(|e| self.failed(e))?;
        let reply: Reply = serde_json::from_str(&text).map_err(|_| {
            let shown: String = text.chars().take(300).collect();
            self.failed(format!("the shard object answered {status}: {shown}"))
        })?;
        match reply.error {
            Some(message) if reply.full => Err(Error::ShardFull {
                shard: self.name.clone(),
                message,
            }),
            Some(message) => Err(self.failed(message)),
            None => Ok(reply),
        }
    }
}

impl ShardConn for ObjectShard {
    async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        let statement = Statement::new(sql, params.to_vec());
        let reply = self
            .call(Op::Execute, std::slice::from_ref(&statement))
            .await?;
        Ok(reply.changes.first().copied().unwrap_or(0))
    }

    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let statement = Statement::new(sql, params.to_vec());
        let reply = self
            .call(Op::Query, std::slice::from_ref(&statement))
            .await?;
        let columns: std::sync::Arc<[String]> = reply.columns.into();
        reply
            .rows
            .into_iter()
            .map(|row| {
                let values = row
                    .into_iter()
                    .map(Wire::into_value)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| self.failed(e))?;
                Ok(Row::new(columns.clone(), values))
            })
            .collect()
    }

    async fn batch(&self, statements: &[Statement]) -> Result<Vec<u64>> {
        Ok(self.call(Op::Batch, statements).await?.changes)
    }

    async fn size_bytes(&self) -> Result<u64> {
        Ok(self.call(Op::Size, &[]).await?.size)
    }
}

/// A failure inside the object: the database's message, and whether the object is full.
struct Failure {
    message: String,
    full: bool,
}

impl From<worker::Error> for Failure {
    fn from(error: worker::Error) -> Self {
        let message = error.to_string();
        // SQLite's own limit, should the storage fill before `room` saw it.
        let full = message.contains("SQLITE_FULL") || message.contains("database or disk is full");
        Failure { message, full }
    }
}

/// Serves one shard object's requests: call it from the `fetch` of the Worker's own
/// `#[durable_object]` class, declared with `new_sqlite_classes` in `wrangler.toml`.
///
/// ```ignore
/// #[durable_object]
/// pub struct Shard { state: State }
/// impl DurableObject for Shard {
///     fn new(state: State, _env: Env) -> Self { Self { state } }
///     async fn fetch(&self, req: Request) -> Result<Response> {
///         cloudflare::serve_shard(&self.state, req).await
///     }
/// }
/// ```
pub async fn serve_shard(state: &State, mut request: Request) -> worker::Result<Response> {
    serve_shard_with_limit(state, &mut request, MAX_OBJECT_BYTES).await
}

/// [`serve_shard`] with a smaller size limit than [`MAX_OBJECT_BYTES`] (to test `SHARD_FULL`
/// without filling 10 GB).
pub async fn serve_shard_with_limit(
    state: &State,
    request: &mut Request,
    max_bytes: u64,
) -> worker::Result<Response> {
    let call: Call = match request.json().await {
        Ok(call) => call,
        Err(e) => return Response::error(format!("bad shard request: {e}"), 400),
    };
    let storage = state.storage();
    let sql = storage.sql();
    let outcome = match call.op {
        Op::Size => Ok(Reply {
            size: sql.database_size() as u64,
            ..Reply::default()
        }),
        Op::Query => match call.statements.first() {
            // `INSERT ... RETURNING` arrives as a query.
            Some(statement) => room(&sql, std::slice::from_ref(statement), max_bytes)
                .and_then(|()| query(&sql, statement)),
            None => Err(Failure::from(worker::Error::from("no statement"))),
        },
        Op::Execute | Op::Batch => {
            room(&sql, &call.statements, max_bytes).and_then(|()| match call.op {
                Op::Batch => batch(&storage, &sql, call.statements),
                _ => call
                    .statements
                    .first()
                    .ok_or_else(|| Failure::from(worker::Error::from("no statement")))
                    .and_then(|statement| execute(&sql, statement))
                    .map(|changes| Reply {
                        changes: vec![changes],
                        ..Reply::default()
                    }),
            })
        }
    };
    Response::from_json(&match outcome {
        Ok(reply) => reply,
        Err(failure) => Reply {
            error: Some(failure.message),
            full: failure.full,
            ..Reply::default()
        },
    })
}

/// Refuses statements that add or change user rows once the database is full. Deletes run (they
/// make room), and so do collegedb's own bookkeeping (`_collegedb_...` tables, fences, change
/// capture) and schema statements, so that keys can still be moved off a full shard.
fn room(sql: &SqlStorage, statements: &[WireStatement], max_bytes: u64) -> Result<(), Failure> {
    if !statements
        .iter()
        .any(|s| crate::raw::adds_user_rows(&s.sql))
    {
        return Ok(());
    }
    // The file's size bounds the pages in use: only a file at the limit needs counting them.
    if (sql.database_size() as u64) < max_bytes {
        return Ok(());
    }
    let size = used_bytes(sql);
    if size < max_bytes {
        return Ok(());
    }
    Err(Failure {
        message: format!(
            "the object's database uses {size} bytes, at its limit of {max_bytes}: delete rows, or move keys to another shard"
        ),
        full: true,
    })
}

/// The bytes the database's pages hold (free pages left by deletes do not count), or the file's
/// size where the pragmas are not available.
fn used_bytes(sql: &SqlStorage) -> u64 {
    let pragma = |name: &str| -> Option<u64> {
        let cursor = sql.exec(&format!("PRAGMA {name}"), None).ok()?;
        match cursor.raw().next()?.ok()?.into_iter().next()? {
            SqlStorageValue::Integer(n) => u64::try_from(n).ok(),
            SqlStorageValue::Float(n) => Some(n as u64),
            _ => None,
        }
    };
    match (
        pragma("page_count"),
        pragma("freelist_count"),
        pragma("page_size"),
    ) {
        (Some(pages), Some(free), Some(size)) => pages.saturating_sub(free) * size,
        _ => sql.database_size() as u64,
    }
}

fn bind(statement: &WireStatement) -> Result<Vec<JsValue>, Failure> {
    statement
        .params
        .iter()
        .map(|wire| {
            let value = wire.clone().into_value().map_err(|message| Failure {
                message,
                full: false,
            })?;
            Ok(to_js(&value))
        })
        .collect()
}

fn to_wire(value: SqlStorageValue) -> Wire {
    match value {
        SqlStorageValue::Null => Wire::Null,
        SqlStorageValue::Boolean(b) => Wire::Integer(i64::from(b)),
        SqlStorageValue::Integer(i) => Wire::Integer(i),
        SqlStorageValue::Float(f) => Wire::real(f),
        SqlStorageValue::String(s) => Wire::Text(s),
        SqlStorageValue::Blob(b) => Wire::Blob(hex::encode(b)),
    }
}

fn query(sql: &SqlStorage, statement: &WireStatement) -> Result<Reply, Failure> {
    let cursor = sql.exec_raw(&statement.sql, bind(statement)?)?;
    let columns = cursor.column_names();
    let rows = cursor
        .raw()
        .map(|row| Ok(row?.into_iter().map(to_wire).collect()))
        .collect::<worker::Result<Vec<Vec<Wire>>>>()?;
    Ok(Reply {
        columns,
        rows,
        ..Reply::default()
    })
}

/// Runs one statement to its end and returns the rows it changed, as D1 reports them: SQLite's
/// `changes()` when the statement changed rows (`total_changes()` moved), else 0, since
/// `changes()` keeps the count of the connection's last `INSERT`, `UPDATE` or `DELETE`.
fn execute(sql: &SqlStorage, statement: &WireStatement) -> Result<u64, Failure> {
    let counter = |query: &str| -> Result<u64, Failure> {
        let cursor = sql.exec(query, None)?;
        let value = cursor
            .raw()
            .next()
            .transpose()?
            .and_then(|row| row.into_iter().next());
        Ok(match value {
            Some(SqlStorageValue::Integer(n)) => n.max(0) as u64,
            Some(SqlStorageValue::Float(n)) => n.max(0.0) as u64,
            _ => 0,
        })
    };
    let before = counter("SELECT total_changes()")?;
    let cursor = sql.exec_raw(&statement.sql, bind(statement)?)?;
    for row in cursor.raw() {
        row?;
    }
    if counter("SELECT total_changes()")? == before {
        return Ok(0);
    }
    counter("SELECT changes()")
}

/// What the batch inside `transactionSync` did: rows changed per statement, or the failure.
type BatchOutcome = Result<Vec<u64>, Failure>;

/// Runs every statement inside `transactionSync`: a failure rolls all of them back.
fn batch(
    storage: &worker::Storage,
    sql: &SqlStorage,
    statements: Vec<WireStatement>,
) -> Result<Reply, Failure> {
    let raw: &JsValue = storage.as_raw().as_ref();
    let transaction: Function = Reflect::get(raw, &"transactionSync".into())
        .and_then(|f| f.dyn_into::<Function>())
        .map_err(|_| Failure {
            message: "this object's storage has no transactionSync: declare the class in new_sqlite_classes".into(),
            full: false,
        })?;
    let outcome: Rc<RefCell<Option<BatchOutcome>>> = Rc::new(RefCell::new(None));
    let sql = sql.clone();
    let written = outcome.clone();
    let body = Closure::once(move || -> std::result::Result<(), JsValue> {
        let mut changes = Vec::with_capacity(statements.len());
        for statement in &statements {
            match execute(&sql, statement) {
                Ok(n) => changes.push(n),
                Err(failure) => {
                    let error = JsValue::from(worker::js_sys::Error::new(&failure.message));
                    *written.borrow_mut() = Some(Err(failure));
                    // Throwing rolls the transaction back.
                    return Err(error);
                }
            }
        }
        *written.borrow_mut() = Some(Ok(changes));
        Ok(())
    });
    let called = transaction.call1(raw, body.as_ref().unchecked_ref());
    let recorded = outcome.borrow_mut().take();
    match (called, recorded) {
        (Ok(_), Some(Ok(changes))) => Ok(Reply {
            changes,
            ..Reply::default()
        }),
        (_, Some(Err(failure))) => Err(failure),
        (Err(error), _) => Err(Failure {
            message: format!("{error:?}"),
            full: false,
        }),
        (Ok(_), None) => Err(Failure {
            message: "transactionSync did not run the batch".into(),
            full: false,
        }),
    }
}

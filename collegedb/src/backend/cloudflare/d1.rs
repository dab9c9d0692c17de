//! D1 shards: [`D1Shard`] runs the router's SQL on one `worker::D1Database`.
//!
//! Value mapping, both ways:
//!
//! | collegedb [`Value`] | bound as (JavaScript) | read back from |
//! | --- | --- | --- |
//! | `Null` | `null` | `null` / `undefined` |
//! | `Integer(i)` (within ±(2^53 - 1), checked before binding) | `number` | an integral `number` within ±(2^53 - 1) |
//! | `Real(f)` | `number` | any other `number` |
//! | `Text(s)` | `string` | `string` |
//! | `Blob(b)` | `ArrayBuffer` | `Array` of bytes, `ArrayBuffer` or `Uint8Array` |
//! | (booleans are `Integer` 0/1) | | `boolean` reads as `Integer` 0/1 |
//!
//! D1 carries every number as a double both ways. Binding: a bare integer parameter is `REAL` in
//! SQL (`typeof(?)` is `'real'`), but a column declared `INTEGER` (every integer model field is)
//! converts integral values back to `INTEGER` on storage, so stored integers stay integers.
//! Reading: a `REAL` column holding `2.0` reads back as `Integer(2)`; `f64` fields accept both. An integer beyond 2^53 stored by other means reads back
//! as `Real`, and an integer field refuses it with `DECODE_FAILED` instead of a wrong value.

use std::sync::Arc;

use worker::js_sys::futures::JsFuture;
use worker::js_sys::{self, Array, ArrayBuffer, Function, Object, Reflect, Uint8Array};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::{D1Database, D1DatabaseSession, D1PreparedStatement};

use crate::backend::{Row, ShardConn, Statement};
use crate::error::{Error, Result, MAX_SAFE_INTEGER};
use crate::value::Value;

/// One shard: a D1 database binding, used directly (every statement on the primary) or through
/// a D1 session (reads from replicas, sequentially consistent; see [`crate::session`]).
pub struct D1Shard {
    name: String,
    database: D1Database,
    session: Option<Session>,
}

/// A shard's D1 session, the bookmark it started from, and the same shard without a session
/// (for models and handles that read the primary).
struct Session {
    session: D1DatabaseSession,
    started_from: Option<String>,
    primary: Box<super::CloudflareShard>,
}

impl std::fmt::Debug for D1Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("D1Shard").field("name", &self.name).finish()
    }
}

/// Converts a value for binding.
pub fn to_js(value: &Value) -> JsValue {
    match value {
        Value::Null => JsValue::NULL,
        Value::Integer(i) => JsValue::from_f64(*i as f64),
        Value::Real(f) => JsValue::from_f64(*f),
        Value::Text(s) => JsValue::from_str(s),
        Value::Blob(b) => Uint8Array::from(b.as_slice()).buffer().into(),
    }
}

/// Converts a value D1 returned.
pub fn from_js(value: &JsValue, column: &str) -> Result<Value> {
    if value.is_null() || value.is_undefined() {
        return Ok(Value::Null);
    }
    if let Some(number) = value.as_f64() {
        let integral = number.fract() == 0.0 && number.abs() <= MAX_SAFE_INTEGER as f64;
        return Ok(if integral {
            Value::Integer(number as i64)
        } else {
            Value::Real(number)
        });
    }
    if let Some(text) = value.as_string() {
        return Ok(Value::Text(text));
    }
    if let Some(flag) = value.as_bool() {
        return Ok(Value::Integer(flag as i64));
    }
    if let Some(array) = value.dyn_ref::<Array>() {
        let mut bytes = Vec::with_capacity(array.length() as usize);
        for item in array.iter() {
            let byte = item
                .as_f64()
                .filter(|b| (0.0..=255.0).contains(b) && b.fract() == 0.0)
                .ok_or_else(|| Error::decode(column, "BLOB array holds a non-byte"))?;
            bytes.push(byte as u8);
        }
        return Ok(Value::Blob(bytes));
    }
    if let Some(buffer) = value.dyn_ref::<ArrayBuffer>() {
        return Ok(Value::Blob(Uint8Array::new(buffer).to_vec()));
    }
    if let Some(view) = value.dyn_ref::<Uint8Array>() {
        return Ok(Value::Blob(view.to_vec()));
    }
    Err(Error::decode(
        column,
        format!("unsupported D1 value {value:?}"),
    ))
}

impl D1Shard {
    /// Wraps a D1 binding; `name` is the shard's configured name.
    pub fn new(name: impl Into<String>, database: D1Database) -> Self {
        D1Shard {
            name: name.into(),
            database,
            session: None,
        }
    }

    /// Wraps a D1 binding and starts a session on it: from `bookmark` if given, else as `start`
    /// says. Starting a session sends no request; its first statement does.
    pub fn with_session(
        name: impl Into<String>,
        database: D1Database,
        start: crate::session::SessionStart,
        bookmark: Option<&str>,
    ) -> Result<Self> {
        let name = name.into();
        let session = database
            .with_session(Some(bookmark.unwrap_or(start.as_str())))
            .map_err(|e| {
                Error::BookmarkInvalid(format!("D1 refused a session on shard `{name}`: {e}"))
            })?;
        // The binding object is shared with the session-less twin.
        let twin: &JsValue = database.as_ref();
        let primary = Box::new(super::CloudflareShard::D1(D1Shard::new(
            name.clone(),
            twin.clone().unchecked_into::<D1Database>(),
        )));
        Ok(D1Shard {
            name,
            database,
            session: Some(Session {
                session,
                started_from: bookmark.map(str::to_owned),
                primary,
            }),
        })
    }

    /// The latest bookmark of this shard's session: the one its last statement saw, or the one
    /// it started from if it ran none. `None` without a session.
    pub fn bookmark(&self) -> Result<Option<String>> {
        let Some(session) = &self.session else {
            return Ok(None);
        };
        let latest = session.session.get_bookmark().map_err(|e| self.failed(e))?;
        Ok(latest.or_else(|| session.started_from.clone()))
    }

    /// The shard's configured name (its binding's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same shard without a session (every statement on the primary), when this one has a
    /// session.
    pub fn primary_twin(&self) -> Option<&super::CloudflareShard> {
        self.session.as_ref().map(|s| &*s.primary)
    }

    /// Whether statements go through a D1 session.
    pub fn in_session(&self) -> bool {
        self.session.is_some()
    }

    fn failed(&self, error: impl std::fmt::Display) -> Error {
        Error::from_database(&self.name, error.to_string())
    }

    fn prepare(&self, sql: &str, params: &[Value]) -> Result<D1PreparedStatement> {
        let args: Vec<JsValue> = params.iter().map(to_js).collect();
        let statement = match &self.session {
            Some(session) => session.session.prepare(sql),
            None => self.database.prepare(sql),
        };
        statement.bind(&args).map_err(|e| self.failed(e))
    }

    /// Runs `stmt.raw({ columnNames: true })`: the first row holds the column names, and values
    /// keep their positions (objects would reorder integer-like column names).
    async fn raw_with_columns(&self, statement: &D1PreparedStatement) -> Result<Vec<Row>> {
        let inner: &JsValue = statement.inner().as_ref();
        let raw: Function = Reflect::get(inner, &"raw".into())
            .and_then(|f| f.dyn_into::<Function>())
            .map_err(|e| self.failed(format!("{e:?}")))?;
        let options = Object::new();
        Reflect::set(&options, &"columnNames".into(), &JsValue::TRUE)
            .map_err(|e| self.failed(format!("{e:?}")))?;
        let promise = raw
            .call1(inner, &options)
            .map_err(|e| self.failed(js_error(&e)))?;
        super::note_subrequest();
        let result = JsFuture::from(js_sys::Promise::from(promise))
            .await
            .map_err(|e| self.failed(js_error(&e)))?;
        let rows: Array = result
            .dyn_into()
            .map_err(|_| self.failed("raw() did not return an array"))?;
        let mut iter = rows.iter();
        let Some(header) = iter.next() else {
            return Ok(Vec::new());
        };
        let columns: Arc<[String]> = Array::from(&header)
            .iter()
            .map(|c| c.as_string().unwrap_or_default())
            .collect();
        iter.map(|row| {
            let row = Array::from(&row);
            let values = columns
                .iter()
                .enumerate()
                .map(|(i, column)| from_js(&row.get(i as u32), column))
                .collect::<Result<Vec<_>>>()?;
            Ok(Row::new(columns.clone(), values))
        })
        .collect()
    }
}

/// The message of a JavaScript error (D1 puts the database's message in `cause`).
fn js_error(error: &JsValue) -> String {
    if let Some(error) = error.dyn_ref::<js_sys::Error>() {
        let cause = error.cause();
        if let Some(cause) = cause.dyn_ref::<js_sys::Error>() {
            return String::from(cause.message());
        }
        return String::from(error.message());
    }
    format!("{error:?}")
}

impl ShardConn for D1Shard {
    async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        super::note_subrequest();
        let result = self
            .prepare(sql, params)?
            .run()
            .await
            .map_err(|e| self.failed(e))?;
        let meta = result.meta().map_err(|e| self.failed(e))?;
        Ok(meta.and_then(|m| m.changes).unwrap_or(0) as u64)
    }

    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let statement = self.prepare(sql, params)?;
        self.raw_with_columns(&statement).await
    }

    async fn batch(&self, statements: &[Statement]) -> Result<Vec<u64>> {
        let prepared = statements
            .iter()
            .map(|s| self.prepare(&s.sql, &s.params))
            .collect::<Result<Vec<_>>>()?;
        super::note_subrequest();
        let results = match &self.session {
            Some(session) => session.session.batch(prepared).await,
            None => self.database.batch(prepared).await,
        }
        .map_err(|e| self.failed(e))?;
        results
            .iter()
            .map(|r| {
                let meta = r.meta().map_err(|e| self.failed(e))?;
                Ok(meta.and_then(|m| m.changes).unwrap_or(0) as u64)
            })
            .collect()
    }

    async fn size_bytes(&self) -> Result<u64> {
        super::note_subrequest();
        let result = self
            .database
            .prepare("SELECT 1")
            .run()
            .await
            .map_err(|e| self.failed(e))?;
        let meta = result.meta().map_err(|e| self.failed(e))?;
        Ok(meta.and_then(|m| m.size_after).unwrap_or(0) as u64)
    }
}

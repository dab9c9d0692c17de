//! The model layer's data: the [`Model`] trait that `#[derive(Sharded)]` implements, and the SQL
//! each model needs, rendered once with sea-query and reused as text.
//!
//! The derive supplies only data (table, columns, key, strategies, value conversion); the CRUD
//! logic lives once, generically, in [`crate::crud`].

use sea_query::{
    Alias, ColumnDef as SqlColumn, Expr, ExprTrait, OnConflict, Order, Query, SqliteQueryBuilder,
    Table,
};

use crate::backend::MaybeSync;
use crate::config::StrategyOverride;
use crate::error::Result;
use crate::key::ShardKey;
use crate::value::{ColumnType, Value};

/// D1's limit on bound parameters per statement.
pub const MAX_BOUND_PARAMETERS: usize = 100;

/// The largest TEXT or BLOB value, and the largest row, that D1 stores, in bytes ("maximum
/// string, BLOB or table row size"). Enforced before sending, on every backend.
pub const MAX_VALUE_BYTES: usize = 2_000_000;

/// The longest SQL statement D1 accepts, in bytes. Enforced before sending, on every backend.
pub const MAX_STATEMENT_BYTES: usize = 100_000;

/// The most columns a D1 table may have.
pub const MAX_COLUMNS: usize = 100;

/// Checks a row about to be written against D1's size limits: each TEXT or BLOB value, and the
/// whole row (values counted by their stored size: 8 bytes per number).
pub fn check_row(values: &[crate::Value]) -> crate::Result<()> {
    let mut total = 0;
    for value in values {
        value.check_bindable()?;
        total += match value {
            crate::Value::Text(t) => t.len(),
            crate::Value::Blob(b) => b.len(),
            crate::Value::Null => 0,
            crate::Value::Integer(_) | crate::Value::Real(_) => 8,
        };
    }
    if total > MAX_VALUE_BYTES {
        return Err(crate::Error::ValueTooLarge {
            what: "a row",
            len: total,
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// One column of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnDef {
    /// The column's SQL name.
    pub name: &'static str,
    /// The declared type.
    pub ty: ColumnType,
    /// Whether `NULL` is allowed.
    pub nullable: bool,
}

/// A sharded model. Implemented by `#[derive(Sharded)]`; not meant to be implemented by hand.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a sharded model",
    label = "not a `#[derive(Sharded)]` struct",
    note = "`colocate = ...` and the typed calls need a struct with `#[derive(Sharded)]`"
)]
pub trait Model: Sized + MaybeSync + 'static {
    /// The type of the key that places a row: the model's own key, or, for a model colocated
    /// with a parent (`#[sharded(colocate = Parent)]`), the parent's key held in its
    /// `#[sharded(shard_key)]` field.
    type Key: ShardKey;
    /// What identifies one row: the key, or for a colocated model `(parent key, own key)`.
    type Id: RowId;
    /// The SQL table name.
    const TABLE: &'static str;
    /// The columns, in field order.
    const COLUMNS: &'static [ColumnDef];
    /// The position of the placing key's column in [`Model::COLUMNS`].
    const KEY_INDEX: usize;
    /// The positions of the primary key's columns, the placing key's first: `[KEY_INDEX]`, or
    /// for a colocated model `[KEY_INDEX, own key]`.
    const ID_COLUMNS: &'static [usize];
    /// The directory scope of the placing key: the model's own table, or its parent's (see
    /// [`crate::colocate`]). Entries, markers and tombstones of the key are that table's.
    const SCOPE: &'static str = Self::TABLE;
    /// The model's own strategies (unset ones come from the configuration).
    const STRATEGY: StrategyOverride;
    /// Whether the model's reads always go to each shard's primary, even on a handle that reads
    /// through D1 sessions (`#[sharded(consistency = "primary")]`; see [`crate::session`]).
    const PRIMARY_READS: bool = false;
    /// The positions in [`Model::COLUMNS`] of the `#[sharded(unique)]` columns: each value is
    /// held by at most one row over every shard (see [`crate::unique`]).
    const UNIQUE: &'static [usize] = &[];

    /// The row's key.
    fn key(&self) -> &Self::Key;
    /// The row's values, in column order.
    fn to_values(&self) -> Result<Vec<Value>>;
    /// Rebuilds a row from values in column order.
    fn from_values(values: Vec<Value>) -> Result<Self>;
    /// The model's SQL, rendered once per process.
    fn sql() -> &'static ModelSql;
}

/// What identifies one row of a model ([`Model::Id`]): a key, or a pair of keys.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a key",
    label = "unsupported key type",
    note = "a `#[sharded(key)]` field must be `String`, `i64`, `i32` or `u32`"
)]
pub trait RowId: Clone + MaybeSync + Send + 'static {
    /// The placing key, and the primary key's values in [`Model::ID_COLUMNS`] order.
    fn into_parts(self) -> Result<(crate::key::Key, Vec<Value>)>;
}

macro_rules! single_row_id {
    ($($t:ty),*) => {$(
        impl RowId for $t {
            fn into_parts(self) -> Result<(crate::key::Key, Vec<Value>)> {
                let key = self.into_key()?;
                let value = key.to_value();
                Ok((key, vec![value]))
            }
        }
    )*};
}
single_row_id!(String, i64, i32, u32);

impl<K: ShardKey, L: ShardKey> RowId for (K, L) {
    fn into_parts(self) -> Result<(crate::key::Key, Vec<Value>)> {
        let key = self.0.into_key()?;
        let own = self.1.into_key()?.into_value();
        let value = key.to_value();
        Ok((key, vec![value, own]))
    }
}

/// Checks the primary key's values of a row given in column order as keys (a colocated
/// model's own key is one too: `find` and `delete` take it).
pub(crate) fn check_ids<M: Model>(values: &[Value]) -> Result<()> {
    for &i in M::ID_COLUMNS {
        crate::key::Key::from_value(values[i].clone())?;
    }
    Ok(())
}

/// The parameters of [`ModelSql::update_by_key`] for a row given in column order: the other
/// columns in column order, then the primary key's.
pub(crate) fn update_params<M: Model>(values: Vec<Value>) -> Vec<Value> {
    let ids = id_values::<M>(&values);
    let mut params: Vec<Value> = values
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !M::ID_COLUMNS.contains(i))
        .map(|(_, v)| v)
        .collect();
    params.extend(ids);
    params
}

/// The primary key's values of a row given in column order.
pub(crate) fn id_values<M: Model>(values: &[Value]) -> Vec<Value> {
    M::ID_COLUMNS.iter().map(|&i| values[i].clone()).collect()
}

/// The SQL text of one model's statements, with `?` placeholders in a documented order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSql {
    /// `SELECT <columns> FROM t WHERE key = ?`.
    pub select_by_key: String,
    /// The hash-first read on the slot's owner: `select_by_key AND <owned>`; parameters: the key,
    /// then the slot. A hit costs one probe of the fence beside the row's own lookup; an empty
    /// result is followed by one more query on the same shard (owned? marked?), so that a miss is
    /// told apart from a stale map and from a key placed elsewhere.
    pub find_on_owner: String,
    /// `select_by_key AND <not moved> UNION ALL` one all-NULL row if the shard does not own the
    /// slot; parameters: the key, then the slot. A key with a tombstone here reads as absent.
    pub select_by_key_fenced: String,
    /// `SELECT <columns> FROM t ORDER BY key LIMIT ?`: the first page of a scan.
    pub scan_first: String,
    /// `SELECT <columns> FROM t WHERE key > ? ORDER BY key LIMIT ?`: the pages after it.
    pub scan_after: String,
    /// `SELECT COUNT(*) FROM t`.
    pub count: String,
    /// `INSERT INTO t (<columns>) VALUES (?, ...)`: parameters in column order.
    pub insert: String,
    /// Insert, or update every non-key column on key conflict: parameters in column order.
    pub upsert: String,
    /// `UPDATE t SET <non-key> = ? ... WHERE key = ?`: non-key values in column order, then the
    /// key. `None` when the model has no column besides its key.
    pub update_by_key: Option<String>,
    /// `DELETE FROM t WHERE key = ?`.
    pub delete_by_key: String,
    /// [`ModelSql::insert`] as `INSERT ... SELECT ... WHERE <owned> AND <not moved>`: the slot
    /// is the last parameter, and no row changed means the shard does not own it, or the key has
    /// a tombstone there (see [`crate::fence`]).
    pub insert_fenced: String,
    /// [`ModelSql::upsert`], fenced like `insert_fenced` (a key-only model's conflict rewrites
    /// the key, so that an existing row counts as changed).
    pub upsert_fenced: String,
    /// [`ModelSql::update_by_key`] `AND <owned> AND <not moved>`: the slot is the last
    /// parameter.
    pub update_fenced: Option<String>,
    /// [`ModelSql::delete_by_key`] `AND <owned> AND <not moved>`: the slot is the last
    /// parameter.
    pub delete_fenced: String,
    /// `CREATE TABLE IF NOT EXISTS ...`.
    pub create_table: String,
}

fn placeholder() -> sea_query::Value {
    sea_query::Value::BigInt(Some(0))
}

impl ModelSql {
    /// Renders every statement of `M`.
    pub fn render<M: Model>() -> Self {
        let table = M::TABLE;
        let scope = M::SCOPE;
        let key = M::COLUMNS[M::KEY_INDEX].name;
        let ids: Vec<&'static str> = M::ID_COLUMNS.iter().map(|&i| M::COLUMNS[i].name).collect();
        let columns: Vec<&'static str> = M::COLUMNS.iter().map(|c| c.name).collect();
        let others: Vec<&'static str> = columns
            .iter()
            .copied()
            .filter(|c| !ids.contains(c))
            .collect();
        // `id1 = ? AND id2 = ? ...`: the primary key's columns, the placing key first.
        let by_id = |mut query: sea_query::SelectStatement| {
            for id in &ids {
                query.and_where(Expr::col(*id).eq(placeholder()));
            }
            query
        };

        let select_by_key = by_id(
            Query::select()
                .columns(columns.iter().copied())
                .from(table)
                .to_owned(),
        )
        .build(SqliteQueryBuilder)
        .0;
        let nulls = vec!["NULL"; columns.len()].join(", ");
        let owned = crate::fence::OWNED;
        let find_on_owner = format!("{select_by_key} AND {owned}");
        // Statements that may reach a shard by a directory entry also treat a tombstoned key as
        // absent there: a stale route finds no row (see `crate::fence`). The key's parameter is
        // reused by number, so nothing new is bound.
        let select_by_key_fenced = format!(
            "{select_by_key} AND {} UNION ALL SELECT {nulls} WHERE NOT {owned}",
            crate::fence::not_moved(scope, 1)
        );
        let mut first = Query::select();
        first.columns(columns.iter().copied()).from(table);
        for id in &ids {
            first.order_by(*id, Order::Asc);
        }
        let scan_first = first.limit(1).to_owned().build(SqliteQueryBuilder).0;
        let mut after = Query::select();
        after.columns(columns.iter().copied()).from(table);
        // After the last row read: `id > ?`, or `(id1, id2) > (?, ?)`, a row-value comparison.
        if ids.len() == 1 {
            after.and_where(Expr::col(key).gt(placeholder()));
        } else {
            after.and_where(Expr::cust(format!(
                "({}) > ({})",
                ids.iter()
                    .map(|c| format!("\"{c}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                vec!["?"; ids.len()].join(", ")
            )));
        }
        for id in &ids {
            after.order_by(*id, Order::Asc);
        }
        let scan_after = after.limit(1).to_owned().build(SqliteQueryBuilder).0;
        let count = Query::select()
            .expr(Expr::col(sea_query::Asterisk).count())
            .from(table)
            .to_owned()
            .build(SqliteQueryBuilder)
            .0;
        let insert = insert_rows::<M>(1);
        let mut on_conflict = OnConflict::columns(ids.iter().copied());
        if others.is_empty() {
            on_conflict.do_nothing();
        } else {
            on_conflict.update_columns(others.iter().copied());
        }
        let upsert = Query::insert()
            .into_table(table)
            .columns(columns.iter().copied())
            .values_panic(columns.iter().map(|_| placeholder().into()))
            .on_conflict(on_conflict)
            .to_owned()
            .build(SqliteQueryBuilder)
            .0;
        let update_by_key = (!others.is_empty()).then(|| {
            let mut update = Query::update();
            update
                .table(table)
                .values(others.iter().map(|c| (*c, Expr::val(placeholder()))));
            for id in &ids {
                update.and_where(Expr::col(*id).eq(placeholder()));
            }
            update.build(SqliteQueryBuilder).0
        });
        let mut delete = Query::delete();
        delete.from_table(table);
        for id in &ids {
            delete.and_where(Expr::col(*id).eq(placeholder()));
        }
        let delete_by_key = delete.build(SqliteQueryBuilder).0;

        let mut create = Table::create();
        create.table(table).if_not_exists();
        for (index, column) in M::COLUMNS.iter().enumerate() {
            let mut def = SqlColumn::new(Alias::new(column.name));
            match column.ty {
                ColumnType::Integer => def.integer(),
                ColumnType::Real => def.double(),
                ColumnType::Text => def.text(),
                ColumnType::Blob => def.blob(),
            };
            if !column.nullable {
                def.not_null();
            }
            if M::ID_COLUMNS == [index] {
                def.primary_key();
            }
            create.col(def);
        }
        if M::ID_COLUMNS.len() > 1 {
            let mut primary = sea_query::Index::create();
            for id in &ids {
                primary.col(Alias::new(*id));
            }
            create.primary_key(&mut primary);
        }
        let create_table = create.to_string(SqliteQueryBuilder);

        let as_select = |insert: &str| -> (String, String) {
            let (head, rest) = insert.split_once(" VALUES ").expect("an insert has VALUES");
            let tail = rest.find(')').map_or("", |end| &rest[end + 1..]);
            // The key is bound once: the tombstone test names its parameter by number.
            let select = format!(
                "{head} SELECT {} WHERE {owned} AND {}",
                vec!["?"; columns.len()].join(", "),
                crate::fence::not_moved(scope, M::KEY_INDEX + 1)
            );
            (select, tail.to_owned())
        };
        let (insert_select, _) = as_select(&insert);
        let insert_fenced = insert_select.clone();
        let (_, conflict) = as_select(&upsert);
        let conflict = if others.is_empty() {
            let targets = ids
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ");
            format!(" ON CONFLICT ({targets}) DO UPDATE SET \"{key}\" = \"excluded\".\"{key}\"")
        } else {
            conflict
        };
        let upsert_fenced = format!("{insert_select}{conflict}");
        let update_fenced = update_by_key.as_ref().map(|sql| {
            format!(
                "{sql} AND {owned} AND {}",
                crate::fence::not_moved(scope, others.len() + 1)
            )
        });
        let delete_fenced = format!(
            "{delete_by_key} AND {owned} AND {}",
            crate::fence::not_moved(scope, 1)
        );

        ModelSql {
            select_by_key,
            find_on_owner,
            select_by_key_fenced,
            scan_first,
            scan_after,
            count,
            insert,
            upsert,
            update_by_key,
            delete_by_key,
            insert_fenced,
            upsert_fenced,
            update_fenced,
            delete_fenced,
            create_table,
        }
    }
}

/// `INSERT INTO t (<columns>) VALUES (...), ... ` for `rows` rows.
pub(crate) fn insert_rows<M: Model>(rows: usize) -> String {
    let mut insert = Query::insert();
    insert
        .into_table(M::TABLE)
        .columns(M::COLUMNS.iter().map(|c| c.name));
    for _ in 0..rows {
        insert.values_panic(M::COLUMNS.iter().map(|_| placeholder().into()));
    }
    insert.build(SqliteQueryBuilder).0
}

/// Like [`insert_rows`], skipping rows whose key exists: `... ON CONFLICT (key) DO NOTHING`.
pub(crate) fn insert_rows_or_ignore<M: Model>(rows: usize) -> String {
    let mut insert = Query::insert();
    insert
        .into_table(M::TABLE)
        .columns(M::COLUMNS.iter().map(|c| c.name))
        .on_conflict(
            OnConflict::columns(M::ID_COLUMNS.iter().map(|&i| M::COLUMNS[i].name))
                .do_nothing()
                .to_owned(),
        );
    for _ in 0..rows {
        insert.values_panic(M::COLUMNS.iter().map(|_| placeholder().into()));
    }
    insert.build(SqliteQueryBuilder).0
}

/// `SELECT <columns> FROM t WHERE key IN (?, ...)` for `keys` keys.
pub(crate) fn select_by_keys<M: Model>(keys: usize) -> String {
    Query::select()
        .columns(M::COLUMNS.iter().map(|c| c.name))
        .from(M::TABLE)
        .and_where(Expr::col(M::COLUMNS[M::KEY_INDEX].name).is_in((0..keys).map(|_| placeholder())))
        .to_owned()
        .build(SqliteQueryBuilder)
        .0
}

/// How many rows of `M` fit in one statement under [`MAX_BOUND_PARAMETERS`].
pub(crate) fn rows_per_statement<M: Model>() -> usize {
    (MAX_BOUND_PARAMETERS / M::COLUMNS.len()).max(1)
}

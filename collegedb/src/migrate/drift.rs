//! Schema drift: a model's columns against each shard's real table (`pragma_table_info`), and the
//! opt-in that adds the nullable columns a model gained.

use crate::backend::{Backend, ShardConn};
use crate::error::{Error, Result};
use crate::model::{ColumnDef, Model};
use crate::raw::quote_ident;
use crate::router::CollegeDb;
use crate::value::{ColumnType, Value};

/// A column of a shard's table, as SQLite declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumn {
    /// Its name.
    pub name: String,
    /// Its declared type (`TEXT`, `double`, ...).
    pub declared: String,
    /// `NOT NULL`.
    pub not_null: bool,
    /// Whether it has a default value.
    pub has_default: bool,
    /// Part of the primary key.
    pub primary_key: bool,
}

/// How one shard's table differs from the model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardDrift {
    /// The shard.
    pub shard: String,
    /// The table does not exist there.
    pub table_missing: bool,
    /// Model columns the table lacks.
    pub missing: Vec<String>,
    /// Table columns the model lacks (harmless unless `NOT NULL` without a default: the model's
    /// inserts would fail).
    pub extra: Vec<TableColumn>,
    /// Columns on both sides that disagree, each described.
    pub mismatched: Vec<String>,
}

impl ShardDrift {
    /// Whether the model can read and write this shard's table.
    pub fn is_clean(&self) -> bool {
        !self.table_missing
            && self.missing.is_empty()
            && self.mismatched.is_empty()
            && self
                .extra
                .iter()
                .all(|column| !column.not_null || column.has_default)
    }
}

/// A model against every shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriftReport {
    /// The model's table.
    pub table: String,
    /// One entry per configured shard.
    pub shards: Vec<ShardDrift>,
}

impl DriftReport {
    /// Whether every shard's table fits the model.
    pub fn is_clean(&self) -> bool {
        self.shards.iter().all(ShardDrift::is_clean)
    }
}

impl std::fmt::Display for DriftReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.table)?;
        for shard in &self.shards {
            let mut parts = Vec::new();
            if shard.table_missing {
                parts.push("no such table".to_owned());
            }
            if !shard.missing.is_empty() {
                parts.push(format!("missing {}", shard.missing.join(", ")));
            }
            for column in &shard.extra {
                let note = if column.not_null && !column.has_default {
                    " (NOT NULL without a default: inserts fail)"
                } else {
                    ""
                };
                parts.push(format!("extra {}{note}", column.name));
            }
            parts.extend(shard.mismatched.iter().cloned());
            if parts.is_empty() {
                parts.push("as the model".to_owned());
            }
            write!(f, "\n  {}: {}", shard.shard, parts.join("; "))?;
        }
        Ok(())
    }
}

/// SQLite's type affinity of a declared type (section 3.1 of its datatype docs).
fn affinity(declared: &str) -> ColumnType {
    let upper = declared.to_ascii_uppercase();
    if upper.contains("INT") {
        ColumnType::Integer
    } else if upper.contains("CHAR") || upper.contains("CLOB") || upper.contains("TEXT") {
        ColumnType::Text
    } else if upper.contains("BLOB") || upper.is_empty() {
        ColumnType::Blob
    } else {
        // REAL, FLOA, DOUB, and NUMERIC, which stores reals as reals.
        ColumnType::Real
    }
}

fn type_name(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Integer => "INTEGER",
        ColumnType::Real => "REAL",
        ColumnType::Text => "TEXT",
        ColumnType::Blob => "BLOB",
    }
}

/// The columns of `table` on a shard; empty if it has no such table.
async fn columns_of<S: ShardConn>(shard: &S, table: &str) -> Result<Vec<TableColumn>> {
    let rows = shard
        .query_raw(
            "SELECT name, type, \"notnull\" AS not_null, dflt_value IS NOT NULL AS has_default, \
             pk FROM pragma_table_info(?)",
            &[Value::Text(table.to_owned())],
        )
        .await?;
    rows.into_iter()
        .map(|row| {
            Ok(TableColumn {
                name: row.get("name")?,
                declared: row.get("type")?,
                not_null: row.get::<i64>("not_null")? != 0,
                has_default: row.get::<i64>("has_default")? != 0,
                primary_key: row.get::<i64>("pk")? != 0,
            })
        })
        .collect()
}

fn compare<M: Model>(shard: String, columns: &[TableColumn]) -> ShardDrift {
    let mut drift = ShardDrift {
        shard,
        table_missing: columns.is_empty(),
        ..ShardDrift::default()
    };
    if drift.table_missing {
        return drift;
    }
    for (index, def) in M::COLUMNS.iter().enumerate() {
        let Some(column) = columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(def.name))
        else {
            drift.missing.push(def.name.to_owned());
            continue;
        };
        let found = affinity(&column.declared);
        if found != def.ty {
            drift.mismatched.push(format!(
                "{} is {} ({} affinity), the model's field is {}",
                def.name,
                if column.declared.is_empty() {
                    "untyped"
                } else {
                    &column.declared
                },
                type_name(found),
                type_name(def.ty)
            ));
        }
        let key = M::ID_COLUMNS.contains(&index);
        if !key && def.nullable && column.not_null {
            drift.mismatched.push(format!(
                "{} is NOT NULL, the model's field is an Option: storing None fails",
                def.name
            ));
        }
        if !key && !def.nullable && !column.not_null {
            drift.mismatched.push(format!(
                "{} allows NULL, the model's field does not: reading a NULL fails",
                def.name
            ));
        }
        if key != column.primary_key {
            drift.mismatched.push(if key {
                format!(
                    "{} is the model's key, not the table's primary key",
                    def.name
                )
            } else {
                format!(
                    "{} is part of the table's primary key, not the model's key",
                    def.name
                )
            });
        }
    }
    drift.extra = columns
        .iter()
        .filter(|c| {
            !M::COLUMNS
                .iter()
                .any(|d| d.name.eq_ignore_ascii_case(&c.name))
        })
        .cloned()
        .collect();
    drift
}

fn add_column(table: &str, def: &ColumnDef) -> String {
    format!(
        "ALTER TABLE {} ADD COLUMN {} {}",
        quote_ident(table),
        quote_ident(def.name),
        type_name(def.ty)
    )
}

impl<B: Backend> CollegeDb<B> {
    /// Compares `M`'s columns with its table on every configured shard: missing and extra
    /// columns, type affinities, nullability and the primary key.
    ///
    /// ```
    /// use collegedb::{CollegeDb, Config, Sharded};
    /// #[derive(Sharded)]
    /// #[sharded(table = "users")]
    /// struct User { #[sharded(key)] id: String, name: String, bio: Option<String> }
    /// # let dir = tempfile::tempdir().unwrap();
    /// # pollster::block_on(async {
    /// let db = CollegeDb::open_embedded(Config::with_shard_names(["a", "b"]), dir.path())?;
    /// db.run_all_shards("CREATE TABLE users (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL)", &[]).await?;
    /// let drift = db.schema_drift::<User>().await?;
    /// assert_eq!(drift.shards[0].missing, ["bio"]);
    /// // `bio` is an Option: it may be added in place.
    /// db.add_missing_columns::<User>().await?;
    /// assert!(db.schema_drift::<User>().await?.is_clean());
    /// # Ok::<(), collegedb::Error>(()) }).unwrap();
    /// ```
    pub async fn schema_drift<M: Model>(&self) -> Result<DriftReport> {
        let mut report = DriftReport {
            table: M::TABLE.to_owned(),
            shards: Vec::new(),
        };
        for (index, shard) in self.shards().into_iter().enumerate() {
            let columns = columns_of(shard, M::TABLE).await?;
            report
                .shards
                .push(compare::<M>(self.shard_name(index).to_owned(), &columns));
        }
        Ok(report)
    }

    /// Adds, on every shard, the columns of `M` its table lacks, when they are nullable (`Option`
    /// fields): `ALTER TABLE ... ADD COLUMN`. A missing column that is not nullable needs a
    /// value for the existing rows: nothing is changed, and [`Error::ConfigInvalid`] names the
    /// columns to add with a migration that gives them a default. Returns `(shard, column)` for
    /// each column added.
    pub async fn add_missing_columns<M: Model>(&self) -> Result<Vec<(String, String)>> {
        let report = self.schema_drift::<M>().await?;
        let mut blocked = Vec::new();
        for drift in &report.shards {
            for name in &drift.missing {
                let def = M::COLUMNS
                    .iter()
                    .find(|d| d.name == name)
                    .expect("a model column");
                if !def.nullable {
                    blocked.push(format!("{name} on {}", drift.shard));
                }
            }
        }
        if !blocked.is_empty() {
            return Err(Error::config(format!(
                "`{}` lacks columns that are not Option fields ({}): existing rows need a value, so add them with a migration (`ALTER TABLE ... ADD COLUMN ... NOT NULL DEFAULT ...`)",
                M::TABLE,
                blocked.join(", ")
            )));
        }
        let mut added = Vec::new();
        for (index, drift) in report.shards.iter().enumerate() {
            for name in &drift.missing {
                let def = M::COLUMNS
                    .iter()
                    .find(|d| d.name == name)
                    .expect("a model column");
                self.shard(index)
                    .execute_raw(&add_column(M::TABLE, def), &[])
                    .await?;
                added.push((drift.shard.clone(), name.clone()));
            }
        }
        Ok(added)
    }
}

#[cfg(test)]
mod tests {
    use super::affinity;
    use crate::value::ColumnType;

    #[test]
    fn affinities_follow_sqlite() {
        for (declared, ty) in [
            ("INTEGER", ColumnType::Integer),
            ("bigint", ColumnType::Integer),
            ("TEXT", ColumnType::Text),
            ("varchar(20)", ColumnType::Text),
            ("BLOB", ColumnType::Blob),
            ("", ColumnType::Blob),
            ("double", ColumnType::Real),
            ("REAL", ColumnType::Real),
        ] {
            assert_eq!(affinity(declared), ty, "{declared}");
        }
    }
}

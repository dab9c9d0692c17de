//! Writes of many rows at once: `insert_many`.

use std::collections::BTreeMap;

use crate::backend::{Backend, ShardConn, Statement};
use crate::crud::duplicate_or;
use crate::error::Result;
use crate::key::ShardKey;
use crate::model::{insert_rows, rows_per_statement, Model};
use crate::router::CollegeDb;
use crate::value::Value;

/// Inserts many rows: grouped by owner shard, chunked to stay within D1's 100 bound parameters
/// per statement, and written to each shard in one transaction (all of that shard's rows or
/// none). Returns the number of rows inserted.
pub async fn insert_many<M: Model, B: Backend>(db: &CollegeDb<B>, rows: &[M]) -> Result<usize> {
    let write = db.strategies(M::STRATEGY).write;
    let mut by_shard: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
    for row in rows {
        let values = row.to_values()?;
        let key = row.key().clone().into_key()?;
        let shard = db.place(M::TABLE, &key, write).await?;
        by_shard.entry(shard).or_default().extend(values);
    }
    let width = M::COLUMNS.len();
    let per_statement = rows_per_statement::<M>();
    let full_sql = insert_rows::<M>(per_statement);
    for (shard, values) in by_shard {
        let count = (values.len() / width) as i64;
        let statements: Vec<Statement> = values
            .chunks(per_statement * width)
            .map(|chunk| {
                let n = chunk.len() / width;
                let sql = if n == per_statement {
                    full_sql.clone()
                } else {
                    insert_rows::<M>(n)
                };
                Statement::new(sql, chunk.to_vec())
            })
            .collect();
        db.shard(shard)
            .batch(&statements)
            .await
            .map_err(|e| duplicate_or::<M, B>(db, shard, e))?;
        db.note_rows(shard, M::TABLE, count);
    }
    Ok(rows.len())
}

//! `migrate`: a folder of `0001_name.sql` migrations applied to every shard file of a deployment
//! (standby ones too), each in one transaction with its record (see the library's `migrate`
//! module). A killed or failed run is finished by running it again.

use std::path::Path;
use std::sync::Arc;

use collegedb::migrate::{Applied, Migrations};
use collegedb::Result;

use crate::deployment::Deployment;

/// `collegedb migrate <folder> <migrations> [--status]`.
pub fn migrate(folder: &Path, migrations: &Path, status_only: bool) -> Result<bool> {
    let deployment = Deployment::find(folder)?;
    let migrations = Migrations::from_dir(migrations)?;
    let db = deployment.open_all(None)?;
    let status = pollster::block_on(db.migration_status())?;
    let latest = migrations.latest().unwrap_or(0);
    if status_only {
        for (shard, applied) in &status.shards {
            let pending = migrations
                .list()
                .iter()
                .filter(|m| !applied.contains(&m.version))
                .count();
            match applied.last() {
                Some(version) => println!("{shard}: at version {version}, {pending} pending"),
                None => println!("{shard}: no migration applied, {pending} pending"),
            }
        }
        return Ok(true);
    }
    let hook = Arc::new(|applied: &Applied| {
        println!(
            "[{}/{}] {:04}_{} applied on {}",
            applied.done, applied.total, applied.version, applied.name, applied.shard
        );
    });
    let after = pollster::block_on(db.migrate_with(&migrations, Some(hook)))?;
    if after == status {
        println!("nothing to do: every shard is at version {latest}");
    } else {
        println!("done: {after}");
    }
    Ok(true)
}

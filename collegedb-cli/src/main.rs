//! `collegedb`: the command-line tool for embedded deployments (one SQLite file per shard in a
//! folder).
//!
//! ```text
//! collegedb status <folder>             the stored shard list, rows per table and shard, sizes
//! collegedb verify <folder> [--table T]  the placement fsck; exits 1 if a row is misplaced
//! collegedb adopt <folder> --shards a,b   take over existing <shard>.sqlite files; exits 1 on
//!                                         keys found in two files
//! ```
//!
//! The shard list comes from the folder itself (stored by the first open), so the tool needs no
//! configuration (`adopt` names the shards once). Growth operations (`add-shard`, `drain-shard`,
//! `reassign`) will join
//! these as they are built (docs/growth.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use collegedb::backend::embedded::stored_map;
use collegedb::{CollegeDb, Config, EmbeddedDb};

#[derive(Parser)]
#[command(
    name = "collegedb",
    version,
    about = "Inspect and check an embedded collegedb deployment"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the stored shard list, rows per table and shard, and sizes.
    Status {
        /// The deployment's folder.
        folder: PathBuf,
    },
    /// Check that every row is where the router looks for it, exactly once; exit 1 if not.
    Verify {
        /// The deployment's folder.
        folder: PathBuf,
        /// Check only this table (default: every table with a single-column primary key).
        #[arg(long)]
        table: Option<String>,
    },
    /// Take over existing `<shard>.sqlite` files in the folder: record where every row lives so
    /// that the router finds it. Exit 1 if a key is found in two files (reported, not changed).
    Adopt {
        /// The folder holding one `<shard>.sqlite` file per shard.
        folder: PathBuf,
        /// The shard names, in placement order (comma-separated); stored on first use.
        #[arg(long, value_delimiter = ',', required = true)]
        shards: Vec<String>,
    },
}

fn open(folder: &PathBuf) -> collegedb::Result<(EmbeddedDb, u64)> {
    let Some(stored) = stored_map(folder)? else {
        return Err(collegedb::Error::ConfigInvalid(format!(
            "{} holds no collegedb deployment (no _directory.db)",
            folder.display()
        )));
    };
    let db = CollegeDb::open_embedded(Config::with_shard_names(stored.shards().to_vec()), folder)?;
    Ok((db, stored.version()))
}

fn status(folder: &PathBuf) -> collegedb::Result<()> {
    let (db, version) = open(folder)?;
    println!(
        "shard list (version {version}): {}",
        db.list_known_shards().join(", ")
    );
    let stats = pollster::block_on(db.get_shard_stats())?;
    for shard in stats {
        let tables: Vec<String> = shard
            .tables
            .iter()
            .map(|(table, rows)| format!("{table} {rows}"))
            .collect();
        println!(
            "  {:<20} {:>10} rows {:>12} bytes   {}",
            shard.shard,
            shard.rows,
            shard.size_bytes,
            tables.join(", ")
        );
    }
    let entries = pollster::block_on(collegedb::directory::Directory::count(db.directory()))?;
    println!("directory entries: {entries}");
    Ok(())
}

fn verify(folder: &PathBuf, only: Option<String>) -> collegedb::Result<bool> {
    let (db, _) = open(folder)?;
    let mut clean = true;
    for table in pollster::block_on(db.describe_tables())? {
        if only.as_ref().is_some_and(|t| *t != table.name) {
            continue;
        }
        let Some(key) = table.key_column else {
            println!("{}: skipped (no single-column primary key)", table.name);
            continue;
        };
        let report = pollster::block_on(db.verify_table(&table.name, &key))?;
        println!("{report}");
        clean &= report.is_clean();
    }
    Ok(clean)
}

fn adopt(folder: &PathBuf, shards: Vec<String>) -> collegedb::Result<bool> {
    let db = CollegeDb::open_embedded(Config::with_shard_names(shards), folder)?;
    let report = pollster::block_on(db.adopt())?;
    for table in &report.tables {
        println!(
            "{}: {} rows ({} on their hash shard, {} recorded in the directory), {} conflicts",
            table.table,
            table.rows,
            table.on_hash_shard,
            table.recorded,
            table.conflicts.len()
        );
        for (key, shards) in &table.conflicts {
            println!("  conflict: {key} is in {}", shards.join(" and "));
        }
    }
    for (table, why) in &report.skipped {
        println!("{table}: skipped: {why}");
    }
    Ok(report.tables.iter().all(|t| t.conflicts.is_empty()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Status { folder } => status(&folder).map(|()| true),
        Command::Verify { folder, table } => verify(&folder, table),
        Command::Adopt { folder, shards } => adopt(&folder, shards),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("error [{}]: {error}", error.code());
            ExitCode::from(2)
        }
    }
}

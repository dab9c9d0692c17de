//! `collegedb`: the command-line tool for embedded deployments (one SQLite file per shard in a
//! folder, plus `_directory.db`).
//!
//! ```text
//! collegedb status <folder>               the shard map (version, slots per shard, standby
//!                                         shards), rows per table and shard, sizes, the growth
//!                                         operation in progress (phase, rows, rate, ETA) and
//!                                         the last one finished
//! collegedb verify <folder> [--table T]    the placement fsck; exits 1 if a row is misplaced,
//!                                         or stranded in a standby shard's file
//! collegedb adopt <folder> --shards a,b     take over existing <shard>.sqlite files; exits 1 on
//!                                         keys found in two files
//! collegedb add-shard <folder> <shard>    give a new shard its share of the slots and move
//!                                         their rows onto it, live, with a progress bar
//! collegedb drain-shard <folder> <shard>  move every row off a shard and retire it from the map;
//!                                         exits 1 if its file still holds rows at the end
//! collegedb reassign <folder> <table> <key> <shard> [--int]
//!                                         move one key's row to another shard, live
//! collegedb resume <folder>               finish an interrupted add-shard, drain-shard or
//!                                         reassign
//! collegedb migrate <folder> <migrations> [--status]
//!                                         apply a folder of 0001_name.sql migrations to every
//!                                         shard, each in one transaction; --status: where each
//!                                         shard stands
//! collegedb health <folder> [--timeout-ms N]
//!                                         probe every shard, the directory and the
//!                                         coordinator, each within a time bound; exits 1 if
//!                                         one fails
//! collegedb dashboard <folder> [--port N]  serve the HTML dashboard (shards, rows, fill against
//!                                         D1's 10 GB, health, moves, migrations, errors) and
//!                                         its JSON on 127.0.0.1 until stopped (Ctrl-C)
//! ```
//!
//! The tool needs no configuration: the shard map is stored in the folder, and every other
//! `<shard>.sqlite` file there is a standby shard (configured, owning no slots). `adopt` names the
//! shards once. Growth operations run while applications keep reading and writing; every step is
//! journaled, so a killed run is finished by `resume` (or by running the same command again), and
//! no other operation starts until then. See the library's `growth` module and docs/growth.md.
//!
//! Exit codes: 0 done (including "nothing to do"); 1 `verify` or `adopt` found a problem, `health`
//! a failing component, or a drained shard's file still holds rows (so `drain-shard && rm` cannot
//! lose them); 2 an error (printed as `error [CODE]: message`) or bad usage.

mod dashboard;
mod deployment;
mod growth;
mod migrate;
mod progress;
mod report;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use collegedb::{CollegeDb, Config, EmbeddedDb};

use deployment::Deployment;

#[derive(Parser)]
#[command(
    name = "collegedb",
    version,
    about = "Inspect, check and grow an embedded collegedb deployment"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the shard map (version, slots per shard, standby shards), rows per table and shard,
    /// sizes, and the growth operation in progress and the last one finished.
    Status {
        /// The deployment's folder.
        folder: PathBuf,
    },
    /// Check that every row is where the router looks for it, exactly once, and that standby
    /// shard files hold no rows outside an operation in progress; exit 1 if not.
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
    /// Give a shard (new, or standby) its share of the slots, moving their rows onto it while
    /// the deployment stays live. Does nothing if it already owns slots.
    AddShard {
        /// The deployment's folder.
        folder: PathBuf,
        /// The shard to add; its file `<shard>.sqlite` is created in the folder if missing.
        shard: String,
    },
    /// Move every row off a shard to the others and retire it from the shard map, while the
    /// deployment stays live. Afterwards it can be removed from the configuration. Exits 1 if
    /// its file still holds rows at the end (keep the file).
    DrainShard {
        /// The deployment's folder.
        folder: PathBuf,
        /// The shard to drain.
        shard: String,
    },
    /// Move one key's row of one table to another shard of the map and record it in the
    /// directory, while the deployment stays live (its writers pause for milliseconds).
    Reassign {
        /// The deployment's folder.
        folder: PathBuf,
        /// The table.
        table: String,
        /// The key (text, unless --int).
        key: String,
        /// The shard it moves to.
        shard: String,
        /// The key is an INTEGER.
        #[arg(long)]
        int: bool,
    },
    /// Apply a folder of `0001_name.sql` migrations to every shard (standby ones too), each
    /// migration in one transaction with its record; run again after a failure or a kill.
    Migrate {
        /// The deployment's folder.
        folder: PathBuf,
        /// The folder of migrations.
        migrations: PathBuf,
        /// Only show where each shard stands.
        #[arg(long)]
        status: bool,
    },
    /// Finish an interrupted add-shard, drain-shard or reassign from its journal.
    Resume {
        /// The deployment's folder.
        folder: PathBuf,
    },
    /// Probe every shard of the map, the directory and the coordinator, each within a time
    /// bound, and print one line per component; exit 1 if one fails.
    Health {
        /// The deployment's folder.
        folder: PathBuf,
        /// The time bound of each probe, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Serve the dashboard page and its JSON (`/dashboard.json`, `/health.json`,
    /// `/metrics.json`) on 127.0.0.1, reading the shards anew on every request, until stopped.
    Dashboard {
        /// The deployment's folder.
        folder: PathBuf,
        /// The port (0: any free port; the URL is printed).
        #[arg(long, default_value_t = 8787)]
        port: u16,
    },
}

fn verify(folder: &Path, only: Option<String>) -> collegedb::Result<bool> {
    let deployment = Deployment::find(folder)?;
    let mut db = deployment.open_map()?;
    let mut clean = match verify_tables(&db, only.as_deref()) {
        // A directory entry names a shard outside the map (a standby file): check again with
        // every shard file configured. The directory holds entries, so the library keeps the
        // stored map as it is.
        Err(collegedb::Error::DirectoryInconsistent(why)) => {
            println!("{why}: checking again with every shard file of the folder");
            db = deployment.open_all(None)?;
            verify_tables(&db, only.as_deref())?
        }
        other => other?,
    };
    // The router reads the map's shards only: a row in a standby file is reached by no route,
    // unless the operation in progress is moving it.
    let growth = pollster::block_on(db.growth_status())?;
    let moving: Vec<&str> = growth
        .running
        .iter()
        .flat_map(|job| &job.transfers)
        .flat_map(|t| [t.from.as_str(), t.to.as_str()])
        .collect();
    for name in deployment
        .files
        .iter()
        .filter(|name| !growth.map.contains(name))
    {
        let held: Vec<String> = deployment::peek(&deployment.file_of(name))?
            .tables
            .into_iter()
            .filter(|(table, rows)| *rows > 0 && only.as_ref().is_none_or(|t| t == table))
            .map(|(table, rows)| format!("{table} {rows}"))
            .collect();
        if held.is_empty() {
            continue;
        }
        if moving.contains(&name.as_str()) {
            println!(
                "standby shard {name}: rows in flight for the operation in progress ({})",
                held.join(", ")
            );
        } else {
            println!(
                "standby shard {name}: rows that no route reaches ({}): it owns no slots\n  NOT CLEAN",
                held.join(", ")
            );
            clean = false;
        }
    }
    Ok(clean)
}

/// Verifies every table (or `only`), printing each report; whether all are clean.
fn verify_tables(db: &EmbeddedDb, only: Option<&str>) -> collegedb::Result<bool> {
    let mut clean = true;
    for table in pollster::block_on(db.describe_tables())? {
        if only.is_some_and(|t| t != table.name) {
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

fn adopt(folder: &Path, shards: Vec<String>) -> collegedb::Result<bool> {
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
        Command::Status { folder } => status::status(&folder).map(|()| true),
        Command::Verify { folder, table } => verify(&folder, table),
        Command::Adopt { folder, shards } => adopt(&folder, shards),
        Command::AddShard { folder, shard } => growth::add_shard(&folder, &shard),
        Command::DrainShard { folder, shard } => growth::drain_shard(&folder, &shard),
        Command::Reassign {
            folder,
            table,
            key,
            shard,
            int,
        } => growth::reassign(&folder, &table, &key, int, &shard),
        Command::Resume { folder } => growth::resume(&folder),
        Command::Health { folder, timeout_ms } => {
            dashboard::health(&folder, std::time::Duration::from_millis(timeout_ms))
        }
        Command::Dashboard { folder, port } => dashboard::serve(&folder, port),
        Command::Migrate {
            folder,
            migrations,
            status,
        } => migrate::migrate(&folder, &migrations, status),
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

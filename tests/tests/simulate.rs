//! `collegedb::simulate` around the real embedded backend: a fixed delay per call, an outage
//! that refuses every call without touching the files, and flaky calls that may have been
//! applied when they report failure. Rows are counted in the shard files with rusqlite.

use std::time::{Duration, Instant};

use collegedb::backend::embedded::{self, SqliteShard};
use collegedb::directory::Directory;
use collegedb::simulate::{Fault, Simulated, Simulation};
use collegedb::{CollegeDb, Config, Embedded};
use collegedb_tests::{rows_per_shard, User};
use pollster::block_on;

const SHARDS: usize = 3;

fn open(dir: &std::path::Path, simulation: &Simulation) -> CollegeDb<Simulated<Embedded>> {
    let names: Vec<String> = (0..SHARDS).map(|i| format!("s{i}")).collect();
    let options = Default::default();
    let (directory, coordinator) = embedded::open_directory(dir, &options).unwrap();
    let shards = names
        .iter()
        .map(|name| SqliteShard::open(dir.join(format!("{name}.sqlite")), name, &options).unwrap())
        .collect();
    simulation
        .open(
            Config::with_shard_names(names),
            shards,
            directory,
            coordinator,
        )
        .unwrap()
}

fn total(dir: &std::path::Path) -> i64 {
    rows_per_shard(dir, SHARDS, "users").iter().sum()
}

#[test]
fn every_call_waits_the_simulated_distance() {
    let dir = tempfile::tempdir().unwrap();
    let simulation = Simulation::new(Duration::from_millis(30));
    let db = open(dir.path(), &simulation);
    block_on(User::create_table(&db)).unwrap();
    block_on(User::insert(&db, &User::new("ada"))).unwrap();
    // A find by a hash-placed key is one call: it cannot answer sooner than one delay.
    let started = Instant::now();
    assert_eq!(
        block_on(User::find(&db, "ada")).unwrap(),
        Some(User::new("ada"))
    );
    assert!(
        started.elapsed() >= simulation.delay(),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_outage_refuses_every_call_and_writes_nothing_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let simulation = Simulation::new(Duration::ZERO);
    let db = open(dir.path(), &simulation);
    block_on(User::create_table(&db)).unwrap();
    simulation.switch().set(Fault::Down);
    for id in ["a", "b", "c"] {
        let error = block_on(User::insert(&db, &User::new(id))).unwrap_err();
        assert!(error.is_retryable(), "{error}");
        assert_eq!(error.code(), "SHARD_UNAVAILABLE", "{error}");
    }
    // The directory and the coordinator are down too.
    let key = collegedb::Key::Text("a".into());
    let error = block_on(db.directory().lookup("users", &key)).unwrap_err();
    assert!(error.is_retryable(), "{error}");
    let health = block_on(db.health());
    assert!(!health.ok);
    assert_eq!(health.failing().count(), SHARDS + 2, "{health:?}");
    assert_eq!(total(dir.path()), 0, "nothing reached the files");
    simulation.switch().set(Fault::Up);
    for id in ["a", "b", "c"] {
        block_on(User::insert(&db, &User::new(id))).unwrap();
    }
    assert_eq!(total(dir.path()), 3);
}

#[test]
fn flaky_calls_may_apply_what_they_report_failed_and_idempotent_retries_converge() {
    let dir = tempfile::tempdir().unwrap();
    let simulation = Simulation::new(Duration::ZERO);
    let db = open(dir.path(), &simulation);
    block_on(User::create_table(&db)).unwrap();
    simulation.switch().set(Fault::Flaky { per_mille: 400 });
    let (mut failures, mut applied_anyway) = (0, 0);
    for i in 0..60 {
        let user = User::new(format!("u{i}"));
        let mut tries = 0;
        loop {
            tries += 1;
            match block_on(User::upsert(&db, &user)) {
                Ok(()) => break,
                Err(error) => {
                    assert!(error.is_retryable(), "{error}");
                    failures += 1;
                    if total(dir.path()) > i {
                        applied_anyway += 1;
                    }
                }
            }
            assert!(tries < 100, "u{i} never went through");
        }
        assert_eq!(total(dir.path()), i + 1, "u{i} is there exactly once");
    }
    assert!(
        failures > 0 && applied_anyway > 0,
        "{failures} failures, {applied_anyway} applied anyway"
    );
    simulation.switch().set(Fault::Up);
    for i in 0..60 {
        let id = format!("u{i}");
        assert!(block_on(User::find(&db, id.as_str())).unwrap().is_some());
    }
}

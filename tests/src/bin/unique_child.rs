//! A child process for the crash test of unique lookups (`tests/tests/unique_kill.rs`): runs a
//! deterministic pseudo-random sequence of `Account` writes (insert, update that changes the
//! email, the handle or both, upsert, delete) on an embedded database of three shards, so that
//! the test can kill it with SIGKILL at any point and then inspect the files.
//!
//! ```text
//! unique-child <folder> <seed> <ops> [<pause-after>]
//! ```
//!
//! The database is opened in `<folder>` (shards `s0`..`s2`, a unique lease of [`LEASE_MS`] so
//! that orphans of a killed run are taken over within the test) and the `accounts` table is
//! created. Then `<ops>` operations are drawn from `<seed>` (xorshift64*) over small pools
//! ([`IDS`] ids, [`EMAILS`] emails, [`HANDLES`] handles), so that taken values
//! (`DUPLICATE_KEY`) and orphan takeovers are frequent. Before operation `n` (counted from 0) the
//! child prints one of
//!
//! ```text
//! op <n> insert <id> <email> <handle> <name>
//! op <n> update <id> <email> <handle> <name>
//! op <n> upsert <id> <email> <handle> <name>
//! op <n> delete <id>
//! ```
//!
//! (the whole row it writes; an update reads the current row first and changes its email, its
//! handle or both), and after it `ack <n> ok` or `ack <n> err <code>`. Every line is flushed at
//! once. After the last operation it prints `done <ops>`. With `<pause-after>` = `k` it prints
//! `paused <k>` after `k` acknowledged operations (before operation `k`) and blocks until its
//! stdin closes (then exits with status 3): the test kills it there, between two operations.

use std::io::{Read, Write};

use collegedb_tests::{open_with, Account};

/// The unique lease of the child, in milliseconds: short, so that pending orphans left by a
/// killed run are taken over after a short wait.
pub const LEASE_MS: u64 = 150;
/// Ids are drawn from `0..IDS`.
pub const IDS: u64 = 24;
/// Emails are `e<k>@x.test`, `k` in `0..EMAILS`.
pub const EMAILS: u64 = 16;
/// Handles are `h<k>`, `k` in `0..HANDLES`.
pub const HANDLES: u64 = 16;

/// xorshift64*, seeded through a splitmix step so that small seeds differ at once.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 32) % n
    }
}

fn email(rng: &mut Rng) -> String {
    format!("e{}@x.test", rng.below(EMAILS))
}

fn handle(rng: &mut Rng) -> String {
    format!("h{}", rng.below(HANDLES))
}

fn say(line: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("write stdout");
    out.flush().expect("flush stdout");
}

fn row_text(row: &Account) -> String {
    format!("{} {} {} {}", row.id, row.email, row.handle, row.name)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: unique-child <folder> <seed> <ops> [<pause-after>]";
    let (folder, seed, ops, pause) = match args.as_slice() {
        [_, folder, seed, ops] => (folder, seed, ops, None),
        [_, folder, seed, ops, pause] => (folder, seed, ops, Some(pause)),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let seed: u64 = seed.parse().expect("seed");
    let ops: u64 = ops.parse().expect("operation count");
    let pause: Option<u64> = pause.map(|p| p.parse().expect("pause-after"));

    let db = open_with(std::path::Path::new(folder), 3, |mut config| {
        config.unique_lease_ms = LEASE_MS;
        config
    });
    pollster::block_on(Account::create_table(&db)).expect("create table");

    let mut rng = Rng::new(seed);
    for n in 0..ops {
        if pause == Some(n) {
            say(format_args!("paused {n}"));
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            std::process::exit(3);
        }
        let id = rng.below(IDS) as i64;
        let name = format!("n{seed}.{n}");
        let roll = rng.below(100);
        let result = if roll < 30 {
            let row = Account {
                id,
                email: email(&mut rng),
                handle: handle(&mut rng),
                name,
            };
            say(format_args!("op {n} insert {}", row_text(&row)));
            pollster::block_on(Account::insert(&db, &row))
        } else if roll < 60 {
            let current = pollster::block_on(Account::find(&db, id)).expect("read the row");
            let mut row = current.unwrap_or_else(|| Account {
                id,
                email: email(&mut rng),
                handle: handle(&mut rng),
                name: String::new(),
            });
            match rng.below(3) {
                0 => row.email = email(&mut rng),
                1 => row.handle = handle(&mut rng),
                _ => {
                    row.email = email(&mut rng);
                    row.handle = handle(&mut rng);
                }
            }
            row.name = name;
            say(format_args!("op {n} update {}", row_text(&row)));
            pollster::block_on(Account::update(&db, &row))
        } else if roll < 80 {
            let row = Account {
                id,
                email: email(&mut rng),
                handle: handle(&mut rng),
                name,
            };
            say(format_args!("op {n} upsert {}", row_text(&row)));
            pollster::block_on(Account::upsert(&db, &row))
        } else {
            say(format_args!("op {n} delete {id}"));
            pollster::block_on(Account::delete(&db, id)).map(drop)
        };
        match result {
            Ok(()) => say(format_args!("ack {n} ok")),
            Err(error) => say(format_args!("ack {n} err {}", error.code())),
        }
    }
    say(format_args!("done {ops}"));
}

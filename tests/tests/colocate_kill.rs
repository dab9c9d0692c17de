//! Crash safety of moves of colocated tables on real SQLite files. A child process
//! (`growth-child`, unchanged: it finds the colocated tables in the shards' registry) runs
//! `add_shard`, `drain_shard` or `reassign` on a deployment of `users` (hash) with `posts`
//! colocated with them, and `notes` (round-robin, placed by the directory) with `lines`
//! colocated with them, and is killed with SIGKILL mid-operation, then run again to resume:
//!
//! * groups of every size: none, a few rows, and a group larger than the child's page of 50
//!   (120 rows), which each move carries;
//! * `add_shard` and `drain_shard` are killed at exact journaled steps of every phase (the child
//!   blocks in the step hook until it is killed), chosen from the trace of an uninterrupted run
//!   on a copy of the same deployment, right after a step while it runs, and "anywhere": on fresh
//!   copies of the deployment, at a fraction of the uninterrupted run's duration;
//! * the drained deployment has an author reassigned onto the drained shard beforehand, so the
//!   drain's relocation carries a hash-scoped group as well as the notes' lines;
//! * `reassign` of an author with posts is killed after each of its steps, and at the end.
//!
//! While the child is blocked, a handle opened before the operation reads every group not frozen
//! by the move (`query_for`, pinned to one shard) and finds it whole, updates, inserts and
//! deletes rows of moving groups, and `verify_table` is clean. After every kill, read from the
//! files with rusqlite: no row is lost (each is on some file with its last content, none on
//! three), and the shard that owns each parent key (stored map and directory entries) holds the
//! parent row and its whole group. After each operation: every row exactly once, on the file of
//! its parent row, with its content; `verify_table` is clean for all four tables; running the
//! operation again changes nothing.
//!
//! `COLLEGEDB_KILL_COLOCATE_ROWS` sets the number of users and of notes (default 300; posts and
//! lines are about twice as many). Larger values give each phase more pages and take longer.

mod kill_support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::time::Duration;

use collegedb::growth::{Job, Operation, Phase, Transfer};
use collegedb::model::Model;
use collegedb::slots::{slot_of, ShardMap};
use collegedb::{crud, CollegeDb, Embedded, Key};
use collegedb_tests::{Line, Note, Post, User};
use kill_support::{
    assert_again_changes_nothing, assert_drained, assert_phases_covered, copy_folder, describe,
    directory_entries, env_rows, exactly_once, few, grow_with_kills, held_twice, journal,
    nothing_lost, parse_step, report, run_to_end, snapshot, stored_map, ChildProcess, Deployed,
    FileRow, Kill, Site, Stats, PHASES,
};
use pollster::block_on;
use rusqlite::types::Value as SqlValue;

/// `growth-child`'s rows per page: the big groups are larger.
const PAGE_ROWS: usize = 50;

/// The size of the big groups.
const BIG: usize = 120;

/// Users and notes: `COLLEGEDB_KILL_COLOCATE_ROWS` overrides the quick default.
fn rows() -> usize {
    env_rows("COLLEGEDB_KILL_COLOCATE_ROWS", 300)
}

// ---------------------------------------------------------------------------------------------
// The tables, and their rows in the files, read with rusqlite only.

/// A table under test: `route` is the column holding the scope's key (a parent's own key),
/// `id` the rest of the row's identity.
#[derive(Debug, Clone, Copy)]
struct Spec {
    table: &'static str,
    route: &'static str,
    id: &'static str,
    scope: &'static str,
}

impl Spec {
    /// A parent table, keyed by `id`: the scope of its own key.
    const fn parent(table: &'static str) -> Spec {
        Spec {
            table,
            route: "id",
            id: "id",
            scope: table,
        }
    }

    /// A table colocated with `parent`: `route` holds the parent's key, `id` the row's own.
    const fn child(
        table: &'static str,
        route: &'static str,
        id: &'static str,
        parent: Spec,
    ) -> Spec {
        Spec {
            table,
            route,
            id,
            scope: parent.table,
        }
    }
}

const USERS: Spec = Spec::parent("users");
const POSTS: Spec = Spec::child("posts", "author", "id", USERS);
const NOTES: Spec = Spec::parent("notes");
const LINES: Spec = Spec::child("lines", "note", "line", NOTES);
const SPECS: [Spec; 4] = [USERS, POSTS, NOTES, LINES];

/// A row's identity as text: `(route, id)` (both the key for a parent table).
type RowId = (String, String);
/// The copies of each row of a table in the files: `(shard, row)`.
type Held = kill_support::Held<RowId>;
/// The rows every table must hold.
type Expected = BTreeMap<&'static str, BTreeMap<RowId, FileRow>>;

/// Every row of `spec`'s table in the files of `shards` (those that exist and have the table):
/// `(identity, shard, row)`.
fn file_rows(dir: &Path, shards: &[&str], spec: Spec) -> Vec<(RowId, String, FileRow)> {
    kill_support::file_rows(dir, shards, spec.table, &[spec.route, spec.id])
        .into_iter()
        .map(|(ids, shard, row)| {
            let [route, id]: [String; 2] = ids.try_into().expect("two key columns");
            ((route, id), shard, row)
        })
        .collect()
}

/// The rows of every table, by identity, with the shards holding each copy.
fn held(dir: &Path, shards: &[&str]) -> BTreeMap<&'static str, Held> {
    SPECS
        .iter()
        .map(|spec| {
            (
                spec.table,
                kill_support::held(file_rows(dir, shards, *spec)),
            )
        })
        .collect()
}

fn post_row(post: &Post) -> FileRow {
    vec![
        ("author".into(), SqlValue::Text(post.author.clone())),
        ("id".into(), SqlValue::Integer(post.id)),
        ("title".into(), SqlValue::Text(post.title.clone())),
    ]
}

fn line_row(line: &Line) -> FileRow {
    vec![
        ("note".into(), SqlValue::Text(line.note.clone())),
        ("line".into(), SqlValue::Integer(i64::from(line.line))),
        ("text".into(), SqlValue::Text(line.text.clone())),
    ]
}

/// The stored shard map and the directory entries, read from the directory file by hand: where
/// each parent key (and so its group) is owned at this instant.
struct Placement {
    map: ShardMap,
    entries: BTreeMap<(String, String), String>,
}

impl Placement {
    fn read(dir: &Path) -> Self {
        Placement {
            map: stored_map(dir),
            entries: directory_entries(dir),
        }
    }

    fn entry(&self, scope: &str, key: &str) -> Option<&str> {
        self.entries
            .get(&(scope.to_owned(), key.to_owned()))
            .map(String::as_str)
    }

    /// The shard owning `key` of `scope`: its directory entry, else its slot's owner.
    fn owner(&self, scope: &str, key: &str) -> String {
        match self.entry(scope, key) {
            Some(shard) => shard.to_owned(),
            None => self.map.owner(slot_of(&text_key(key))).to_owned(),
        }
    }
}

fn text_key(key: &str) -> Key {
    Key::text(key).expect("a text key")
}

/// Whether `transfer` of `job` moves the group of `key` of `scope`.
fn moves(job: &Job, transfer: &Transfer, placement: &Placement, scope: &str, key: &str) -> bool {
    if transfer.is_reassignment() {
        matches!(&job.operation, Operation::Reassign { table, key: k, .. }
            if table == scope && *k == text_key(key))
    } else if transfer.is_relocation() {
        placement.entry(scope, key) == Some(transfer.from.as_str())
    } else {
        placement.entry(scope, key).is_none() && transfer.slots.contains(&slot_of(&text_key(key)))
    }
}

/// The journal and its current transfer if that transfer has frozen the moving keys (their
/// statements wait on the giving shard, and a reassignment's on the receiving one too).
fn frozen(job: Option<&Job>) -> Option<(&Job, &Transfer)> {
    let job = job?;
    let t = job.transfers.get(job.current)?;
    let is_frozen = if t.is_reassignment() {
        matches!(t.phase, Phase::Copy | Phase::Switch | Phase::Delete)
    } else {
        matches!(t.phase, Phase::FinalCatchUp | Phase::Switch)
    };
    is_frozen.then_some((job, t))
}

// ---------------------------------------------------------------------------------------------
// A deployment under test.

/// Big groups to seed: `(authors whose slot is in this set, posts)`, and `(notes the directory
/// placed on this shard, lines)`; the first fitting parent of each gets the size.
struct Shape<'a> {
    big_authors: Vec<(&'a HashSet<u16>, usize)>,
    big_notes: Vec<(&'a str, usize)>,
}

/// The groups of the parents of `keys`, rows `row(key, 0..size)`: parent `i` gets `i % modulo`
/// rows (none for every `modulo`-th), except, for each `(fits, size)` of `big`, the first other
/// parent with rows whose key `fits` gets `size`. Returns the rows, parent by parent, and the
/// keys of the parents with a big group.
fn groups<R, F: Fn(&str) -> bool>(
    keys: &[&str],
    modulo: usize,
    big: impl IntoIterator<Item = (F, usize)>,
    row: impl Fn(&str, usize) -> R,
) -> (Vec<R>, Vec<String>) {
    let mut sizes: Vec<usize> = (0..keys.len()).map(|i| i % modulo).collect();
    let mut chosen = Vec::new();
    for (fits, size) in big {
        let i = (0..keys.len())
            .find(|&i| i % modulo != 0 && !chosen.contains(&i) && fits(keys[i]))
            .unwrap_or_else(|| panic!("no parent fits a big group of {size}"));
        sizes[i] = size;
        chosen.push(i);
    }
    let row = &row;
    let rows = keys
        .iter()
        .zip(sizes)
        .flat_map(|(key, size)| (0..size).map(move |j| row(key, j)))
        .collect();
    (rows, chosen.iter().map(|&i| keys[i].to_owned()).collect())
}

/// A deployment of users with posts and notes with lines, and what its files must hold.
struct Deployment {
    site: Site,
    expected: Expected,
    /// The authors and notes seeded with a big group.
    big: Vec<String>,
    /// Writes made through the handle, which also number the rows they insert.
    writes: usize,
    /// Rows deleted through the handle.
    deleted: BTreeSet<(&'static str, RowId)>,
    /// The fractions of the uninterrupted run's duration at which to kill it anywhere.
    anywhere: Vec<f64>,
}

impl Deployment {
    /// Seeds `shards` shards (`s0`...) through the router: `rows` users, author `i` with
    /// `i % 5` posts (none for every fifth), `rows` notes, note `i` with `i % 4` lines, and the
    /// big groups of `shape`; then snapshots the files.
    fn seed(dir: &Path, shards: usize, rows: usize, shape: &Shape) -> Self {
        let site = Site::new(dir, shards);
        let db = site.open();
        let users: Vec<User> = (0..rows)
            .map(|i| User::new(format!("author-{i:05}")))
            .collect();
        let notes: Vec<Note> = (0..rows).map(Note::numbered).collect();
        block_on(async {
            User::create_table(&db).await?;
            Post::create_table(&db).await?;
            Note::create_table(&db).await?;
            Line::create_table(&db).await?;
            User::insert_many(&db, &users).await?;
            Note::insert_many(&db, &notes).await?;
            Ok::<_, collegedb::Error>(())
        })
        .expect("seed parents");
        let placement = &Placement::read(dir);
        let authors: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
        let (posts, mut big) = groups(
            &authors,
            5,
            shape.big_authors.iter().map(|&(slots, size)| {
                let fits = move |key: &str| slots.contains(&slot_of(&text_key(key)));
                (fits, size)
            }),
            |author, p| Post {
                author: author.to_owned(),
                id: p as i64,
                title: format!("post {p} of {author}"),
            },
        );
        let note_ids: Vec<&str> = notes.iter().map(|n| n.id.as_str()).collect();
        let (lines, big_notes) = groups(
            &note_ids,
            4,
            shape.big_notes.iter().map(|&(shard, size)| {
                let fits = move |key: &str| placement.entry("notes", key) == Some(shard);
                (fits, size)
            }),
            |note, l| Line {
                note: note.to_owned(),
                line: l as i32,
                text: format!("line {l} of {note}"),
            },
        );
        big.extend(big_notes);
        block_on(async {
            Post::insert_many(&db, &posts).await?;
            Line::insert_many(&db, &lines).await?;
            Ok::<_, collegedb::Error>(())
        })
        .expect("seed groups");
        drop(db);

        let expected: Expected = SPECS
            .iter()
            .map(|spec| {
                (
                    spec.table,
                    snapshot(spec.table, file_rows(dir, &site.names(), *spec)),
                )
            })
            .collect();
        assert_eq!(expected["users"].len(), rows);
        assert_eq!(expected["notes"].len(), rows);
        assert_eq!(expected["posts"].len(), posts.len());
        assert_eq!(expected["lines"].len(), lines.len());
        // The rows this test writes later are built by hand: the same columns as the files'.
        let p = &posts[0];
        assert_eq!(
            expected["posts"][&(p.author.clone(), p.id.to_string())],
            post_row(p)
        );
        let l = &lines[0];
        assert_eq!(
            expected["lines"][&(l.note.clone(), l.line.to_string())],
            line_row(l)
        );
        let d = Deployment {
            site,
            expected,
            big,
            writes: 0,
            deleted: BTreeSet::new(),
            anywhere: Vec::new(),
        };
        d.assert_exactly_once(dir, "seeded");
        d
    }

    /// The keys of the parents of `spec`'s scope (every user or note, with or without a group).
    fn parents(&self, spec: Spec) -> Vec<String> {
        self.expected[spec.scope]
            .keys()
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The expected rows of the group of `key` in `spec`'s table.
    fn group(&self, spec: Spec, key: &str) -> Vec<FileRow> {
        self.expected[spec.table]
            .range((key.to_owned(), String::new())..)
            .take_while(|((route, _), _)| route == key)
            .map(|(_, row)| row.clone())
            .collect()
    }

    /// After a kill: no row is lost (some file holds each with its last content, none is on
    /// three shards or more), and the owner of each parent key holds the parent row and its
    /// whole group as last written, and no other row of it: a row deleted meanwhile may stay
    /// only on another shard (a copy the move has not caught up yet). Returns the rows held
    /// twice, or the problem.
    fn check_nothing_lost(&self, dir: &Path) -> Result<usize, String> {
        let files = held(dir, &self.site.names());
        let placement = Placement::read(dir);
        let mut doubled = 0;
        for spec in SPECS {
            let held = &files[spec.table];
            let expected = &self.expected[spec.table];
            let deleted = |id: &RowId| self.deleted.contains(&(spec.table, id.clone()));
            let found = nothing_lost(held, expected, &deleted);
            let not_on_owner: Vec<(&RowId, String)> = expected
                .iter()
                .filter_map(|(id, row)| {
                    let owner = placement.owner(spec.scope, &id.0);
                    let there = held.get(id).is_some_and(|copies| {
                        copies.iter().any(|(shard, r)| *shard == owner && r == row)
                    });
                    (!there).then_some((id, owner))
                })
                .collect();
            let deleted_on_owner: Vec<(&RowId, String)> = held
                .iter()
                .filter(|(id, _)| !expected.contains_key(*id))
                .filter_map(|(id, copies)| {
                    let owner = placement.owner(spec.scope, &id.0);
                    copies
                        .iter()
                        .any(|(shard, _)| *shard == owner)
                        .then_some((id, owner))
                })
                .collect();
            if !(found.clean && not_on_owner.is_empty() && deleted_on_owner.is_empty()) {
                return Err(format!(
                    "`{}` in the files: {}; (row, owner) not on the owner of its parent key \
                     with its content {}; (row, owner) deleted, yet on the owner {}",
                    spec.table,
                    found.text,
                    few(&not_on_owner),
                    few(&deleted_on_owner)
                ));
            }
            doubled += held_twice(held);
        }
        Ok(doubled)
    }

    /// After an operation: every row exactly once, with its content, on the owner of its
    /// parent key, which is the file of its parent row; no other row. Else the problem.
    fn check_exactly_once(&self, dir: &Path) -> Result<(), String> {
        let files = held(dir, &self.site.names());
        let placement = Placement::read(dir);
        for spec in SPECS {
            let held = &files[spec.table];
            let found = exactly_once(held, &self.expected[spec.table]);
            // The parent row's file: the owner by the map and the directory, for children too.
            let parents = &files[spec.scope];
            let misplaced: Vec<(&RowId, &String, Option<&String>, String)> = held
                .iter()
                .filter_map(|(id, copies)| {
                    let parent = parents
                        .get(&(id.0.clone(), id.0.clone()))
                        .and_then(|copies| copies.first())
                        .map(|(shard, _)| shard);
                    let owner = placement.owner(spec.scope, &id.0);
                    let on = &copies[0].0;
                    (parent != Some(on) || *on != owner).then_some((id, on, parent, owner))
                })
                .collect();
            if !(found.clean && misplaced.is_empty()) {
                return Err(format!(
                    "`{}` in the files: {}; (row, on, parent row on, owner) apart from its \
                     parent or owner {}",
                    spec.table,
                    found.text,
                    few(&misplaced)
                ));
            }
        }
        Ok(())
    }

    /// What the deployment adds to the report.
    fn extra(&self) -> String {
        format!(
            "big groups {:?}; {} rows written while blocked",
            self.big, self.writes
        )
    }

    /// Reads the group of every parent key through `db` (`query_for`, pinned to the group's
    /// owner) and compares it with the expected rows, except groups `skip` says are frozen by
    /// the move this instant. Returns (groups read, groups skipped).
    fn read_groups(
        &self,
        db: &CollegeDb<Embedded>,
        skip: &dyn Fn(Spec, &str) -> bool,
        context: &str,
    ) -> (usize, usize) {
        let (mut read, mut skipped) = (0, 0);
        block_on(async {
            for spec in [POSTS, LINES] {
                for key in self.parents(spec) {
                    if skip(spec, &key) {
                        skipped += 1;
                        continue;
                    }
                    let got: Vec<FileRow> = if spec.table == "posts" {
                        Post::query_for(key.as_str())
                            .all(db)
                            .await
                            .map(|rows| rows.iter().map(post_row).collect())
                    } else {
                        Line::query_for(key.as_str())
                            .all(db)
                            .await
                            .map(|rows| rows.iter().map(line_row).collect())
                    }
                    .unwrap_or_else(|e| panic!("{context}: read the {} of {key}: {e}", spec.table));
                    assert_eq!(
                        by_id(got),
                        by_id(self.group(spec, &key)),
                        "{context}: the {} of {key} read through a handle",
                        spec.table
                    );
                    read += 1;
                }
            }
        });
        (read, skipped)
    }

    /// Through the long-lived handle, in a group of `spec` that `moving` says moves (else any):
    /// updates a row, inserts one, deletes one; the expected rows follow.
    fn write_groups(&mut self, spec: Spec, moving: &dyn Fn(&str) -> bool, label: &str) {
        let parents = self.parents(spec);
        let candidates: Vec<&String> = parents.iter().filter(|k| moving(k)).collect();
        let candidates = if candidates.is_empty() {
            parents.iter().collect()
        } else {
            candidates
        };
        let n = self.writes;
        let text = format!("written at {label}");
        // An insert, possibly into an empty group.
        let key = candidates[n % candidates.len()].clone();
        self.write(spec, &key, None, &text);
        // An update and a delete, in groups with rows.
        let with_rows: Vec<&&String> = candidates
            .iter()
            .filter(|k| !self.group(spec, k).is_empty())
            .collect();
        if !with_rows.is_empty() {
            let key = (*with_rows[(n + 1) % with_rows.len()]).clone();
            let group = self.group(spec, &key);
            let first = integer(&group[0][1].1);
            self.write(spec, &key, Some((first, false)), &text);
            let key = (*with_rows[(n + 2) % with_rows.len()]).clone();
            let group = self.group(spec, &key);
            if group.len() > 1 {
                let last = integer(&group[group.len() - 1][1].1);
                self.write(spec, &key, Some((last, true)), &text);
            }
        }
    }

    /// One write through the long-lived handle: an insert (`None`), an update or a delete of
    /// row `id` of `key`'s group.
    fn write(&mut self, spec: Spec, key: &str, row: Option<(i64, bool)>, text: &str) {
        self.writes += 1;
        let db = self.site.handle();
        let context = format!("{text}: {} of {key} {row:?}", spec.table);
        let (id, file_row) = match row {
            Some((id, true)) => {
                let deleted = if spec.table == "posts" {
                    block_on(Post::delete(db, (key, id)))
                } else {
                    block_on(Line::delete(db, (key, id as i32)))
                };
                assert_eq!(deleted.ok(), Some(true), "{context}: delete");
                self.expected
                    .get_mut(spec.table)
                    .expect("table")
                    .remove(&(key.to_owned(), id.to_string()));
                self.deleted
                    .insert((spec.table, (key.to_owned(), id.to_string())));
                return;
            }
            Some((id, false)) => (id, None),
            None => (10_000 + self.writes as i64, Some(())),
        };
        let insert = file_row.is_some();
        let file_row = if spec.table == "posts" {
            let post = Post {
                author: key.to_owned(),
                id,
                title: text.to_owned(),
            };
            put(db, &post, insert, &context);
            post_row(&post)
        } else {
            let line = Line {
                note: key.to_owned(),
                line: id as i32,
                text: text.to_owned(),
            };
            put(db, &line, insert, &context);
            line_row(&line)
        };
        self.expected
            .get_mut(spec.table)
            .expect("table")
            .insert((key.to_owned(), id.to_string()), file_row);
    }

    /// `verify_table` of every table from a new handle: clean; returns the keys counted as a
    /// second copy of a move in flight.
    fn verify(&self, context: &str) -> u64 {
        let db = self.site.open();
        let mut in_flight = 0;
        for spec in SPECS {
            let report = block_on(db.verify_table(spec.table, spec.route))
                .unwrap_or_else(|e| panic!("{context}: verify `{}`: {e}", spec.table));
            assert!(report.is_clean(), "{context}: {report}");
            in_flight += report.in_flight;
        }
        in_flight
    }

    /// After an operation: `verify_table` is clean, with nothing in flight, and counts every
    /// parent and every group with rows.
    fn verify_finished(&self, context: &str) {
        let db = self.site.open();
        for spec in SPECS {
            let report = block_on(db.verify_table(spec.table, spec.route)).expect("verify");
            assert!(
                report.is_clean() && report.in_flight == 0,
                "{context}: {report}"
            );
            let keys: BTreeSet<&String> = self.expected[spec.table]
                .keys()
                .map(|(route, _)| route)
                .collect();
            assert_eq!(report.rows as usize, keys.len(), "{context}: {report}");
        }
    }
}

/// Inserts (`insert`) or updates `row` through `db`.
fn put<M: Model>(db: &CollegeDb<Embedded>, row: &M, insert: bool, context: &str) {
    let done = if insert {
        block_on(crud::insert(db, row))
    } else {
        block_on(crud::update(db, row))
    };
    done.unwrap_or_else(|e| panic!("{context}: {e}"));
}

/// The rows of a group in the order of their own key (the second column).
fn by_id(mut rows: Vec<FileRow>) -> Vec<FileRow> {
    rows.sort_by_key(|row| match &row[1].1 {
        SqlValue::Integer(i) => *i,
        _ => i64::MIN,
    });
    rows
}

fn integer(value: &SqlValue) -> i64 {
    match value {
        SqlValue::Integer(i) => *i,
        other => panic!("not an integer: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Killing growth.

/// The checks while the child is blocked at a journaled step (`job`: the journal, `None` once
/// the operation finished): reads of every group not frozen, writes to moving groups when
/// nothing is frozen, `verify_table` clean.
fn while_blocked(d: &mut Deployment, job: Option<&Job>, label: &str, stats: &mut Stats) {
    let placement = Placement::read(&d.site.dir);
    let freeze = frozen(job);
    let skip = |spec: Spec, key: &str| -> bool {
        match freeze {
            Some((_, t)) if t.is_reassignment() => {
                // The giver's slot and directory-routed statements, and the receiver's slot.
                let owner = placement.owner(spec.scope, key);
                owner == t.from || owner == t.to
            }
            Some((job, t)) => moves(job, t, &placement, spec.scope, key),
            None => false,
        }
    };
    let (read, skipped) = d.read_groups(d.site.handle(), &skip, label);
    stats.reads += read;
    stats.frozen_skipped += skipped;
    assert!(read > 0, "{label}: nothing was readable");
    if freeze.is_some() {
        assert!(skipped > 0, "{label}: a frozen move froze no group");
    } else {
        let current = job.and_then(|job| job.transfers.get(job.current).map(|t| (job, t)));
        for spec in [POSTS, LINES] {
            let moving = |key: &str| {
                current.is_some_and(|(job, t)| moves(job, t, &placement, spec.scope, key))
            };
            d.write_groups(spec, &moving, label);
        }
    }
    if d.verify(label) > 0 {
        stats.in_flight_points += 1;
    }
}

impl Deployed for Deployment {
    /// The plans kill at exact steps soon after a kill while running, which a late SIGKILL may
    /// have passed.
    const SKIP_PASSED: bool = true;
    const COUNT_RUNNING_COPIES: bool = true;

    fn site(&mut self) -> &mut Site {
        &mut self.site
    }

    /// [`Deployment::check_exactly_once`], panicking.
    fn assert_exactly_once(&self, dir: &Path, context: &str) {
        self.check_exactly_once(dir)
            .unwrap_or_else(|problem| panic!("{context}: {problem}"));
    }

    /// [`Deployment::check_nothing_lost`], panicking.
    fn assert_nothing_lost(&self, dir: &Path, context: &str) -> usize {
        self.check_nothing_lost(dir)
            .unwrap_or_else(|problem| panic!("{context}: {problem}"))
    }

    /// The kills anywhere, on copies.
    fn uninterrupted(&self, _: &Path, op: &str, duration: Duration, stats: &mut Stats) {
        kill_anywhere(self, op, duration, stats);
    }

    fn while_blocked(&mut self, job: Option<&Job>, label: &str, stats: &mut Stats) {
        while_blocked(self, job, label, stats);
    }

    /// Through the router: verify is clean, and the stale handle and a new one read every
    /// group.
    fn finished(&mut self, label: &str) {
        self.verify_finished(label);
        let none = |_: Spec, _: &str| false;
        self.read_groups(&self.site.open(), &none, &format!("{label}, a new handle"));
        self.read_groups(
            self.site.handle(),
            &none,
            &format!("{label}, the handle opened before"),
        );
    }
}

/// Every phase of a transfer, each to be covered by a kill at a journaled step.
fn every_phase() -> Vec<&'static [&'static str]> {
    PHASES.iter().map(std::slice::from_ref).collect()
}

/// Kills of `op` "anywhere": each on a fresh copy of the deployment (as it is now), at a
/// fraction (of `d.anywhere`) of the uninterrupted run's duration, wherever the SIGKILL lands
/// (halved, on another copy, while the run finishes first); then resumed to the end. No row is
/// lost at the kill, every row is there once at the end.
fn kill_anywhere(d: &Deployment, op: &str, duration: Duration, stats: &mut Stats) {
    for &fraction in &d.anywhere {
        let mut fraction = fraction;
        for attempt in 0..4 {
            let copy = tempfile::tempdir().unwrap();
            copy_folder(&d.site.dir, copy.path());
            let child = ChildProcess::spawn(copy.path(), op, &d.site.csv(), None);
            std::thread::sleep(duration.mul_f64(fraction));
            let running = child.kill();
            let job = journal(copy.path(), "growth");
            let at = format!(
                "{} at {:.0}% of {duration:?}: {}",
                if running { "killed" } else { "finished" },
                fraction * 100.0,
                describe(job.as_ref())
            );
            let label = format!("{op} killed anywhere ({at})");
            d.assert_nothing_lost(copy.path(), &label);
            run_to_end(copy.path(), op, &d.site.csv(), None);
            d.assert_exactly_once(copy.path(), &format!("{label}, resumed"));
            if running || attempt == 3 {
                stats.anywhere.push(at);
                break;
            }
            fraction /= 2.0;
        }
    }
}

/// The stored map of a new deployment of `shards` shards `s0`...
fn seeded_map(shards: usize) -> ShardMap {
    let names: Vec<String> = (0..shards).map(|i| format!("s{i}")).collect();
    ShardMap::seed(&names).unwrap()
}

/// The slots each transfer of `plan` moves.
fn slot_sets(plan: &[collegedb::slots::SlotTransfer]) -> Vec<HashSet<u16>> {
    plan.iter()
        .map(|t| t.slots.iter().copied().collect())
        .collect()
}

/// `add_shard` with posts and lines, killed at every phase of its first transfer (which
/// carries a group of 120 posts), in its other transfers (one carrying 51 posts), after it
/// finished, twice right after a step while running, and twice anywhere.
#[test]
fn add_shard_killed_anywhere_keeps_every_group_whole() {
    let dir = tempfile::tempdir().unwrap();
    let sets = slot_sets(&seeded_map(3).plan_add("s3").unwrap());
    let shape = Shape {
        big_authors: vec![(&sets[0], BIG), (&sets[2], PAGE_ROWS + 1)],
        big_notes: vec![("s1", BIG)],
    };
    let mut d = Deployment::seed(dir.path(), 3, rows(), &shape);
    // The new shard is configured beside the others: standby until the move.
    d.site.shards.push("s3".into());
    let plan = Kill::plan(
        "0:Copy:First 0:Copy:Middle 0:Copy:Last 0:CatchUp:First 0:CatchUp:Last 0:Freeze:First \
         0:FinalCatchUp:First 0:FinalCatchUp:Last 0:Switch:First 0:Delete:First 0:Delete:Middle \
         0:Delete:Last 1:Prepare:First running:1:Copy:2 1:Freeze:First running:1:Delete:2 \
         2:Copy:Middle 2:CatchUp:First 2:Switch:First 2:Delete:Middle 2:Delete:Last 3:Done:First \
         3:Done:Last",
    );
    d.anywhere = vec![0.3, 0.7];
    let stats = grow_with_kills(&mut d, "add:s3", &plan);
    report("add_shard s3", &stats, &d.extra());
    assert_phases_covered("add_shard s3", &stats, &every_phase(), 16);
    // The big groups of posts moved whole to the new shard.
    let placement = Placement::read(dir.path());
    for author in &d.big[..2] {
        assert_eq!(placement.owner("users", author), "s3", "{author}");
    }
}

/// `drain_shard` of a middle shard with posts and lines, killed in every phase of its slot
/// transfers (one carrying a group of 120 posts) and of the relocation of its directory-placed
/// rows: notes with their lines (one of 120) and an author reassigned there before the drain,
/// with its posts (more than a page). The drained shard ends empty.
#[test]
fn drain_shard_killed_anywhere_keeps_every_group_whole() {
    let dir = tempfile::tempdir().unwrap();
    let map = seeded_map(4);
    let sets = slot_sets(&map.plan_drain("s1").unwrap());
    let s0: HashSet<u16> = map.slots_of("s0").into_iter().collect();
    let shape = Shape {
        big_authors: vec![(&sets[0], BIG), (&s0, PAGE_ROWS + 10)],
        big_notes: vec![("s1", BIG), ("s2", PAGE_ROWS + 1)],
    };
    let mut d = Deployment::seed(dir.path(), 4, rows(), &shape);
    // An author of s0 with more posts than a page, reassigned onto the shard to drain: the
    // drain's relocation carries it with its posts, by its `users` entry.
    let moved = d.big[1].clone();
    let db = d.site.open();
    block_on(db.reassign("users", moved.as_str(), "s1")).expect("reassign before the drain");
    drop(db);
    assert_eq!(Placement::read(dir.path()).owner("users", &moved), "s1");
    d.assert_exactly_once(dir.path(), "reassigned before the drain");
    let plan = Kill::plan(
        "0:Copy:First 0:Copy:Last 0:CatchUp:First 0:Freeze:First 0:FinalCatchUp:First \
         0:Switch:First 0:Delete:First 0:Delete:Last 1:Prepare:First running:1:Copy:2 \
         2:Freeze:First 2:Delete:First 3:Prepare:First 3:Copy:First 3:Copy:Middle 3:Copy:Last \
         3:CatchUp:First 3:Freeze:First 3:FinalCatchUp:First 3:FinalCatchUp:Last 3:Switch:First \
         3:Switch:Middle running:3:Switch:3 3:Delete:First 3:Delete:Middle 3:Delete:Last \
         4:Done:First 4:Done:Last",
    );
    d.anywhere = vec![0.25, 0.6, 0.9];
    let stats = grow_with_kills(&mut d, "drain:s1", &plan);
    report("drain_shard s1", &stats, &d.extra());
    assert_phases_covered("drain_shard s1", &stats, &every_phase(), 20);
    assert_drained(dir.path(), "s1", &SPECS.map(|spec| spec.table));
}

/// `reassign` of authors with posts (one with 120, one moved back to its hash shard) killed
/// after each of its journaled steps and after it finished, each time run again: the group ends
/// whole on the target with its parent, and between the kill and the resume no row is lost.
#[test]
fn reassign_killed_after_every_step_moves_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let all: HashSet<u16> = (0..collegedb::slots::SLOTS as u16).collect();
    let shape = Shape {
        big_authors: vec![(&all, BIG)],
        big_notes: vec![],
    };
    let mut d = Deployment::seed(dir.path(), 3, rows() / 3, &shape);
    let csv = d.site.csv();
    let big = d.big[0].clone();
    let authors: Vec<String> = d.parents(POSTS);
    let with_posts: Vec<String> = authors
        .iter()
        .filter(|a| **a != big && d.group(POSTS, a).len() > 1)
        .cloned()
        .collect();
    // (author, stop): stop `n` blocks the child after its `n`-th step: Prepare, Freeze, Copy,
    // Switch, Delete, and 6 once the journal is gone.
    let moves_of = [
        (with_posts[0].clone(), 1, false),
        (big.clone(), 2, false),
        (with_posts[1].clone(), 3, false),
        (big.clone(), 4, false),
        (with_posts[0].clone(), 5, true),
        (with_posts[2].clone(), 6, false),
    ];
    let mut points = Vec::new();
    for (author, stop, home) in &moves_of {
        let placement = Placement::read(dir.path());
        let from = placement.owner("users", author);
        let hash = placement.map.owner(slot_of(&text_key(author))).to_owned();
        let to = if *home {
            assert_ne!(
                from, hash,
                "{author} was reassigned away from its hash shard"
            );
            hash
        } else {
            d.site
                .names()
                .into_iter()
                .find(|s| *s != from && *s != hash)
                .expect("a third shard")
                .to_owned()
        };
        let op = format!("reassign:users:{author}:{to}");
        d.site.handle = Some(d.site.open());
        let child = ChildProcess::spawn(dir.path(), &op, &csv, Some(&stop.to_string()));
        let line = child.line();
        let (n, t, p) = parse_step(&line, "step");
        assert_eq!(n, *stop, "{line}");
        let label = format!("{op} killed after step {stop} ({t}, {p})");
        let job = journal(dir.path(), "growth");
        assert_eq!(job.is_some(), *stop < 6, "{label}: the journal");
        let mut stats = Stats::default();
        while_blocked(&mut d, job.as_ref(), &label, &mut stats);
        assert!(child.kill(), "{label}: the child was blocked");
        let copies = d.assert_nothing_lost(dir.path(), &label);
        points.push(format!(
            "{stop}:{t}:{p} ({} posts of {author} {from}->{to}, {copies} rows twice, {} in \
             flight)",
            d.group(POSTS, author).len(),
            stats.in_flight_points
        ));

        // Run again: it resumes from the journal and finishes.
        let lines = run_to_end(dir.path(), &op, &csv, None);
        let label = format!("{label}, resumed");
        d.assert_exactly_once(dir.path(), &label);
        let placement = Placement::read(dir.path());
        assert_eq!(placement.owner("users", author), to, "{label}: {lines:?}");
        let on: BTreeSet<String> = file_rows(dir.path(), &d.site.names(), POSTS)
            .into_iter()
            .filter(|((a, _), _, _)| a == author)
            .map(|(_, shard, _)| shard)
            .collect();
        assert_eq!(
            on,
            BTreeSet::from([to.clone()]),
            "{label}: the posts of {author}"
        );
        assert_again_changes_nothing(&mut d, &op, &label);
        d.finished(&label);
        d.site.handle = None;
    }
    eprintln!(
        "reassign: {} kill points, each resumed: {}; {} rows written while blocked",
        points.len(),
        points.join("; "),
        d.writes
    );
}

/// The file checks themselves fail on files where a row is lost, held twice, stranded away
/// from its parent's shard, or changed, and where a parent row left its group.
#[test]
fn the_file_checks_catch_lost_doubled_stranded_and_changed_rows() {
    let dir = tempfile::tempdir().unwrap();
    let shape = Shape {
        big_authors: vec![],
        big_notes: vec![],
    };
    let d = Deployment::seed(dir.path(), 3, 30, &shape);
    let placement = Placement::read(dir.path());
    let run = |shard: &str, sql: &str, params: &[&dyn rusqlite::ToSql]| {
        rusqlite::Connection::open(dir.path().join(format!("{shard}.sqlite")))
            .unwrap()
            .execute(sql, params)
            .unwrap();
    };
    let both = |lost: bool, once: bool, context: &str| {
        assert_eq!(
            d.check_nothing_lost(dir.path()).is_ok(),
            lost,
            "{context}: nothing lost?"
        );
        assert_eq!(
            d.check_exactly_once(dir.path()).is_ok(),
            once,
            "{context}: exactly once?"
        );
    };
    both(true, true, "as seeded");

    let ((author, id), _) = d.expected["posts"].iter().next().unwrap();
    let id: i64 = id.parse().unwrap();
    let title = format!("post {id} of {author}");
    let owner = placement.owner("users", author);
    let other = ["s0", "s1", "s2"]
        .into_iter()
        .find(|s| *s != owner)
        .unwrap();
    let insert = "INSERT INTO posts (author, id, title) VALUES (?1, ?2, ?3)";
    let delete = "DELETE FROM posts WHERE author = ?1 AND id = ?2";
    // A second copy elsewhere: what a move in flight leaves, not once any more.
    run(other, insert, &[author, &id, &title]);
    both(true, false, "a post on two shards");
    // Only that copy left: stranded away from its parent.
    run(&owner, delete, &[author, &id]);
    both(false, false, "a post away from its author");
    // No copy at all.
    run(other, delete, &[author, &id]);
    both(false, false, "a post lost");
    // Back on its owner with other content.
    run(&owner, insert, &[author, &id, &"changed"]);
    both(false, false, "a post changed");
    run(&owner, delete, &[author, &id]);
    run(&owner, insert, &[author, &id, &title]);
    both(true, true, "restored");
    // A post never written, on its author's shard.
    run(&owner, insert, &[author, &999_i64, &"stray"]);
    both(false, false, "a post never written");
    run(&owner, delete, &[author, &999_i64]);

    // A line moved away from its note's shard.
    let ((note, line), row) = d.expected["lines"].iter().next().unwrap();
    let line: i64 = line.parse().unwrap();
    let text = row[2].1.clone();
    let owner = placement.owner("notes", note);
    let other = ["s0", "s1", "s2"]
        .into_iter()
        .find(|s| *s != owner)
        .unwrap();
    run(
        &owner,
        "DELETE FROM lines WHERE note = ?1 AND line = ?2",
        &[note, &line],
    );
    run(
        other,
        "INSERT INTO lines (note, line, text) VALUES (?1, ?2, ?3)",
        &[note, &line, &text],
    );
    both(false, false, "a line away from its note");
    run(
        other,
        "DELETE FROM lines WHERE note = ?1 AND line = ?2",
        &[note, &line],
    );
    run(
        &owner,
        "INSERT INTO lines (note, line, text) VALUES (?1, ?2, ?3)",
        &[note, &line, &text],
    );
    both(true, true, "restored");

    // An author's row moved away from its posts (and its slot's owner).
    let (author, user) = d.expected["users"]
        .iter()
        .find(|((a, _), _)| !d.group(POSTS, a).is_empty())
        .map(|((a, _), row)| (a.clone(), row.clone()))
        .unwrap();
    let owner = placement.owner("users", &author);
    let other = ["s0", "s1", "s2"]
        .into_iter()
        .find(|s| *s != owner)
        .unwrap();
    run(&owner, "DELETE FROM users WHERE id = ?1", &[&author]);
    let values: Vec<SqlValue> = user.iter().map(|(_, v)| v.clone()).collect();
    run(
        other,
        "INSERT INTO users (id, name, email) VALUES (?1, ?2, ?3)",
        &[&values[0], &values[1], &values[2]],
    );
    both(false, false, "an author away from its posts");
}

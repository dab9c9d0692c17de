//! Typed queries across shards against an oracle: the same query, written by hand in SQL, on
//! one SQLite file holding every row. Random filters, orders, limits and offsets over random
//! data on 1, 3 and 7 shards; hostile values; lists past D1's 100 bound parameters; and proof
//! that a query pinning the key asks its owner only.

mod query_support;

use collegedb::Sharded;
use collegedb_tests::open;
use pollster::block_on;
use query_support::*;
use rusqlite::Connection;

/// Random queries on 1, 3 and 7 shards: rows, order, count and existence equal the oracle's.
#[test]
fn random_queries_match_one_unsharded_table() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    for (shards, seed) in [(1, 11), (3, 12), (7, 13)] {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), shards);
        let rows = people(&mut Random(seed), 400);
        let ids: Vec<i64> = rows.iter().map(|p| p.id).collect();
        load(&db, &rows);
        let conn = oracle(&rows);
        let f = Person::fields();
        let columns = [
            (f.age().asc(), "age ASC"),
            (f.age().desc(), "age DESC"),
            (f.name().asc(), "name ASC"),
            (f.name().desc(), "name DESC"),
            (f.score().asc(), "score ASC"),
            (f.score().desc(), "score DESC"),
            (f.city().desc(), "city DESC"),
            (f.id().desc(), "id DESC"),
        ];
        let pinned = std::cell::Cell::new(0);
        // proptest draws each case: the seed of its filter tree (built by `filter`, which pins
        // keys in some cases), up to two order terms, a limit, an offset and a fan-out bound;
        // a failure is shrunk and reported with its inputs.
        let config = Config {
            cases: 250,
            failure_persistence: None,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(
            config.clone(),
            proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm),
        );
        let cases = (
            any::<u64>(),
            proptest::collection::vec(0..columns.len(), 0..3),
            proptest::option::weighted(0.6, 0usize..30),
            prop_oneof![3 => Just(0usize), 2 => 0usize..20],
            proptest::option::weighted(0.3, 1usize..4),
        );
        let outcome = runner.run(&cases, |(filter_seed, orders, limit, offset, bound)| {
            let case = filter(&mut Random(filter_seed | 1), &ids, 3);
            let mut query = Person::query().filter(case.filter.clone());
            let mut order = Vec::new();
            for &index in &orders {
                let (term, sql) = columns[index];
                query = query.order_by(term);
                order.push(sql);
            }
            if !order.iter().any(|o| o.starts_with("id ")) {
                order.push("id ASC");
            }
            if let Some(n) = limit {
                query = query.limit(n);
            }
            query = query.offset(offset);
            if let Some(k) = bound {
                // Bounded fan-out changes when shards are asked, never the answer.
                query = query.max_concurrency(k);
            }
            let sql = format!(
                "SELECT id FROM people WHERE {} ORDER BY {} LIMIT {} OFFSET {offset}",
                case.sql,
                order.join(", "),
                limit.map_or(-1, |n| n as i64)
            );
            let expected = oracle_ids(&conn, &sql, &case.params);
            let (found, report) = block_on(query.all_with_report(&db))
                .map_err(|e| TestCaseError::fail(format!("on {shards} shards: {e}\n{sql}")))?;
            let found: Vec<i64> = found.iter().map(|p| p.id).collect();
            prop_assert_eq!(&found, &expected, "on {} shards: {}", shards, sql);
            if !report.scattered {
                pinned.set(pinned.get() + 1);
            } else if let Some(n) = limit {
                prop_assert!(
                    report.rows_fetched <= shards * (offset + n),
                    "{:?}: more than N·(offset + limit) rows",
                    report
                );
            }

            let count_sql = format!("SELECT COUNT(*) FROM people WHERE {}", case.sql);
            let expected_count = oracle_ids(&conn, &count_sql, &case.params)[0];
            let count = block_on(Person::query().filter(case.filter.clone()).count(&db))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(count as i64, expected_count, "count: {}", count_sql);
            let exists = block_on(Person::query().filter(case.filter).exists(&db))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(exists, expected_count > 0, "exists: {}", count_sql);
            Ok(())
        });
        if let Err(failure) = outcome {
            panic!("on {shards} shards: {failure}");
        }
        assert!(pinned.get() > 10, "only {} pinned cases", pinned.get());
    }
}

/// `first` is the first row of the order; an unfiltered query returns every row in key order.
#[test]
fn first_and_unfiltered_queries() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    let rows = people(&mut Random(5), 120);
    load(&db, &rows);
    let f = Person::fields();
    block_on(async {
        let all = Person::query().all(&db).await.unwrap();
        let mut ids: Vec<i64> = rows.iter().map(|p| p.id).collect();
        ids.sort();
        assert_eq!(all.iter().map(|p| p.id).collect::<Vec<_>>(), ids);
        let oldest = Person::query()
            .order_by(f.age().desc())
            .first(&db)
            .await
            .unwrap()
            .unwrap();
        let max_age = rows.iter().map(|p| p.age).max().unwrap();
        let expected = rows
            .iter()
            .filter(|p| p.age == max_age)
            .map(|p| p.id)
            .min()
            .unwrap();
        assert_eq!(oldest.id, expected);
        assert_eq!(Person::query().limit(0).all(&db).await.unwrap(), vec![]);
        assert_eq!(Person::query().count(&db).await.unwrap(), 120);
    });
}

/// A query that pins the key runs on the key's owner only: with the table dropped on every
/// other shard it still answers, while a scattered query fails (a query fails if any shard it
/// needs fails).
#[test]
fn a_pinned_query_asks_the_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    let rows = people(&mut Random(9), 60);
    load(&db, &rows);
    let target = &rows[17];
    let f = Person::fields();
    block_on(async {
        let owner = Person::locate(&db, target.id).await.unwrap().unwrap();
        for shard in db.list_known_shards() {
            if shard != owner {
                db.run_shard(shard, "DROP TABLE people", &[]).await.unwrap();
            }
        }
        let (found, report) = Person::query()
            .filter(f.id().eq(target.id).and(f.age().ge(0)))
            .all_with_report(&db)
            .await
            .unwrap();
        assert_eq!(found, vec![target.clone()]);
        assert!(!report.scattered);
        assert_eq!(report.shards, 1);
        let count = Person::query()
            .filter(f.id().is_in([target.id, target.id]))
            .count(&db)
            .await
            .unwrap();
        assert_eq!(count, 1);

        let err = Person::query()
            .filter(f.age().ge(0))
            .all(&db)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "QUERY_FAILED", "{err}");
        assert!(err.to_string().contains("no such table"), "{err}");
        let err = Person::query()
            .filter(f.id().eq(target.id).or(f.age().eq(1)))
            .count(&db)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "QUERY_FAILED", "{err}");

        // Partial mode: the owner's rows, and the two failed shards by name.
        let partial = Person::query()
            .filter(f.age().ge(0))
            .order_by(f.age().desc())
            .all_partial(&db)
            .await
            .unwrap();
        let mut failed: Vec<&str> = partial.failed.iter().map(|(s, _)| s.as_str()).collect();
        failed.sort();
        let mut others: Vec<&str> = db
            .list_known_shards()
            .into_iter()
            .filter(|s| *s != owner)
            .collect();
        others.sort();
        assert_eq!(failed, others);
        let on_owner: i64 = Connection::open(dir.path().join(format!("{owner}.sqlite")))
            .unwrap()
            .query_row("SELECT COUNT(*) FROM people", [], |r| r.get(0))
            .unwrap();
        assert_eq!(partial.rows.len() as i64, on_owner);
        assert!(partial.rows.windows(2).all(|w| w[0].age >= w[1].age));
        assert!(partial.rows.contains(target));
        let err = Person::query()
            .all_partial(&db)
            .await
            .unwrap()
            .complete()
            .unwrap_err();
        assert_eq!(err.code(), "QUERY_FAILED", "{err}");
    });
}

/// Lists longer than D1's 100 bound parameters: pinned keys and a non-key list.
#[test]
fn lists_past_one_hundred_values() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    let rows = people(&mut Random(21), 500);
    load(&db, &rows);
    let f = Person::fields();
    block_on(async {
        let keys: Vec<i64> = rows
            .iter()
            .step_by(2)
            .map(|p| p.id)
            .chain([999_999])
            .collect();
        assert!(keys.len() > 200);
        let (found, report) = Person::query()
            .filter(f.id().is_in(keys.clone()))
            .all_with_report(&db)
            .await
            .unwrap();
        assert!(!report.scattered);
        let mut expected: Vec<i64> = keys[..keys.len() - 1].to_vec();
        expected.sort();
        assert_eq!(found.iter().map(|p| p.id).collect::<Vec<_>>(), expected);

        let names: Vec<String> = rows.iter().take(150).map(|p| p.name.clone()).collect();
        let count = Person::query()
            .filter(f.name().is_in(names.clone()))
            .count(&db)
            .await
            .unwrap();
        let expected = rows.iter().filter(|p| names.contains(&p.name)).count();
        assert_eq!(count as usize, expected);
        let outside = Person::query()
            .filter(f.name().not_in(names.clone()))
            .count(&db)
            .await
            .unwrap();
        assert_eq!(outside as usize, rows.len() - expected);

        // Too many small terms for one statement: a typed error, not a failed statement.
        let mut many = f.age().eq(0);
        for i in 1..120 {
            many = many.or(f.age().eq(i));
        }
        let err = Person::query().filter(many).all(&db).await.unwrap_err();
        assert_eq!(err.code(), "TOO_MANY_PARAMETERS", "{err}");
    });
}

/// Quotes, wildcards, the escape character, NUL and a 0.95 MB string (stored twice in its row,
/// which stays within D1's 2 MB per row) are values, never SQL.
#[test]
fn hostile_values_are_bound_not_spliced() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    let big = "x".repeat(950_000);
    let names = [
        "'; DROP TABLE people; --".to_owned(),
        "\" OR 1=1 --".to_owned(),
        "100%".to_owned(),
        "1000".to_owned(),
        "a_b".to_owned(),
        "axb".to_owned(),
        "back\\slash".to_owned(),
        "nul\0inside".to_owned(),
        "nul".to_owned(),
        big.clone(),
    ];
    let rows: Vec<Person> = names
        .iter()
        .enumerate()
        .map(|(i, name)| Person {
            id: i as i64,
            name: name.clone(),
            age: i as i64,
            score: None,
            city: Some(name.clone()),
        })
        .collect();
    load(&db, &rows);
    let f = Person::fields();
    let ids = |people: Vec<Person>| people.into_iter().map(|p| p.id).collect::<Vec<_>>();
    block_on(async {
        for (i, name) in names.iter().enumerate() {
            let found = Person::query()
                .filter(f.name().eq(name.as_str()))
                .all(&db)
                .await
                .unwrap();
            assert_eq!(ids(found), vec![i as i64], "eq {name:?}");
            let found = Person::query()
                .filter(f.city().eq(name.as_str()).and(f.id().eq(i as i64)))
                .all(&db)
                .await
                .unwrap();
            assert_eq!(ids(found), vec![i as i64], "pinned eq {name:?}");
        }
        let contains = |text: &'static str| {
            let db = &db;
            async move {
                ids(Person::query()
                    .filter(f.name().contains(text))
                    .all(db)
                    .await
                    .unwrap())
            }
        };
        assert_eq!(contains("%").await, vec![2]);
        assert_eq!(contains("_").await, vec![4]);
        assert_eq!(contains("\\").await, vec![6]);
        assert_eq!(contains("'").await, vec![0]);
        assert_eq!(contains("\"").await, vec![1]);
        let starts = Person::query()
            .filter(f.name().starts_with("10"))
            .all(&db)
            .await
            .unwrap();
        assert_eq!(ids(starts), vec![2, 3]);
        let ends = Person::query()
            .filter(f.name().ends_with("0%"))
            .all(&db)
            .await
            .unwrap();
        assert_eq!(ids(ends), vec![2]);
        let both = Person::query()
            .filter(
                f.name()
                    .is_in([names[0].as_str(), names[7].as_str(), big.as_str()]),
            )
            .all(&db)
            .await
            .unwrap();
        assert_eq!(ids(both), vec![0, 7, 9]);
        // Every row is still there: nothing was run as SQL.
        assert_eq!(
            Person::query().count(&db).await.unwrap(),
            names.len() as u64
        );

        let err = Person::query()
            .filter(f.name().contains(&big))
            .all(&db)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "QUERY_INVALID", "{err}");
        assert!(err.to_string().contains("eq"), "{err}");
    });
}

/// Values D1 cannot carry are refused before any statement runs.
#[test]
fn unbindable_values_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 2);
    load(&db, &[]);
    let f = Person::fields();
    block_on(async {
        let err = Person::query()
            .filter(f.age().gt(1 << 60))
            .all(&db)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "QUERY_INVALID", "{err}");
        assert!(err.to_string().contains("2^53"), "{err}");
        let err = Person::query()
            .filter(f.score().lt(f64::NAN))
            .count(&db)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "QUERY_INVALID", "{err}");
    });
}

/// A model read hash-first but placed at random: most keys live off their hash shard, so a
/// pinned `is_in` finds them through the off-hash marker and the directory, like `find`.
#[derive(Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "tickets", read = "hash", write = "random")]
struct Ticket {
    #[sharded(key)]
    id: String,
    seat: i64,
}

#[test]
fn pinned_lists_find_keys_placed_off_their_hash_shard() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    let f = Ticket::fields();
    block_on(async {
        Ticket::create_table(&db).await.unwrap();
        let tickets: Vec<Ticket> = (0..90)
            .map(|i| Ticket {
                id: format!("t{i:03}"),
                seat: i % 7,
            })
            .collect();
        for t in &tickets {
            Ticket::insert(&db, t).await.unwrap();
        }
        let off_hash = tickets
            .iter()
            .filter(|t| {
                let key = collegedb::Key::text(t.id.as_str()).unwrap();
                let hash = db.hash_shard(&key);
                pollster::block_on(Ticket::locate(&db, t.id.as_str())).unwrap()
                    != Some(db.list_known_shards()[hash].to_owned())
            })
            .count();
        assert!(off_hash > 20, "only {off_hash} keys off their hash shard");
        let wanted: Vec<String> = tickets
            .iter()
            .step_by(2)
            .map(|t| t.id.clone())
            .chain(["nobody".to_owned()])
            .collect();
        let (found, report) = Ticket::query()
            .filter(f.id().is_in(wanted.clone()).and(f.seat().ne(3)))
            .all_with_report(&db)
            .await
            .unwrap();
        assert!(!report.scattered);
        let expected: Vec<Ticket> = tickets
            .iter()
            .filter(|t| wanted.contains(&t.id) && t.seat != 3)
            .cloned()
            .collect();
        assert_eq!(found, expected);
    });
}

/// With hash placement, a pinned list costs one statement per shard and chunk, not one per key.
#[test]
fn a_pinned_list_costs_one_statement_per_shard() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    let rows = people(&mut Random(81), 200);
    load(&db, &rows);
    let f = Person::fields();
    let keys: Vec<i64> = rows.iter().take(60).map(|p| p.id).collect();
    let (found, report) = block_on(
        Person::query()
            .filter(f.id().is_in(keys.clone()))
            .all_with_report(&db),
    )
    .unwrap();
    assert_eq!(found.len(), 60);
    assert!(!report.scattered);
    assert_eq!(report.shards, 3, "{report:?}");
}

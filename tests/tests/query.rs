//! Typed queries across shards against an oracle: the same query, written by hand in SQL, on
//! one SQLite file holding every row. Random filters, orders, limits and offsets over random
//! data on 1, 3 and 7 shards; hostile values; lists past D1's 100 bound parameters; and proof
//! that a query pinning the key asks its owner only.

use collegedb::{CollegeDb, Embedded, Filter, Sharded, Value};
use collegedb_tests::open;
use pollster::block_on;
use rusqlite::{params_from_iter, Connection};

#[derive(Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "people")]
struct Person {
    #[sharded(key)]
    id: i64,
    name: String,
    age: i64,
    score: Option<f64>,
    city: Option<String>,
}

/// A deterministic pseudo-random sequence (xorshift), so failures reproduce.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const NAMES: [&str; 8] = [
    "ada",
    "Bob",
    "bobby",
    "c_d",
    "50%",
    "O'Brien",
    "zoë",
    "back\\slash",
];
const CITIES: [&str; 4] = ["Paris", "paris", "Lagos", "Lima"];

fn people(random: &mut Random, n: usize) -> Vec<Person> {
    (0..n)
        .map(|i| Person {
            id: i as i64 * 3 - 40,
            name: format!(
                "{}{}",
                NAMES[random.below(NAMES.len() as u64) as usize],
                random.below(4)
            ),
            age: random.below(60) as i64,
            score: random
                .chance(70)
                .then(|| random.below(40) as f64 / 4.0 - 2.0),
            city: random
                .chance(75)
                .then(|| CITIES[random.below(4) as usize].to_owned()),
        })
        .collect()
}

/// One SQLite file holding every row: the oracle.
fn oracle(rows: &[Person]) -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(
        "CREATE TABLE people (id INTEGER PRIMARY KEY NOT NULL, name TEXT NOT NULL, \
         age INTEGER NOT NULL, score REAL, city TEXT)",
    )
    .unwrap();
    for p in rows {
        conn.execute(
            "INSERT INTO people (id, name, age, score, city) VALUES (?, ?, ?, ?, ?)",
            rusqlite::params![p.id, p.name, p.age, p.score, p.city],
        )
        .unwrap();
    }
    conn
}

/// A filter, and the same condition written by hand in SQL with its parameters.
struct Case {
    filter: Filter<Person>,
    sql: String,
    params: Vec<Value>,
}

fn leaf(random: &mut Random, ids: &[i64]) -> Case {
    let f = Person::fields();
    let ops = ["=", "<>", "<", "<=", ">", ">="];
    let op = random.below(6) as usize;
    let pick = |filter: Filter<Person>, sql: String, params: Vec<Value>| Case {
        filter,
        sql,
        params,
    };
    match random.below(11) {
        0 => {
            let v = random.below(60) as i64;
            let c = f.age();
            let filter = [c.eq(v), c.ne(v), c.lt(v), c.le(v), c.gt(v), c.ge(v)][op].clone();
            pick(filter, format!("age {} ?", ops[op]), vec![v.into()])
        }
        1 => {
            let v = format!("{}{}", NAMES[random.below(8) as usize], random.below(4));
            let c = f.name();
            let filter = [c.eq(&v), c.ne(&v), c.lt(&v), c.le(&v), c.gt(&v), c.ge(&v)][op].clone();
            pick(filter, format!("name {} ?", ops[op]), vec![v.into()])
        }
        2 => {
            let v = random.below(40) as f64 / 4.0 - 2.0;
            let c = f.score();
            let filter = [c.eq(v), c.ne(v), c.lt(v), c.le(v), c.gt(v), c.ge(v)][op].clone();
            pick(filter, format!("score {} ?", ops[op]), vec![v.into()])
        }
        3 => {
            if random.chance(50) {
                pick(f.city().is_null(), "city IS NULL".into(), vec![])
            } else {
                pick(f.score().is_not_null(), "score IS NOT NULL".into(), vec![])
            }
        }
        4 => {
            let v = CITIES[random.below(4) as usize];
            pick(f.city().eq(v), "city = ?".into(), vec![v.into()])
        }
        5 | 6 => {
            // Lists of every length, past the inline limit (bound as JSON) too.
            let n = [0, 1, 3, 40, 150][random.below(5) as usize];
            let values: Vec<i64> = (0..n).map(|_| random.below(70) as i64).collect();
            let negated = random.chance(30);
            let marks = vec!["?"; values.len()].join(", ");
            let params = values.iter().map(|&v| v.into()).collect();
            if negated {
                pick(
                    f.age().not_in(values),
                    format!("age NOT IN ({marks})"),
                    params,
                )
            } else {
                pick(f.age().is_in(values), format!("age IN ({marks})"), params)
            }
        }
        7 => {
            let text = ["b", "B", "%", "_", "\\", "o'", "ë"][random.below(7) as usize];
            let escaped = text
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            let (filter, pattern) = match random.below(3) {
                0 => (f.name().contains(text), format!("%{escaped}%")),
                1 => (f.name().starts_with(text), format!("{escaped}%")),
                _ => (f.name().ends_with(text), format!("%{escaped}")),
            };
            pick(
                filter,
                "name LIKE ? ESCAPE '\\'".into(),
                vec![pattern.into()],
            )
        }
        8 => {
            let pattern = ["b%", "_o%", "%1", "c\\_d%"][random.below(4) as usize];
            pick(
                f.name().like(pattern),
                "name LIKE ? ESCAPE '\\'".into(),
                vec![pattern.into()],
            )
        }
        9 => {
            // Pins the key: present, absent or out-of-range keys.
            let id = ids[random.below(ids.len() as u64) as usize] + random.below(2) as i64;
            pick(f.id().eq(id), "id = ?".into(), vec![id.into()])
        }
        _ => {
            let n = [1, 2, 5, 130][random.below(4) as usize];
            let keys: Vec<i64> = (0..n)
                .map(|_| ids[random.below(ids.len() as u64) as usize] + random.below(2) as i64)
                .collect();
            let marks = vec!["?"; keys.len()].join(", ");
            let params = keys.iter().map(|&v| v.into()).collect();
            pick(f.id().is_in(keys), format!("id IN ({marks})"), params)
        }
    }
}

fn filter(random: &mut Random, ids: &[i64], depth: u32) -> Case {
    if depth == 0 || random.chance(40) {
        return leaf(random, ids);
    }
    let a = filter(random, ids, depth - 1);
    match random.below(3) {
        0 => Case {
            filter: a.filter.not(),
            sql: format!("NOT ({})", a.sql),
            params: a.params,
        },
        kind => {
            let b = filter(random, ids, depth - 1);
            let (filter, op) = if kind == 1 {
                (a.filter.and(b.filter), "AND")
            } else {
                (a.filter.or(b.filter), "OR")
            };
            let mut params = a.params;
            params.extend(b.params);
            Case {
                filter,
                sql: format!("({}) {op} ({})", a.sql, b.sql),
                params,
            }
        }
    }
}

fn oracle_ids(conn: &Connection, sql: &str, params: &[Value]) -> Vec<i64> {
    let mut stmt = conn.prepare(sql).unwrap();
    let rows = stmt
        .query_map(params_from_iter(params.iter().map(to_sql)), |row| {
            row.get(0)
        })
        .unwrap();
    rows.collect::<rusqlite::Result<_>>().unwrap()
}

fn to_sql(value: &Value) -> rusqlite::types::Value {
    match value {
        Value::Null => rusqlite::types::Value::Null,
        Value::Integer(i) => rusqlite::types::Value::Integer(*i),
        Value::Real(f) => rusqlite::types::Value::Real(*f),
        Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
        Value::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
    }
}

fn load(db: &CollegeDb<Embedded>, rows: &[Person]) {
    block_on(async {
        Person::create_table(db).await.unwrap();
        Person::insert_many(db, rows).await.unwrap();
    });
}

/// Random queries on 1, 3 and 7 shards: rows, order, count and existence equal the oracle's.
#[test]
fn random_queries_match_one_unsharded_table() {
    for (shards, seed) in [(1, 11), (3, 12), (7, 13)] {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), shards);
        let mut random = Random(seed);
        let rows = people(&mut random, 400);
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
        let mut pinned = 0;
        for case_number in 0..250 {
            let case = filter(&mut random, &ids, 3);
            let mut query = Person::query().filter(case.filter.clone());
            let mut order = Vec::new();
            for _ in 0..random.below(3) {
                let (term, sql) = columns[random.below(columns.len() as u64) as usize];
                query = query.order_by(term);
                order.push(sql);
            }
            if !order.iter().any(|o| o.starts_with("id ")) {
                order.push("id ASC");
            }
            let limit = random.chance(60).then(|| random.below(30) as usize);
            let offset = if random.chance(40) {
                random.below(20) as usize
            } else {
                0
            };
            if let Some(n) = limit {
                query = query.limit(n);
            }
            query = query.offset(offset);
            let mut sql = format!(
                "SELECT id FROM people WHERE {} ORDER BY {}",
                case.sql,
                order.join(", ")
            );
            sql.push_str(&format!(
                " LIMIT {} OFFSET {offset}",
                limit.map_or(-1, |n| n as i64)
            ));
            let expected = oracle_ids(&conn, &sql, &case.params);
            let (found, report) = block_on(query.all_with_report(&db))
                .unwrap_or_else(|e| panic!("case {case_number} on {shards}: {e}\n{sql}"));
            let found: Vec<i64> = found.iter().map(|p| p.id).collect();
            assert_eq!(
                found, expected,
                "case {case_number} on {shards} shards: {sql}"
            );
            if !report.scattered {
                pinned += 1;
            } else if let Some(n) = limit {
                assert!(
                    report.rows_fetched <= shards * (offset + n),
                    "{report:?}: more than N·(offset + limit) rows"
                );
            }

            let count_sql = format!("SELECT COUNT(*) FROM people WHERE {}", case.sql);
            let expected_count = oracle_ids(&conn, &count_sql, &case.params)[0];
            let count = block_on(Person::query().filter(case.filter.clone()).count(&db)).unwrap();
            assert_eq!(count as i64, expected_count, "count: {count_sql}");
            let exists = block_on(Person::query().filter(case.filter).exists(&db)).unwrap();
            assert_eq!(exists, expected_count > 0, "exists: {count_sql}");
        }
        assert!(pinned > 10, "only {pinned} pinned cases");
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

/// Quotes, wildcards, the escape character, NUL and a 1 MB string are values, never SQL.
#[test]
fn hostile_values_are_bound_not_spliced() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    let big = "x".repeat(1 << 20);
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

fn same_number(a: &Value, b: &rusqlite::types::Value) -> bool {
    use rusqlite::types::Value as S;
    match (a, b) {
        (Value::Null, S::Null) => true,
        (Value::Integer(x), S::Integer(y)) => x == y,
        (Value::Text(x), S::Text(y)) => x == y,
        (Value::Real(x), S::Real(y)) => (x - y).abs() <= 1e-9 * y.abs().max(1.0),
        _ => false,
    }
}

/// Aggregates with and without groups and `having`, over random filters, equal the oracle's
/// `GROUP BY` on one table.
#[test]
fn aggregates_match_one_unsharded_table() {
    use collegedb::query::Aggregate as A;
    for (shards, seed) in [(1, 31), (3, 32), (7, 33)] {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), shards);
        let mut random = Random(seed);
        let rows = people(&mut random, 300);
        let ids: Vec<i64> = rows.iter().map(|p| p.id).collect();
        load(&db, &rows);
        let conn = oracle(&rows);
        let f = Person::fields();
        let aggregates = [
            A::count(),
            A::count_of(f.score()),
            A::sum(f.age()),
            A::sum(f.score()),
            A::min(f.name()),
            A::max(f.score()),
            A::avg(f.age()),
            A::avg(f.score()),
        ];
        let select = "COUNT(*), COUNT(score), SUM(age), SUM(score), MIN(name), MAX(score), \
                      AVG(age), AVG(score)";
        for case_number in 0..60 {
            let case = filter(&mut random, &ids, 2);
            let (groups, group_sql): (Vec<&str>, &str) = match random.below(3) {
                0 => (vec![], ""),
                1 => (vec!["city"], "city"),
                _ => (vec!["city", "age"], "city, age"),
            };
            let mut query = Person::query().filter(case.filter.clone());
            for g in &groups {
                query = match *g {
                    "city" => query.group_by(f.city()),
                    _ => query.group_by(f.age()),
                };
            }
            let mut sql = format!(
                "SELECT {group_sql}{}{select} FROM people WHERE {}",
                if groups.is_empty() { "" } else { ", " },
                case.sql
            );
            let mut params = case.params.clone();
            if !groups.is_empty() {
                sql.push_str(&format!(" GROUP BY {group_sql}"));
                if random.chance(50) {
                    let least = random.below(4) as i64;
                    query = query.having(A::count().gt(least));
                    sql.push_str(" HAVING COUNT(*) > ?");
                    params.push(least.into());
                }
                sql.push_str(&format!(" ORDER BY {group_sql}"));
            }
            let found = block_on(query.aggregate(&db, &aggregates))
                .unwrap_or_else(|e| panic!("case {case_number}: {e}\n{sql}"));
            let mut stmt = conn.prepare(&sql).unwrap();
            let width = groups.len() + aggregates.len();
            let expected: Vec<Vec<rusqlite::types::Value>> = stmt
                .query_map(params_from_iter(params.iter().map(to_sql)), |row| {
                    (0..width).map(|i| row.get(i)).collect()
                })
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert_eq!(found.len(), expected.len(), "case {case_number}: {sql}");
            for (got, want) in found.iter().zip(&expected) {
                let got: Vec<&Value> = got.group.iter().chain(&got.values).collect();
                for (g, w) in got.iter().zip(want) {
                    assert!(
                        same_number(g, w),
                        "case {case_number} on {shards}: {got:?} vs {want:?}\n{sql}"
                    );
                }
            }
        }
    }
}

/// One row as a tuple, to compare whole tables.
type StateRow = (i64, String, i64, Option<f64>, Option<String>);

fn table_state(conn: &Connection) -> Vec<StateRow> {
    let mut stmt = conn
        .prepare("SELECT id, name, age, score, city FROM people ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

fn sharded_state(db: &CollegeDb<Embedded>) -> Vec<StateRow> {
    block_on(Person::query().all(db))
        .unwrap()
        .into_iter()
        .map(|p| (p.id, p.name, p.age, p.score, p.city))
        .collect()
}

/// `update_many` and `delete_many` over random filters change what the same `UPDATE` and
/// `DELETE` change on one table, and report the rows changed on each shard.
#[test]
fn bulk_writes_match_one_unsharded_table() {
    for (shards, seed) in [(1, 41), (3, 42), (7, 43)] {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), shards);
        let mut random = Random(seed);
        let rows = people(&mut random, 300);
        let ids: Vec<i64> = rows.iter().map(|p| p.id).collect();
        load(&db, &rows);
        let conn = oracle(&rows);
        let f = Person::fields();
        for case_number in 0..40 {
            let case = filter(&mut random, &ids, 2);
            let before = collegedb_tests::rows_per_shard(dir.path(), shards, "people");
            let delete = random.chance(30);
            let (report, sql, params) = if delete {
                let report = block_on(Person::query().filter(case.filter).delete_many(&db));
                (
                    report,
                    format!("DELETE FROM people WHERE {}", case.sql),
                    case.params,
                )
            } else {
                let age = random.below(100) as i64;
                let city = random.chance(50).then(|| format!("city {case_number}"));
                let sets = [f.age().set(age), f.city().set(city.clone())];
                let report = block_on(Person::query().filter(case.filter).update_many(&db, &sets));
                let mut params: Vec<Value> = vec![age.into(), city.into()];
                params.extend(case.params);
                (
                    report,
                    format!("UPDATE people SET age = ?, city = ? WHERE {}", case.sql),
                    params,
                )
            };
            let report = report.unwrap_or_else(|e| panic!("case {case_number}: {e}\n{sql}"));
            let changed = conn
                .execute(&sql, params_from_iter(params.iter().map(to_sql)))
                .unwrap();
            assert_eq!(report.total as usize, changed, "case {case_number}: {sql}");
            assert_eq!(
                report.per_shard.iter().map(|(_, n)| n).sum::<u64>(),
                report.total
            );
            assert_eq!(
                sharded_state(&db),
                table_state(&conn),
                "case {case_number}: {sql}"
            );
            if delete {
                let after = collegedb_tests::rows_per_shard(dir.path(), shards, "people");
                for (name, n) in &report.per_shard {
                    let i: usize = name[1..].parse().unwrap();
                    assert_eq!(before[i] - after[i], *n as i64, "{name}: {report:?}");
                }
            }
        }
    }
}

/// Setting the key, or nothing, is refused before anything runs.
#[test]
fn bulk_writes_refuse_key_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 2);
    load(&db, &people(&mut Random(3), 20));
    let f = Person::fields();
    block_on(async {
        let err = Person::query()
            .update_many(&db, &[f.id().set(5)])
            .await
            .unwrap_err();
        assert_eq!(err.code(), "QUERY_INVALID", "{err}");
        assert!(
            err.to_string().contains("insert a row with the new key"),
            "{err}"
        );
        let err = Person::query().update_many(&db, &[]).await.unwrap_err();
        assert_eq!(err.code(), "QUERY_INVALID", "{err}");
        assert_eq!(Person::query().count(&db).await.unwrap(), 20);
    });
}

/// Statements of the typed layer check the shard's slot fence: with every slot of one shard
/// revoked (as a move's switch-over does), a pinned read of a key there and a scattered bulk
/// write are refused, retried against a reloaded map, and end with `SLOT_MOVING`; the refusing
/// shard wrote nothing. With the slots back, both succeed.
#[test]
fn queries_and_bulk_writes_check_the_slot_fence() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 2);
    let rows = people(&mut Random(8), 80);
    load(&db, &rows);
    let f = Person::fields();
    block_on(async {
        let on_s1 = rows
            .iter()
            .find(|p| {
                pollster::block_on(Person::locate(&db, p.id))
                    .unwrap()
                    .as_deref()
                    == Some("s1")
            })
            .unwrap()
            .clone();
        let slots = db
            .all_shard(
                "s1",
                "SELECT slot FROM _collegedb_slots WHERE slot >= 0",
                &[],
            )
            .await
            .unwrap();
        db.run_shard("s1", "DELETE FROM _collegedb_slots WHERE slot >= 0", &[])
            .await
            .unwrap();
        let err = Person::query()
            .filter(f.id().eq(on_s1.id))
            .first(&db)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "SLOT_MOVING", "{err}");
        let err = Person::query()
            .filter(
                f.id()
                    .is_in(rows.iter().take(10).map(|p| p.id).chain([on_s1.id])),
            )
            .all(&db)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "SLOT_MOVING", "a grouped pinned read: {err}");
        let before = collegedb_tests::rows_per_shard(dir.path(), 2, "people");
        let err = Person::query().delete_many(&db).await.unwrap_err();
        assert_eq!(err.code(), "SLOT_MOVING", "{err}");
        let after = collegedb_tests::rows_per_shard(dir.path(), 2, "people");
        assert_eq!(before[1], after[1], "the refusing shard wrote nothing");

        for row in slots {
            db.run_shard(
                "s1",
                "INSERT INTO _collegedb_slots (slot) VALUES (?)",
                &[row.values()[0].clone()],
            )
            .await
            .unwrap();
        }
        let found = Person::query()
            .filter(f.id().eq(on_s1.id))
            .first(&db)
            .await
            .unwrap();
        assert_eq!(found, Some(on_s1));
        let report = Person::query().delete_many(&db).await.unwrap();
        assert_eq!(report.total as i64, after[0] + after[1]);
        assert_eq!(Person::query().count(&db).await.unwrap(), 0);
    });
}

/// Keyset pages over random filters and orders, concatenated, equal the oracle's whole ordered
/// result; the cursor is refused by a query with another order.
#[test]
fn pages_walk_the_whole_result_once() {
    use collegedb::query::Cursor;
    for (shards, seed) in [(1, 51), (3, 52), (7, 53)] {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), shards);
        let mut random = Random(seed);
        let rows = people(&mut random, 250);
        let ids: Vec<i64> = rows.iter().map(|p| p.id).collect();
        load(&db, &rows);
        let conn = oracle(&rows);
        let f = Person::fields();
        let columns = [
            (f.age().asc(), "age ASC"),
            (f.age().desc(), "age DESC"),
            (f.name().desc(), "name DESC"),
            (f.score().asc(), "score ASC"),
            (f.score().desc(), "score DESC"),
            (f.city().asc(), "city ASC"),
            (f.city().desc(), "city DESC"),
        ];
        for case_number in 0..40 {
            let case = filter(&mut random, &ids, 1);
            let mut query = Person::query().filter(case.filter.clone());
            let mut order = Vec::new();
            for _ in 0..random.below(3) {
                let (term, sql) = columns[random.below(columns.len() as u64) as usize];
                query = query.order_by(term);
                order.push(sql);
            }
            order.push("id ASC");
            let size = 1 + random.below(12) as usize;
            query = query.limit(size);
            let sql = format!(
                "SELECT id FROM people WHERE {} ORDER BY {}",
                case.sql,
                order.join(", ")
            );
            let expected = oracle_ids(&conn, &sql, &case.params);
            let mut walked = Vec::new();
            let mut cursor: Option<Cursor> = None;
            loop {
                let page = block_on(query.page(&db, cursor.as_ref()))
                    .unwrap_or_else(|e| panic!("case {case_number}: {e}\n{sql}"));
                assert!(page.rows.len() <= size);
                walked.extend(page.rows.iter().map(|p| p.id));
                match page.next {
                    Some(next) => {
                        assert_eq!(page.rows.len(), size, "a page before the last is full");
                        cursor = Some(Cursor::from_text(next.as_str()));
                    }
                    None => break,
                }
            }
            assert_eq!(walked, expected, "case {case_number} on {shards}: {sql}");
        }
        let first = block_on(
            Person::query()
                .order_by(f.age().asc())
                .limit(3)
                .page(&db, None),
        )
        .unwrap();
        let next = first.next.unwrap();
        let err = block_on(Person::query().limit(3).page(&db, Some(&next))).unwrap_err();
        assert_eq!(err.code(), "QUERY_INVALID", "{err}");
        let err = block_on(Person::query().page(&db, Some(&Cursor::from_text("zz")))).unwrap_err();
        assert_eq!(err.code(), "QUERY_INVALID", "{err}");
    }
}

/// While another thread inserts rows, paging returns every row present from the start exactly
/// once, never a row twice, and each page in order.
#[test]
fn pages_stay_exact_under_concurrent_inserts() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    let rows = people(&mut Random(61), 400);
    load(&db, &rows);
    let f = Person::fields();
    let writer = {
        let db = db.clone();
        std::thread::spawn(move || {
            let mut random = Random(62);
            for person in people(&mut random, 300) {
                let person = Person {
                    id: 100_000 + person.id,
                    ..person
                };
                block_on(Person::insert(&db, &person)).unwrap();
            }
        })
    };
    let query = Person::query()
        .order_by(f.age().desc())
        .order_by(f.score().asc())
        .limit(9);
    let mut seen: Vec<Person> = Vec::new();
    let mut cursor = None;
    loop {
        let page = block_on(query.page(&db, cursor.as_ref())).unwrap();
        seen.extend(page.rows);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    writer.join().unwrap();
    let mut ids: Vec<i64> = seen.iter().map(|p| p.id).collect();
    let in_order = seen.windows(2).all(|w| {
        let key = |p: &Person| {
            (
                std::cmp::Reverse(p.age),
                p.score.map(|s| (s * 4.0) as i64),
                p.id,
            )
        };
        key(&w[0]) < key(&w[1])
    });
    assert!(in_order, "pages are in the query's order");
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "no row twice");
    for person in &rows {
        assert!(
            ids.binary_search(&person.id).is_ok(),
            "row {} missing",
            person.id
        );
    }
}

/// Projections into tuples, with and without `distinct`, equal the oracle's `SELECT` and
/// `SELECT DISTINCT` of the same columns.
#[test]
fn projections_and_distinct_match_one_unsharded_table() {
    for (shards, seed) in [(1, 71), (3, 72), (7, 73)] {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), shards);
        let mut random = Random(seed);
        let rows = people(&mut random, 300);
        let ids: Vec<i64> = rows.iter().map(|p| p.id).collect();
        load(&db, &rows);
        let conn = oracle(&rows);
        let f = Person::fields();
        for case_number in 0..60 {
            let case = filter(&mut random, &ids, 2);
            let limit = random.chance(60).then(|| 1 + random.below(15) as usize);
            let offset = if random.chance(30) {
                random.below(10) as usize
            } else {
                0
            };
            let mut query = Person::query().filter(case.filter.clone()).offset(offset);
            if let Some(n) = limit {
                query = query.limit(n);
            }
            let tail = format!(" LIMIT {} OFFSET {offset}", limit.map_or(-1, |n| n as i64));
            let params: Vec<rusqlite::types::Value> = case.params.iter().map(to_sql).collect();
            if random.chance(50) {
                let descending = random.chance(50);
                let query = query.order_by(if descending {
                    f.city().desc()
                } else {
                    f.city().asc()
                });
                let found = block_on(query.select((f.city(), f.age())).distinct().all(&db))
                    .unwrap_or_else(|e| panic!("case {case_number}: {e}"));
                let sql = format!(
                    "SELECT DISTINCT city, age FROM people WHERE {} ORDER BY city {}, age ASC{tail}",
                    case.sql,
                    if descending { "DESC" } else { "ASC" }
                );
                let mut stmt = conn.prepare(&sql).unwrap();
                let expected: Vec<(Option<String>, i64)> = stmt
                    .query_map(params_from_iter(params.iter()), |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .unwrap()
                    .collect::<rusqlite::Result<_>>()
                    .unwrap();
                assert_eq!(found, expected, "case {case_number} on {shards}: {sql}");
            } else {
                let query = query.order_by(f.age().desc());
                let found = block_on(query.select((f.name(), f.score())).all(&db))
                    .unwrap_or_else(|e| panic!("case {case_number}: {e}"));
                let sql = format!(
                    "SELECT name, score FROM people WHERE {} ORDER BY age DESC, id ASC{tail}",
                    case.sql
                );
                let mut stmt = conn.prepare(&sql).unwrap();
                let expected: Vec<(String, Option<f64>)> = stmt
                    .query_map(params_from_iter(params.iter()), |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .unwrap()
                    .collect::<rusqlite::Result<_>>()
                    .unwrap();
                assert_eq!(found, expected, "case {case_number} on {shards}: {sql}");
            }
        }
        let err = block_on(
            Person::query()
                .order_by(f.age().asc())
                .select((f.city(),))
                .distinct()
                .all(&db),
        )
        .unwrap_err();
        assert_eq!(err.code(), "QUERY_INVALID", "{err}");
    }
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

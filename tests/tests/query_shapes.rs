//! Aggregates, keyset pages, projections and `distinct` against the oracle: the same query
//! written by hand in SQL on one SQLite file holding every row.

mod query_support;

use collegedb::Value;
use collegedb_tests::open;
use pollster::block_on;
use query_support::*;
use rusqlite::params_from_iter;

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

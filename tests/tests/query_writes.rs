//! Bulk writes by filter against the oracle, and the slot fence on typed queries and bulk
//! writes.

mod query_support;

use collegedb::Value;
use collegedb_tests::open;
use pollster::block_on;
use query_support::*;
use rusqlite::params_from_iter;

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

/// While a growth operation is journaled, a bulk write by filter is refused, retryably, with
/// nothing written (it could change a moving row's copy and miss the row); writes pinned to
/// keys go on through the fence. Once the operation has finished, the same call succeeds.
#[test]
fn scattered_bulk_writes_wait_for_a_growth_operation() {
    let dir = tempfile::tempdir().unwrap();
    let rows = people(&mut Random(7), 60);
    {
        let db = open(dir.path(), 3);
        load(&db, &rows);
    }
    let db = open(dir.path(), 4);
    let f = Person::fields();
    let operation = collegedb::growth::Operation::AddShard { shard: "s3".into() };
    block_on(db.start_growth(operation)).unwrap();
    block_on(async {
        let err = Person::query()
            .filter(f.age().ge(0))
            .update_many(&db, &[f.name().set("bulk")])
            .await
            .unwrap_err();
        assert_eq!(err.code(), "GROWTH_IN_PROGRESS", "{err}");
        assert!(err.is_retryable());
        let bulk = Person::query()
            .filter(f.name().eq("bulk"))
            .count(&db)
            .await
            .unwrap();
        assert_eq!(bulk, 0, "nothing written");
        let one = rows[0].id;
        let pinned = Person::query()
            .filter(f.id().eq(one))
            .update_many(&db, &[f.name().set("pinned")])
            .await
            .unwrap();
        assert_eq!(pinned.total, 1);
        db.resume_growth(&collegedb::GrowthOptions::default())
            .await
            .unwrap();
        let report = Person::query()
            .filter(f.age().ge(0))
            .update_many(&db, &[f.name().set("bulk")])
            .await
            .unwrap();
        assert_eq!(report.total, 60);
    });
}

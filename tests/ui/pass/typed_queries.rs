//! Typed filters compile for every supported column type, with the operand forms users write.

#[derive(collegedb::Sharded)]
#[sharded(table = "rows")]
pub struct Row {
    #[sharded(key)]
    pub id: i64,
    pub name: String,
    pub nick: Option<String>,
    pub small: u8,
    pub ratio: f32,
    pub total: Option<f64>,
    pub flag: bool,
    pub bytes: Vec<u8>,
    #[sharded(json)]
    pub prefs: Vec<String>,
}

async fn run(db: &collegedb::EmbeddedDb) -> collegedb::Result<()> {
    let f = Row::fields();
    let name = String::from("x");
    let filter = f.id().eq(1)
        & f.name().eq("a")
        & f.name().ne(&name)
        & f.name().ge(name.clone())
        & f.nick().eq("b")
        & f.nick().eq(None)
        & f.nick().eq(Some(String::from("c")))
        & f.small().lt(3)
        & f.ratio().gt(0.5)
        & f.total().le(2.0)
        & f.flag().eq(true)
        & f.bytes().eq(&b"raw"[..])
        & f.prefs().is_not_null()
        & f.id().is_in([1, 2, 3])
        & f.name().not_in(vec!["a", "b"])
        & (f.nick().like("a%") | !f.nick().starts_with("z"));
    let rows: Vec<Row> = Row::query()
        .filter(filter)
        .order_by(f.total().desc())
        .order_by(f.bytes().asc())
        .limit(10)
        .offset(5)
        .all(db)
        .await?;
    let _first: Option<Row> = Row::query().first(db).await?;
    let _n: u64 = Row::query().count(db).await?;
    let _any: bool = Row::query().exists(db).await?;
    let pairs: Vec<(String, Option<f64>)> = Row::query()
        .order_by(f.name().asc())
        .select((f.name(), f.total()))
        .distinct()
        .all(db)
        .await?;
    let groups: Vec<collegedb::query::AggregateRow> = Row::query()
        .group_by(f.flag())
        .having(collegedb::query::Aggregate::count().gt(1))
        .aggregate(
            db,
            &[
                collegedb::query::Aggregate::count(),
                collegedb::query::Aggregate::sum(f.small()),
                collegedb::query::Aggregate::avg(f.total()),
                collegedb::query::Aggregate::min(f.nick()),
            ],
        )
        .await?;
    let page: collegedb::query::QueryPage<Row> =
        Row::query().order_by(f.ratio().desc()).limit(5).page(db, None).await?;
    let _more = match page.next {
        Some(cursor) => Row::query().order_by(f.ratio().desc()).limit(5).page(db, Some(&cursor)).await?.rows,
        None => Vec::new(),
    };
    let written: collegedb::query::WriteReport = Row::query()
        .filter(f.flag().eq(false))
        .update_many(db, &[f.nick().set(None), f.small().set(2)])
        .await?;
    let _gone: u64 = Row::query().filter(f.id().is_in([7])).delete_many(db).await?.total;
    let _partial = Row::query().max_concurrency(2).all_partial(db).await?.complete()?;
    drop((pairs, groups, written));
    drop(rows);
    Ok(())
}

fn main() {
    let _ = run;
}

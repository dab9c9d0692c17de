//! Cross-shard scans against an oracle: the sorted union of every key (for text keys, checked
//! against SQLite's own `ORDER BY`). Whole tables are walked page by page for several page sizes,
//! integer and text keys, and placements from even (hash) to fully skewed (every row on one
//! shard, empty shards, one shard holding only the largest keys, long runs per shard), with rows
//! inserted and deleted between pages. A counting backend checks what crosses the wire.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use collegedb::backend::embedded::SqliteShard;
use collegedb::backend::{Coordinator, ShardConn};
use collegedb::directory::{Directory, DirectoryPage};
use collegedb::scan::scan;
use collegedb::{
    Backend, CollegeDb, ColumnValue, Config, Embedded, Error, Key, Model, Result, Row, Sharded,
    Statement, Strategy, Value,
};
use collegedb_tests::{open, User};
use pollster::block_on;

/// A hash-placed model with an integer key.
#[derive(Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "items")]
struct Item {
    #[sharded(key)]
    id: i64,
    label: String,
}

fn item(id: i64) -> Item {
    Item {
        id,
        label: format!("item {id}"),
    }
}

const LIMITS: [usize; 5] = [1, 2, 7, 100, 1000];
const ROWS: usize = 1500;

/// A deterministic pseudo-random sequence (xorshift), so failures reproduce.
fn pseudo_random(seed: u64) -> impl Iterator<Item = u64> {
    let mut state = seed.max(1);
    std::iter::from_fn(move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        Some(state)
    })
}

/// Distinct integer keys over the whole allowed range, extremes included.
fn int_keys(n: usize) -> Vec<i64> {
    let max = collegedb::MAX_SAFE_INTEGER;
    let mut keys: BTreeSet<i64> = [-max, -1, 0, 1, max].into();
    let mut random = pseudo_random(7);
    while keys.len() < n {
        let r = random.next().unwrap();
        let key = match r % 3 {
            // Small keys, dense: neighbours often land on different shards.
            0 => (r >> 8) as i64 % 5000 - 2500,
            _ => ((r >> 8) % (2 * max as u64 + 1)) as i64 - max,
        };
        keys.insert(key);
    }
    keys.into_iter().collect()
}

/// Distinct text keys mixing ASCII (both cases, digits, punctuation) with multi-byte UTF-8: two-,
/// three- and four-byte characters, and U+FFFF, which sorts before U+1F600 in UTF-8 (and in
/// SQLite) but after it in UTF-16.
fn text_keys(n: usize) -> Vec<String> {
    const PIECES: [&str; 14] = [
        "a", "B", "z", "Z", "0", "9", " ", "~", "é", "ü", "中", "😀", "\u{ffff}", "ab",
    ];
    let mut keys = BTreeSet::new();
    let mut random = pseudo_random(11);
    while keys.len() < n {
        let r = random.next().unwrap();
        let len = 1 + (r % 4) as usize;
        let key: String = (0..len)
            .map(|i| PIECES[((r >> (8 + 5 * i)) % PIECES.len() as u64) as usize])
            .collect();
        keys.insert(key);
    }
    keys.into_iter().collect()
}

/// The keys in SQLite's order, from SQLite itself: the oracle's order must be SQLite's.
fn sqlite_order(keys: &[String]) -> Vec<String> {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE k (id TEXT PRIMARY KEY)")
        .unwrap();
    for key in keys {
        conn.execute("INSERT INTO k (id) VALUES (?)", [key])
            .unwrap();
    }
    let mut stmt = conn.prepare("SELECT id FROM k ORDER BY id").unwrap();
    let ordered = stmt
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<rusqlite::Result<Vec<String>>>()
        .unwrap();
    ordered
}

/// Inserts rows straight into one shard with raw SQL, bypassing placement.
async fn insert_raw<M: Model, B: Backend>(db: &CollegeDb<B>, shard: usize, rows: &[M]) {
    let columns: Vec<&str> = M::COLUMNS.iter().map(|c| c.name).collect();
    let per_statement = collegedb::MAX_BOUND_PARAMETERS / columns.len();
    let one = format!("({})", vec!["?"; columns.len()].join(", "));
    for chunk in rows.chunks(per_statement) {
        let sql = format!(
            "INSERT INTO {} ({}) VALUES {}",
            M::TABLE,
            columns.join(", "),
            vec![one.as_str(); chunk.len()].join(", ")
        );
        let params: Vec<Value> = chunk
            .iter()
            .flat_map(|row| row.to_values().unwrap())
            .collect();
        db.run_shard(&format!("s{shard}"), &sql, &params)
            .await
            .unwrap();
    }
}

/// Where the `rank`-th smallest of `n` keys goes, for a placement that bypasses hashing.
#[derive(Debug, Clone, Copy)]
enum Placement {
    /// `User::insert_many` / `Item::insert_many`: the library's own hash placement.
    Hash,
    /// Every row on shard 1 of 3; shards 0 and 2 stay empty.
    OneShard,
    /// 5 shards, rows on shards 1 and 3 only, pseudo-randomly.
    TwoOfFive,
    /// The smallest 70% alternate between shards 0 and 1; shard 2 holds only the largest keys.
    LargestAlone,
    /// The smallest 5% on shard 0 alone, the rest alternate between shards 1 and 2.
    SmallestAlone,
    /// Runs of 37 consecutive keys per shard, in turn over 3 shards.
    Runs,
    /// 90% of the rows on shard 0, the rest spread over shards 1 and 2.
    Skewed,
    /// A single shard.
    Single,
}

impl Placement {
    const ALL: [Placement; 8] = [
        Placement::Hash,
        Placement::OneShard,
        Placement::TwoOfFive,
        Placement::LargestAlone,
        Placement::SmallestAlone,
        Placement::Runs,
        Placement::Skewed,
        Placement::Single,
    ];

    fn shards(self) -> usize {
        match self {
            Placement::TwoOfFive => 5,
            Placement::Single => 1,
            _ => 3,
        }
    }

    fn shard(self, rank: usize, n: usize, random: u64) -> usize {
        match self {
            Placement::Hash => unreachable!("placed by the library"),
            Placement::OneShard => 1,
            Placement::TwoOfFive => [1, 3][(random % 2) as usize],
            Placement::LargestAlone if rank * 10 < n * 7 => rank % 2,
            Placement::LargestAlone => 2,
            Placement::SmallestAlone if rank * 20 < n => 0,
            Placement::SmallestAlone => 1 + rank % 2,
            Placement::Runs => (rank / 37) % 3,
            Placement::Skewed if random % 10 != 0 => 0,
            Placement::Skewed => 1 + (random / 10 % 2) as usize,
            Placement::Single => 0,
        }
    }
}

/// Creates `M`'s table and stores `rows` (sorted by key) under `placement`.
async fn load<M: Model, B: Backend>(db: &CollegeDb<B>, rows: &[M], placement: Placement) {
    collegedb::crud::create_table::<M, B>(db).await.unwrap();
    if let Placement::Hash = placement {
        collegedb::bulk::insert_many::<M, B>(db, rows)
            .await
            .unwrap();
        return;
    }
    let mut per_shard: Vec<Vec<M>> = Vec::new();
    per_shard.resize_with(placement.shards(), Vec::new);
    let mut random = pseudo_random(3);
    for (rank, row) in rows.iter().enumerate() {
        let shard = placement.shard(rank, rows.len(), random.next().unwrap());
        per_shard[shard].push(M::from_values(row.to_values().unwrap()).unwrap());
    }
    for (shard, rows) in per_shard.iter().enumerate() {
        insert_raw(db, shard, rows).await;
    }
}

/// Walks the whole table in pages of `limit`, checking every page: at most `limit` rows; `next`
/// set exactly when rows follow, then to the page's last key with a full page. Returns the keys
/// in the order seen and the number of pages.
async fn walk<M: Model, B: Backend>(db: &CollegeDb<B>, limit: usize) -> (Vec<M::Key>, usize)
where
    M::Key: Debug + PartialEq,
{
    let (mut seen, mut after, mut pages) = (Vec::new(), None, 0);
    loop {
        let page = scan::<M, B>(db, after, limit).await.unwrap();
        pages += 1;
        assert!(page.rows.len() <= limit);
        seen.extend(page.rows.iter().map(|row| row.key().clone()));
        match page.next {
            Some(next) => {
                assert_eq!(page.rows.len(), limit, "only a full page has a successor");
                assert_eq!(Some(&next), seen.last(), "`next` is the page's last key");
                after = Some(next);
            }
            None => return (seen, pages),
        }
        assert!(pages <= 100_000, "the walk does not end");
    }
}

/// Walks `rows` stored under every placement with every page size and compares with the oracle.
fn check_every_placement<M: Model>(rows: &[M], oracle: &[M::Key])
where
    M::Key: Debug + PartialEq,
{
    for placement in Placement::ALL {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), placement.shards());
        block_on(async {
            load(&db, rows, placement).await;
            for limit in LIMITS {
                let (seen, pages) = walk::<M, Embedded>(&db, limit).await;
                assert!(
                    seen == oracle,
                    "{placement:?}, limit {limit}: the walk differs from the oracle"
                );
                assert_eq!(
                    pages,
                    oracle.len().div_ceil(limit).max(1),
                    "{placement:?}, limit {limit}: no page beyond the last row"
                );
            }
        });
    }
}

#[test]
fn integer_keys_walk_in_numeric_order_under_every_placement() {
    let keys = int_keys(ROWS);
    let rows: Vec<Item> = keys.iter().map(|&id| item(id)).collect();
    check_every_placement(&rows, &keys);
}

#[test]
fn text_keys_walk_in_utf8_byte_order_under_every_placement() {
    let keys = text_keys(ROWS);
    assert_eq!(sqlite_order(&keys), keys, "the oracle's order is SQLite's");
    assert!(keys.iter().any(|k| !k.is_ascii()));
    let rows: Vec<User> = keys.iter().map(User::new).collect();
    check_every_placement(&rows, &keys);
}

#[test]
fn pages_start_after_any_cursor_even_one_that_is_not_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        let keys: Vec<i64> = (0..300).map(|i| i * 10).collect();
        let rows: Vec<Item> = keys.iter().map(|&id| item(id)).collect();
        load(&db, &rows, Placement::Hash).await;
        for cursor in [-5, 0, 5, 995, 2985, 2990, 3000] {
            let expected: Vec<i64> = keys.iter().copied().filter(|&k| k > cursor).collect();
            for limit in [1, 7, 100] {
                let page = Item::scan(&db, Some(cursor), limit).await.unwrap();
                let got: Vec<i64> = page.rows.iter().map(|r| r.id).collect();
                let want = &expected[..limit.min(expected.len())];
                assert_eq!(got, want, "after {cursor}, limit {limit}");
                let more = expected.len() > limit;
                assert_eq!(page.next, more.then(|| want[want.len() - 1]));
            }
        }
    });
}

#[test]
fn empty_tables_give_one_empty_last_page() {
    for shards in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), shards);
        block_on(async {
            User::create_table(&db).await.unwrap();
            for limit in [0, 1, 100, 5000] {
                let page = User::scan(&db, None, limit).await.unwrap();
                assert!(page.rows.is_empty());
                assert_eq!(page.next, None);
                let page = User::scan(&db, Some("x".into()), limit).await.unwrap();
                assert!(page.rows.is_empty());
                assert_eq!(page.next, None);
            }
        });
    }
}

#[test]
fn limits_are_clamped_to_one_and_a_thousand() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        let rows: Vec<Item> = (0..1200).map(item).collect();
        load(&db, &rows, Placement::Hash).await;
        let page = Item::scan(&db, None, 0).await.unwrap();
        assert_eq!(page.rows, [item(0)]);
        assert_eq!(page.next, Some(0));
        let page = Item::scan(&db, None, 5000).await.unwrap();
        assert_eq!(page.rows.len(), collegedb::scan::MAX_SCAN_LIMIT);
        assert_eq!(page.next, Some(999));
    });
}

#[test]
fn a_page_ending_on_the_last_row_fetched_from_a_shard_knows_whether_more_follow() {
    // Shards 1 and 2 hold a few small keys; shard 0 holds the large ones. For some page sizes,
    // the first round fetches exactly the page: every small key plus a full share of shard 0,
    // whose last row ends the page. Whether rows follow is then known only from shard 0; it is
    // shrunk row by row, so the page also ends on its very last row.
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        Item::create_table(&db).await.unwrap();
        let small: Vec<Item> = (0..20).map(item).collect();
        insert_raw(&db, 1, &small[..12]).await;
        insert_raw(&db, 2, &small[12..]).await;
        let large: Vec<Item> = (1000..1080).map(item).collect();
        insert_raw(&db, 0, &large).await;
        let mut keys: Vec<i64> = (0..20).chain(1000..1080).collect();
        while keys.len() > 20 {
            for limit in 1..=120 {
                let page = Item::scan(&db, None, limit).await.unwrap();
                let got: Vec<i64> = page.rows.iter().map(|r| r.id).collect();
                assert_eq!(got, keys[..limit.min(keys.len())], "limit {limit}");
                let next = (keys.len() > limit).then(|| keys[limit - 1]);
                assert_eq!(page.next, next, "limit {limit}, {} rows", keys.len());
            }
            let last = keys.pop().unwrap();
            let deleted = db
                .run_shard("s0", "DELETE FROM items WHERE id = ?", &[last.into()])
                .await
                .unwrap();
            assert_eq!(deleted, 1);
        }
    });
}

/// Walks while inserting rows ahead of and behind the cursor and deleting rows ahead of it
/// between pages: rows ahead appear once, in order; rows behind and deleted rows never appear.
fn walk_with_writes_between_pages<M: Model>(
    keys: &[M::Key],
    row: impl Fn(&M::Key) -> M,
    after: impl Fn(&M::Key) -> Option<M::Key>,
    before: impl Fn(&M::Key) -> Option<M::Key>,
) where
    M::Key: Debug + Ord,
{
    let key_column = M::COLUMNS[M::KEY_INDEX].name;
    for limit in LIMITS {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), 3);
        block_on(async {
            let rows: Vec<M> = keys.iter().map(&row).collect();
            load(&db, &rows, Placement::Hash).await;
            let mut present: BTreeSet<M::Key> = keys.iter().cloned().collect();
            let mut expected = present.clone();
            let (mut seen, mut cursor, mut pages) = (Vec::new(), None, 0usize);
            loop {
                let page = scan::<M, Embedded>(&db, cursor.clone(), limit)
                    .await
                    .unwrap();
                pages += 1;
                seen.extend(page.rows.iter().map(|r| r.key().clone()));
                let Some(next) = page.next else { break };
                // Right after the cursor, on a shard that changes from page to page.
                let ahead = after(&next);
                if let Some(ahead) = &ahead {
                    if present.insert(ahead.clone()) {
                        expected.insert(ahead.clone());
                        insert_raw(&db, pages % 3, &[row(ahead)]).await;
                    }
                }
                // Behind the cursor: never seen.
                if let Some(behind) = before(&next) {
                    if present.insert(behind.clone()) {
                        insert_raw(&db, (pages + 1) % 3, &[row(&behind)]).await;
                    }
                }
                // A row not seen yet disappears: never seen.
                let from = ahead.unwrap_or_else(|| next.clone());
                if let Some(doomed) = present.range(from..).nth(2).cloned() {
                    present.remove(&doomed);
                    expected.remove(&doomed);
                    let sql = format!("DELETE FROM {} WHERE {key_column} = ?", M::TABLE);
                    let key = doomed.to_value().unwrap();
                    db.run_all_shards(&sql, &[key]).await.unwrap();
                }
                cursor = Some(next);
                assert!(pages <= 100_000, "the walk does not end");
            }
            let expected: Vec<M::Key> = expected.into_iter().collect();
            assert!(seen == expected, "limit {limit}: writes between pages");
        });
    }
}

#[test]
fn integer_rows_written_between_pages_appear_exactly_when_ahead_of_the_cursor() {
    let keys: Vec<i64> = (0..400).map(|i| i * 4).collect();
    walk_with_writes_between_pages::<Item>(
        &keys,
        |&id| item(id),
        |&k| Some(k + 1),
        |&k| Some(k - 1),
    );
}

#[test]
fn text_rows_written_between_pages_appear_exactly_when_ahead_of_the_cursor() {
    let keys = text_keys(400);
    walk_with_writes_between_pages::<User>(
        &keys,
        |k| User::new(k),
        // Right after `k` in byte order, short enough to stay a valid key as pages chain.
        |k| (k.chars().count() < 8).then(|| format!("{k}é")),
        |k| {
            let mut shorter = k.clone();
            shorter.pop();
            (!shorter.is_empty()).then_some(shorter)
        },
    );
}

// What crosses the wire: a backend that counts queries and rows per shard.

/// Query and row counters, per shard.
#[derive(Default)]
struct Wire {
    queries: Vec<AtomicU64>,
    rows: Vec<AtomicU64>,
}

struct CountingShard {
    inner: SqliteShard,
    index: usize,
    wire: Arc<Wire>,
}

impl ShardConn for CountingShard {
    async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        self.inner.execute(sql, params).await
    }
    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let rows = self.inner.query(sql, params).await?;
        self.wire.queries[self.index].fetch_add(1, Ordering::Relaxed);
        self.wire.rows[self.index].fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok(rows)
    }
    async fn batch(&self, statements: &[Statement]) -> Result<Vec<u64>> {
        self.inner.batch(statements).await
    }
    async fn size_bytes(&self) -> Result<u64> {
        self.inner.size_bytes().await
    }
}

/// A directory for hash placement only: it never holds an entry.
struct NoDirectory;

impl Directory for NoDirectory {
    async fn lookup(&self, _: &str, _: &Key) -> Result<Option<String>> {
        Ok(None)
    }
    async fn claim(&self, _: &str, _: &Key, _: &str) -> Result<String> {
        Err(Error::Directory("hash placement only".into()))
    }
    async fn assign(&self, _: &str, _: &Key, _: &str) -> Result<()> {
        Err(Error::Directory("hash placement only".into()))
    }
    async fn remove(&self, _: &str, _: &Key) -> Result<()> {
        Ok(())
    }
    async fn list(&self, _: &str, _: Option<&str>, _: usize) -> Result<DirectoryPage> {
        Ok(DirectoryPage::default())
    }
    async fn count(&self) -> Result<u64> {
        Ok(0)
    }
    async fn clear(&self) -> Result<()> {
        Ok(())
    }
}

struct NoCoordinator;

impl Coordinator for NoCoordinator {
    async fn next_ticket(&self, _: &str) -> Result<u64> {
        Err(Error::CoordinatorUnavailable("hash placement only".into()))
    }
}

enum Counting {}

impl Backend for Counting {
    type Shard = CountingShard;
    type Directory = NoDirectory;
    type Coordinator = NoCoordinator;
}

/// A counting handle on the shard files of an embedded database in `dir`.
fn counting(dir: &std::path::Path, shards: usize) -> (CollegeDb<Counting>, Arc<Wire>) {
    let wire = Arc::new(Wire {
        queries: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        rows: (0..shards).map(|_| AtomicU64::new(0)).collect(),
    });
    let parts = (0..shards)
        .map(|index| CountingShard {
            inner: SqliteShard::open(
                dir.join(format!("s{index}.sqlite")),
                &format!("s{index}"),
                &Default::default(),
            )
            .unwrap(),
            index,
            wire: wire.clone(),
        })
        .collect();
    let config = Config::with_shard_names((0..shards).map(|i| format!("s{i}")))
        .with_strategy(Strategy::Hash);
    let db = CollegeDb::from_parts(config, parts, NoDirectory, NoCoordinator).unwrap();
    (db, wire)
}

/// What one page of a walk cost.
struct PageCost {
    /// Queries, over every shard.
    queries: u64,
    /// Rows fetched, over every shard.
    rows: u64,
    /// The most queries one shard received.
    most_queries: u64,
    /// The most rows one shard returned.
    most_rows: u64,
}

/// Walks the whole table in pages of `limit` and returns what each page cost.
fn cost_per_page<M: Model>(db: &CollegeDb<Counting>, wire: &Wire, limit: usize) -> Vec<PageCost> {
    let take = |counters: &[AtomicU64]| -> Vec<u64> {
        counters
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect()
    };
    take(&wire.queries);
    take(&wire.rows);
    let (mut costs, mut after) = (Vec::new(), None);
    loop {
        let page = block_on(scan::<M, Counting>(db, after, limit)).unwrap();
        let (queries, rows) = (take(&wire.queries), take(&wire.rows));
        costs.push(PageCost {
            queries: queries.iter().sum(),
            rows: rows.iter().sum(),
            most_queries: queries.into_iter().max().unwrap(),
            most_rows: rows.into_iter().max().unwrap(),
        });
        match page.next {
            Some(next) => after = Some(next),
            None => return costs,
        }
    }
}

#[test]
fn evenly_spread_keys_cost_one_round_and_little_more_than_a_page() {
    let dir = tempfile::tempdir().unwrap();
    let keys = int_keys(10_000);
    {
        let db = open(dir.path(), 3);
        let rows: Vec<Item> = keys.iter().map(|&id| item(id)).collect();
        block_on(load(&db, &rows, Placement::Hash));
    }
    let (db, wire) = counting(dir.path(), 3);
    for limit in [10, 100, 1000] {
        let costs = cost_per_page::<Item>(&db, &wire, limit);
        let full = &costs[..costs.len() - 1];
        let mean =
            |f: fn(&PageCost) -> u64| full.iter().map(f).sum::<u64>() as f64 / full.len() as f64;
        assert!(costs.iter().all(|c| c.most_queries <= 2), "limit {limit}");
        // One query per shard, and rarely a second round on one of them.
        let queries = mean(|c| c.queries);
        assert!(
            queries <= 3.5,
            "limit {limit}: {queries:.2} queries per page"
        );
        // The old scan fetched 3 * (limit + 1) rows per page.
        let rows = mean(|c| c.rows);
        let ceiling = limit as f64 + 2.5 * (3.0 * limit as f64).sqrt() + 6.0;
        assert!(
            rows <= ceiling,
            "limit {limit}: {rows:.1} rows per page fetched, expected at most {ceiling:.1}"
        );
    }
}

#[test]
fn skewed_keys_ask_each_shard_at_most_twice_per_page() {
    let keys = int_keys(3000);
    let rows: Vec<Item> = keys.iter().map(|&id| item(id)).collect();
    for placement in Placement::ALL {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(dir.path(), placement.shards());
            block_on(load(&db, &rows, placement));
        }
        let (db, wire) = counting(dir.path(), placement.shards());
        for limit in LIMITS {
            for cost in cost_per_page::<Item>(&db, &wire, limit) {
                assert!(
                    cost.most_queries <= 2,
                    "{placement:?}, limit {limit}: a shard asked {} times for one page",
                    cost.most_queries
                );
                assert!(
                    cost.most_rows <= 2 * limit as u64 + 2,
                    "{placement:?}, limit {limit}: a shard returned {} rows for one page",
                    cost.most_rows
                );
            }
        }
    }
}

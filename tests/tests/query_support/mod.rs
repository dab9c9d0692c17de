//! Shared by the typed-query tests: a model, random data, random filters written both with the
//! typed API and by hand in SQL, and the oracle (one SQLite file holding every row).

#![allow(dead_code)]

use collegedb::{CollegeDb, Embedded, Filter, Sharded, Value};
use pollster::block_on;
use rusqlite::{params_from_iter, Connection};

#[derive(Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "people")]
pub struct Person {
    #[sharded(key)]
    pub id: i64,
    pub name: String,
    pub age: i64,
    pub score: Option<f64>,
    pub city: Option<String>,
}

/// A deterministic pseudo-random sequence (xorshift), so failures reproduce.
pub struct Random(pub u64);

impl Random {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub const NAMES: [&str; 8] = [
    "ada",
    "Bob",
    "bobby",
    "c_d",
    "50%",
    "O'Brien",
    "zoë",
    "back\\slash",
];
pub const CITIES: [&str; 4] = ["Paris", "paris", "Lagos", "Lima"];

pub fn people(random: &mut Random, n: usize) -> Vec<Person> {
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
pub fn oracle(rows: &[Person]) -> Connection {
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
pub struct Case {
    pub filter: Filter<Person>,
    pub sql: String,
    pub params: Vec<Value>,
}

pub fn leaf(random: &mut Random, ids: &[i64]) -> Case {
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

pub fn filter(random: &mut Random, ids: &[i64], depth: u32) -> Case {
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

pub fn oracle_ids(conn: &Connection, sql: &str, params: &[Value]) -> Vec<i64> {
    let mut stmt = conn.prepare(sql).unwrap();
    let rows = stmt
        .query_map(params_from_iter(params.iter().map(to_sql)), |row| {
            row.get(0)
        })
        .unwrap();
    rows.collect::<rusqlite::Result<_>>().unwrap()
}

pub fn to_sql(value: &Value) -> rusqlite::types::Value {
    match value {
        Value::Null => rusqlite::types::Value::Null,
        Value::Integer(i) => rusqlite::types::Value::Integer(*i),
        Value::Real(f) => rusqlite::types::Value::Real(*f),
        Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
        Value::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
    }
}

pub fn load(db: &CollegeDb<Embedded>, rows: &[Person]) {
    block_on(async {
        Person::create_table(db).await.unwrap();
        Person::insert_many(db, rows).await.unwrap();
    });
}

pub fn same_number(a: &Value, b: &rusqlite::types::Value) -> bool {
    use rusqlite::types::Value as S;
    match (a, b) {
        (Value::Null, S::Null) => true,
        (Value::Integer(x), S::Integer(y)) => x == y,
        (Value::Text(x), S::Text(y)) => x == y,
        (Value::Real(x), S::Real(y)) => (x - y).abs() <= 1e-9 * y.abs().max(1.0),
        _ => false,
    }
}

/// One row as a tuple, to compare whole tables.
pub type StateRow = (i64, String, i64, Option<f64>, Option<String>);

pub fn table_state(conn: &Connection) -> Vec<StateRow> {
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

pub fn sharded_state(db: &CollegeDb<Embedded>) -> Vec<StateRow> {
    block_on(Person::query().all(db))
        .unwrap()
        .into_iter()
        .map(|p| (p.id, p.name, p.age, p.score, p.city))
        .collect()
}

#[derive(collegedb::Sharded)]
#[sharded(table = "readings")]
struct Reading {
    #[sharded(key)]
    id: f64,
    value: f64,
}

fn main() {}

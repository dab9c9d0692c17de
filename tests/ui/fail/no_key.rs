#[derive(collegedb::Sharded)]
#[sharded(table = "users")]
struct User {
    id: String,
    name: String,
}

fn main() {}

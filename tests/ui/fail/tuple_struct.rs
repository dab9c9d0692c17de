#[derive(collegedb::Sharded)]
#[sharded(table = "users")]
struct User(#[sharded(key)] String, String);

fn main() {}

use std::collections::HashMap;

#[derive(collegedb::Sharded)]
#[sharded(table = "users")]
struct User {
    #[sharded(key)]
    id: String,
    tags: HashMap<String, String>,
}

fn main() {}

#[derive(collegedb::Sharded)]
#[sharded(table = "users", strategy = "hash", write = "random", table = "people")]
struct User {
    #[sharded(key, json)]
    id: String,
}

fn main() {}

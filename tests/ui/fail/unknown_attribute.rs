#[derive(collegedb::Sharded)]
#[sharded(table = "users", shards = 3)]
struct User {
    #[sharded(key)]
    id: String,
    #[sharded(index)]
    email: String,
}

fn main() {}

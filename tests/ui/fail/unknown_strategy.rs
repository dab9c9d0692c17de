#[derive(collegedb::Sharded)]
#[sharded(table = "users", read = "hash", write = "round_robin")]
struct User {
    #[sharded(key)]
    id: String,
}

fn main() {}

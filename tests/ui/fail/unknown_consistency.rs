#[derive(collegedb::Sharded)]
#[sharded(table = "users", consistency = "replica")]
struct User {
    #[sharded(key)]
    id: String,
}

fn main() {}

#[derive(collegedb::Sharded)]
#[sharded(table = "users")]
struct User {
    #[sharded(key)]
    id: String,
    #[sharded(key)]
    email: String,
}

fn main() {}

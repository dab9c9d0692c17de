#[derive(collegedb::Sharded)]
#[sharded(table = "users; DROP TABLE x")]
struct User {
    #[sharded(key)]
    id: String,
    #[sharded(column = "e mail")]
    email: String,
}

fn main() {}

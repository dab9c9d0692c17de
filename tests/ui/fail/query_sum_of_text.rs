#[derive(collegedb::Sharded)]
#[sharded(table = "users")]
struct User {
    #[sharded(key)]
    id: String,
    name: String,
}

fn main() {
    let _ = collegedb::query::Aggregate::sum(User::fields().name());
}

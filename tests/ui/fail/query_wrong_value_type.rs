#[derive(collegedb::Sharded)]
#[sharded(table = "users")]
struct User {
    #[sharded(key)]
    id: String,
    age: i64,
}

fn main() {
    let _ = User::query().filter(User::fields().age().eq("forty"));
}

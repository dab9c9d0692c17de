#[derive(collegedb::Sharded)]
#[sharded(table = "users")]
struct User {
    #[sharded(key)]
    id: i64,
    name: Option<String>,
}

fn main() {
    let f = User::fields();
    let _ = f.name().contains("ok");
    let _ = f.id().contains("1");
}

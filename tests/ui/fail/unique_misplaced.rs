#[derive(collegedb::Sharded)]
#[sharded(table = "users")]
struct User {
    #[sharded(key, unique)]
    id: String,
    #[sharded(json, unique)]
    prefs: Vec<String>,
}

fn main() {}

#[derive(serde::Serialize, serde::Deserialize)]
struct Prefs {
    theme: String,
}

#[derive(collegedb::Sharded)]
#[sharded(table = "users")]
struct User {
    #[sharded(key)]
    id: String,
    #[sharded(json)]
    prefs: Prefs,
    meta: serde_json::Value,
}

fn main() {
    let _ = User::query().order_by(User::fields().prefs().asc());
    let _ = User::query().filter(User::fields().meta().eq(serde_json::Value::Null));
}

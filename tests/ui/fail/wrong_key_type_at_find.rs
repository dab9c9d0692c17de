#[derive(collegedb::Sharded)]
#[sharded(table = "users")]
struct User {
    #[sharded(key)]
    id: String,
}

async fn lookup(db: &collegedb::EmbeddedDb) {
    let _ = User::find(db, 42).await;
}

fn main() {}

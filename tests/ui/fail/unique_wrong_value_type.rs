#[derive(collegedb::Sharded)]
#[sharded(table = "users")]
struct User {
    #[sharded(key)]
    id: i64,
    #[sharded(unique)]
    email: String,
}

async fn lookup(db: &collegedb::EmbeddedDb) {
    let _ = User::find_by_email(db, 42).await;
}

fn main() {}

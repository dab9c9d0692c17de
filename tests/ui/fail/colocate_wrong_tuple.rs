#[derive(collegedb::Sharded)]
#[sharded(table = "users")]
struct User {
    #[sharded(key)]
    id: String,
}

#[derive(collegedb::Sharded)]
#[sharded(table = "posts", colocate = User)]
struct Post {
    #[sharded(shard_key)]
    author: String,
    #[sharded(key)]
    id: i64,
}

async fn lookups(db: &collegedb::EmbeddedDb) {
    // The parent's key first, then the post's own.
    let _ = Post::find(db, (7, "alice")).await;
    // The whole key, not the parent's alone.
    let _ = Post::find(db, "alice").await;
}

fn main() {}

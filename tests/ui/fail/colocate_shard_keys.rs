#[derive(collegedb::Sharded)]
#[sharded(table = "users")]
struct User {
    #[sharded(key)]
    id: String,
}

// Two shard keys.
#[derive(collegedb::Sharded)]
#[sharded(table = "posts", colocate = User)]
struct Post {
    #[sharded(shard_key)]
    author: String,
    #[sharded(shard_key)]
    editor: String,
    #[sharded(key)]
    id: i64,
}

// None, and its own strategy.
#[derive(collegedb::Sharded)]
#[sharded(table = "likes", colocate = User, strategy = "hash")]
struct Like {
    user: String,
    #[sharded(key)]
    id: i64,
}

// A shard key without a parent.
#[derive(collegedb::Sharded)]
#[sharded(table = "tags")]
struct Tag {
    #[sharded(shard_key)]
    owner: String,
    #[sharded(key)]
    id: i64,
}

fn main() {}

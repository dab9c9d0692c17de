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
    author: i64,
    #[sharded(key)]
    id: i64,
}

fn main() {}

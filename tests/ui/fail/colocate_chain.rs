// Groups are one level deep: a model cannot be colocated with a colocated model.
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

#[derive(collegedb::Sharded)]
#[sharded(table = "comments", colocate = Post)]
struct Comment {
    #[sharded(shard_key)]
    post: String,
    #[sharded(key)]
    id: i64,
}

fn main() {}

struct Account {
    id: String,
}

#[derive(collegedb::Sharded)]
#[sharded(table = "posts", colocate = Account)]
struct Post {
    #[sharded(shard_key)]
    author: String,
    #[sharded(key)]
    id: i64,
}

fn main() {}

#[derive(collegedb::Sharded)]
struct UserProfile {
    #[sharded(key)]
    id: String,
}

fn main() {}

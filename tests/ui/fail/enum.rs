#[derive(collegedb::Sharded)]
#[sharded(table = "users")]
enum User {
    Guest,
    Member { id: String },
}

fn main() {}

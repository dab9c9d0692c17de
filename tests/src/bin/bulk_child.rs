//! A child process for the crash tests of `insert_many`: imports `Note` rows into an embedded
//! database, so that the test can kill it with SIGKILL at any point and then inspect the files.
//!
//! ```text
//! bulk-child <folder> <rows> <strict|idempotent>
//! ```
//!
//! Prints `done <inserted> <already present>` when the import finishes, or `error <code>`.

use collegedb_tests::{open, Note};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, folder, rows, mode] = args.as_slice() else {
        eprintln!("usage: bulk-child <folder> <rows> <strict|idempotent>");
        std::process::exit(2);
    };
    let rows: usize = rows.parse().expect("row count");
    let notes: Vec<Note> = (0..rows).map(Note::numbered).collect();
    let db = open(std::path::Path::new(folder), 3);
    let result = pollster::block_on(async {
        Note::create_table(&db).await?;
        match mode.as_str() {
            "strict" => Note::insert_many(&db, &notes).await.map(|n| (n, 0)),
            _ => Note::insert_many_idempotent(&db, &notes)
                .await
                .map(|r| (r.inserted, r.already_present)),
        }
    });
    match result {
        Ok((inserted, present)) => println!("done {inserted} {present}"),
        Err(error) => {
            println!("error {}", error.code());
            std::process::exit(1);
        }
    }
}

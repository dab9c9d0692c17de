//! Every supported attribute form and column type compiles, and the generated API is usable
//! through a type alias, inside a module, with no `use` of collegedb items.

mod models {
    #[derive(serde::Serialize, serde::Deserialize, Default)]
    pub struct Settings {
        pub dark: bool,
    }

    #[derive(collegedb::Sharded)]
    #[sharded(table = "defaults")]
    pub struct Defaults {
        #[sharded(key)]
        pub id: i64,
    }

    #[derive(collegedb::Sharded)]
    #[sharded(table = "uniform", strategy = "round-robin")]
    pub struct Uniform {
        #[sharded(key)]
        pub id: u32,
        pub name: String,
    }

    #[derive(collegedb::Sharded)]
    #[sharded(table = "mixed", read = "hash", write = "location")]
    pub struct Mixed {
        #[sharded(key)]
        pub id: i32,
        pub a: String,
        pub b: i64,
        pub c: i32,
        pub d: u32,
        pub e: f64,
        pub f: bool,
        pub g: Vec<u8>,
        pub h: Option<String>,
        pub i: Option<i64>,
        pub j: serde_json::Value,
        #[sharded(json)]
        pub k: Settings,
        #[sharded(json, column = "maybe_settings")]
        pub l: Option<Settings>,
        pub m: f32,
        pub n: i16,
        pub o: u8,
    }

    #[derive(collegedb::Sharded)]
    #[sharded(read = "random", consistency = "primary")]
    #[sharded(write = "random", table = "split_attributes")]
    pub struct Split {
        #[sharded(column = "identifier")]
        #[sharded(key)]
        pub r#type: String,
    }
}

type Db = collegedb::CollegeDb<collegedb::Embedded>;

async fn use_everything(db: &Db) -> collegedb::Result<()> {
    models::Mixed::create_table(db).await?;
    models::Uniform::create_table(db).await?;
    models::Split::create_table(db).await?;
    models::Defaults::create_table(db).await?;
    let _: Option<models::Mixed> = models::Mixed::find(db, 1i32).await?;
    let _: Option<models::Mixed> = models::Mixed::find(db, 1u8).await?;
    let _: bool = models::Uniform::delete(db, 7u32).await?;
    const _: () = assert!(<models::Split as collegedb::Model>::PRIMARY_READS);
    const _: () = assert!(!<models::Mixed as collegedb::Model>::PRIMARY_READS);
    let _: Option<models::Split> = models::Split::find(db, "x").await?;
    let _: Option<models::Split> = models::Split::find(&db.on_primary(), "x").await?;
    let _: Option<models::Split> = models::Split::find(db, String::from("x")).await?;
    let _: u64 = models::Defaults::count(db).await?;
    let _: Option<String> = models::Defaults::locate(db, 5).await?;
    Ok(())
}

fn assert_send<T: Send>(_: &T) {}

fn main() {
    let dir = std::env::temp_dir().join(format!("collegedb-ui-pass-{}", std::process::id()));
    let db = Db::open_embedded(collegedb::Config::with_shard_names(["a"]), &dir).unwrap();
    // The generated futures are Send natively, so they run inside multi-threaded runtimes.
    let future = use_everything(&db);
    assert_send(&future);
    pollster::block_on(future).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

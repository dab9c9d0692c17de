const _: () = {
    use ::collegedb::__private as __cdb;
    const _: () = __cdb::assert_shard_key::<String>();
    const _: () = __cdb::assert_column::<String>();
    const _: () = __cdb::assert_column::<String>();
    const _: () = __cdb::assert_column::<Option<String>>();
    impl __cdb::Model for User {
        type Key = String;
        type Id = String;
        const TABLE: &'static str = "users";
        const COLUMNS: &'static [__cdb::ColumnDef] = &[
            __cdb::ColumnDef {
                name: "id",
                ty: <String as __cdb::ColumnValue>::COLUMN_TYPE,
                nullable: <String as __cdb::ColumnValue>::NULLABLE,
            },
            __cdb::ColumnDef {
                name: "name",
                ty: <String as __cdb::ColumnValue>::COLUMN_TYPE,
                nullable: <String as __cdb::ColumnValue>::NULLABLE,
            },
            __cdb::ColumnDef {
                name: "mail",
                ty: <Option<String> as __cdb::ColumnValue>::COLUMN_TYPE,
                nullable: <Option<String> as __cdb::ColumnValue>::NULLABLE,
            },
            __cdb::ColumnDef {
                name: "prefs",
                ty: __cdb::ColumnType::Text,
                nullable: false,
            },
        ];
        const KEY_INDEX: usize = 0usize;
        const ID_COLUMNS: &'static [usize] = &[0usize];
        const STRATEGY: __cdb::StrategyOverride = __cdb::StrategyOverride {
            read: ::core::option::Option::Some(__cdb::Strategy::Hash),
            write: ::core::option::Option::Some(__cdb::Strategy::Location),
        };
        const PRIMARY_READS: bool = false;
        const UNIQUE: &'static [usize] = &[];
        fn key(&self) -> &Self::Key {
            &self.id
        }
        fn to_values(&self) -> __cdb::Result<__cdb::Vec<__cdb::Value>> {
            let values: [__cdb::Value; 4usize] = [
                <String as __cdb::ColumnValue>::to_value(&self.id)?,
                <String as __cdb::ColumnValue>::to_value(&self.name)?,
                <Option<String> as __cdb::ColumnValue>::to_value(&self.email)?,
                __cdb::json::to_value(&self.prefs)?,
            ];
            ::core::result::Result::Ok(__cdb::Vec::from(values))
        }
        fn from_values(values: __cdb::Vec<__cdb::Value>) -> __cdb::Result<Self> {
            let mut values = values.into_iter();
            ::core::result::Result::Ok(Self {
                id: __cdb::column::<String>(&mut values, "id")?,
                name: __cdb::column::<String>(&mut values, "name")?,
                email: __cdb::column::<Option<String>>(&mut values, "mail")?,
                prefs: __cdb::json_column::<Prefs>(&mut values, "prefs")?,
            })
        }
        fn sql() -> &'static __cdb::ModelSql {
            static SQL: __cdb::OnceLock<__cdb::ModelSql> = __cdb::OnceLock::new();
            SQL.get_or_init(__cdb::ModelSql::render::<Self>)
        }
    }
    impl User {
        ///Creates the `users` table on every shard if it does not exist.
        pub async fn create_table<B: __cdb::Backend>(
            db: &__cdb::CollegeDb<B>,
        ) -> __cdb::Result<()> {
            __cdb::crud::create_table::<Self, B>(db).await
        }
        ///Inserts a new `users` row, placed by the model's write strategy.
        pub async fn insert<B: __cdb::Backend>(
            db: &__cdb::CollegeDb<B>,
            row: &Self,
        ) -> __cdb::Result<()> {
            __cdb::crud::insert::<Self, B>(db, row).await
        }
        ///Inserts many new `users` rows: every row is validated first, then each shard's rows are written in one transaction. See `collegedb::bulk` for what is atomic.
        pub async fn insert_many<B: __cdb::Backend>(
            db: &__cdb::CollegeDb<B>,
            rows: &[Self],
        ) -> __cdb::Result<usize> {
            __cdb::bulk::insert_many::<Self, B>(db, rows).await
        }
        ///Inserts the `users` rows not present yet, skipping rows already present with equal content; safe to run again with the same input to finish an interrupted import.
        pub async fn insert_many_idempotent<B: __cdb::Backend>(
            db: &__cdb::CollegeDb<B>,
            rows: &[Self],
        ) -> __cdb::Result<__cdb::bulk::InsertReport> {
            __cdb::bulk::insert_many_idempotent::<Self, B>(db, rows).await
        }
        ///Finds the `users` row with this key, or `None`.
        pub async fn find<B: __cdb::Backend>(
            db: &__cdb::CollegeDb<B>,
            key: impl __cdb::KeyArg<String>,
        ) -> __cdb::Result<::core::option::Option<Self>> {
            __cdb::crud::find::<Self, B>(db, <_ as __cdb::KeyArg<String>>::into_arg(key))
                .await
        }
        ///Updates every column of an existing `users` row.
        pub async fn update<B: __cdb::Backend>(
            db: &__cdb::CollegeDb<B>,
            row: &Self,
        ) -> __cdb::Result<()> {
            __cdb::crud::update::<Self, B>(db, row).await
        }
        ///Inserts the `users` row, or updates it where it lives.
        pub async fn upsert<B: __cdb::Backend>(
            db: &__cdb::CollegeDb<B>,
            row: &Self,
        ) -> __cdb::Result<()> {
            __cdb::crud::upsert::<Self, B>(db, row).await
        }
        ///Deletes the `users` row with this key; returns whether one was deleted.
        pub async fn delete<B: __cdb::Backend>(
            db: &__cdb::CollegeDb<B>,
            key: impl __cdb::KeyArg<String>,
        ) -> __cdb::Result<bool> {
            __cdb::crud::delete::<
                Self,
                B,
            >(db, <_ as __cdb::KeyArg<String>>::into_arg(key))
                .await
        }
        ///Counts `users` rows over every shard.
        pub async fn count<B: __cdb::Backend>(
            db: &__cdb::CollegeDb<B>,
        ) -> __cdb::Result<u64> {
            __cdb::crud::count::<Self, B>(db).await
        }
        ///Reads `users` rows in key order across every shard, `limit` at a time, after the key `after`.
        pub async fn scan<B: __cdb::Backend>(
            db: &__cdb::CollegeDb<B>,
            after: ::core::option::Option<String>,
            limit: usize,
        ) -> __cdb::Result<__cdb::scan::Page<Self>> {
            __cdb::scan::scan::<Self, B>(db, after, limit).await
        }
        ///The name of the shard that holds this `users` key's row, if any.
        pub async fn locate<B: __cdb::Backend>(
            db: &__cdb::CollegeDb<B>,
            key: impl __cdb::KeyArg<String>,
        ) -> __cdb::Result<::core::option::Option<::std::string::String>> {
            __cdb::crud::locate::<
                Self,
                B,
            >(db, <_ as __cdb::KeyArg<String>>::into_arg(key))
                .await
        }
    }
};
///Typed handles on the columns of `users`, for filters and ordering: `User::fields()`.
#[derive(Clone, Copy, Debug, Default)]
struct UserFields {
    _private: (),
}
impl UserFields {
    ///The `id` column of `users`.
    #[inline]
    pub fn id(&self) -> ::collegedb::__private::Column<User, String> {
        ::collegedb::__private::Column::new("id", 0usize)
    }
    ///The `name` column of `users`.
    #[inline]
    pub fn name(&self) -> ::collegedb::__private::Column<User, String> {
        ::collegedb::__private::Column::new("name", 1usize)
    }
    ///The `mail` column of `users`.
    #[inline]
    pub fn email(&self) -> ::collegedb::__private::Column<User, Option<String>> {
        ::collegedb::__private::Column::new("mail", 2usize)
    }
    ///The `prefs` column of `users`.
    #[inline]
    pub fn prefs(
        &self,
    ) -> ::collegedb::__private::Column<User, ::collegedb::__private::Json> {
        ::collegedb::__private::Column::new("prefs", 3usize)
    }
}
impl User {
    ///Typed handles on the columns of `users`.
    #[inline]
    pub fn fields() -> UserFields {
        UserFields { _private: () }
    }
    ///A query over `users` rows on every shard: add `filter`, `order_by`, `limit`, then run it with `all`, `first`, `count` or `exists`.
    pub fn query() -> ::collegedb::__private::Query<Self> {
        ::collegedb::__private::Query::new()
    }
}

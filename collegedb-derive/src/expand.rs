//! Generates code from a validated [`Model`]: an implementation of `collegedb::Model` (data only)
//! and typed methods that forward to the runtime's generic CRUD.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use crate::schema::{Field, Model};

fn strategy(name: &Option<String>) -> TokenStream {
    let variant = match name.as_deref() {
        None => return quote!(::core::option::Option::None),
        Some("hash") => format_ident!("Hash"),
        Some("round-robin") => format_ident!("RoundRobin"),
        Some("random") => format_ident!("Random"),
        Some(_) => format_ident!("Location"),
    };
    quote!(::core::option::Option::Some(__cdb::Strategy::#variant))
}

fn column_def(field: &Field) -> TokenStream {
    let (name, ty) = (&field.column, &field.ty);
    if field.json {
        quote! {
            __cdb::ColumnDef { name: #name, ty: __cdb::ColumnType::Text, nullable: false }
        }
    } else {
        quote! {
            __cdb::ColumnDef {
                name: #name,
                ty: <#ty as __cdb::ColumnValue>::COLUMN_TYPE,
                nullable: <#ty as __cdb::ColumnValue>::NULLABLE,
            }
        }
    }
}

fn to_value(field: &Field) -> TokenStream {
    let (ident, ty) = (&field.ident, &field.ty);
    if field.json {
        quote!(__cdb::json::to_value(&self.#ident)?)
    } else {
        quote!(<#ty as __cdb::ColumnValue>::to_value(&self.#ident)?)
    }
}

fn from_value(field: &Field) -> TokenStream {
    let (ident, ty, column) = (&field.ident, &field.ty, &field.column);
    if field.json {
        quote!(#ident: __cdb::json_column::<#ty>(&mut values, #column)?)
    } else {
        quote!(#ident: __cdb::column::<#ty>(&mut values, #column)?)
    }
}

/// Type assertions spanned at each field's type, so an unsupported type is reported there.
fn assertions(model: &Model) -> TokenStream {
    let key = model.key();
    let key_ty = &key.ty;
    let mut key_check = quote_spanned! {key_ty.span()=>
        const _: () = __cdb::assert_shard_key::<#key_ty>();
    };
    if let Some(parent) = &model.colocate {
        let route_ty = &model.route().ty;
        key_check.extend(quote_spanned! {route_ty.span()=>
            const _: () = __cdb::assert_same_key::<#route_ty, <#parent as __cdb::Model>::Key>();
        });
        key_check.extend(quote_spanned! {parent.span()=>
            const _: () = __cdb::assert_not_colocated::<#parent>();
        });
    }
    let column_checks = model.fields.iter().filter(|f| !f.json).map(|field| {
        let ty = &field.ty;
        quote_spanned! {ty.span()=>
            const _: () = __cdb::assert_column::<#ty>();
        }
    });
    quote!(#key_check #(#column_checks)*)
}

/// `find_by_<field>`: the row whose unique field holds a value.
fn find_by(model: &Model, index: usize, field: &Field) -> TokenStream {
    let (ident, ty) = (&field.ident, &field.ty);
    let name = format_ident!("find_by_{}", ident.to_string().trim_start_matches("r#"));
    let doc = format!(
        "Finds the `{}` row whose `{}` is this value, or `None`: one directory read and one shard query, never a scan.",
        model.table, field.column
    );
    // Spanned at the field's type, so an unsupported type is reported there, once.
    let find = quote_spanned!(ty.span()=> __cdb::unique::find_by::<Self, B, #ty>);
    quote! {
        #[doc = #doc]
        pub async fn #name<B: __cdb::Backend>(
            db: &__cdb::CollegeDb<B>,
            value: impl ::core::convert::Into<#ty>,
        ) -> __cdb::Result<::core::option::Option<Self>> {
            #find(db, #index, value.into()).await
        }
    }
}

pub fn model(model: &Model) -> TokenStream {
    let ident = &model.ident;
    let table = &model.table;
    let key = model.key();
    let route = model.route();
    let (route_ident, route_ty) = (&route.ident, &route.ty);
    let key_ty = &key.ty;
    let route_index = model.route_index();
    let key_index = model.key_index;
    let read = strategy(&model.read);
    let write = strategy(&model.write);
    let strategies = match &model.colocate {
        Some(parent) => quote!(<#parent as __cdb::Model>::STRATEGY),
        None => quote! {
            __cdb::StrategyOverride {
                read: #read,
                write: #write,
            }
        },
    };
    let (id_ty, id_columns, scope) = match &model.colocate {
        Some(parent) => (
            quote!((#route_ty, #key_ty)),
            quote!(&[#route_index, #key_index]),
            quote!(const SCOPE: &'static str = <#parent as __cdb::Model>::TABLE;),
        ),
        None => (quote!(#key_ty), quote!(&[#key_index]), quote!()),
    };
    let primary_reads = model.primary_reads;
    let columns = model.fields.iter().map(column_def);
    let to_values = model.fields.iter().map(to_value);
    let from_values = model.fields.iter().map(from_value);
    let assertions = assertions(model);
    let unique: Vec<usize> = (0..model.fields.len())
        .filter(|&i| model.fields[i].unique)
        .collect();
    let finders = model
        .fields
        .iter()
        .enumerate()
        .filter(|(_, f)| f.unique)
        .map(|(index, field)| find_by(model, index, field));
    let count = model.fields.len();
    // Spanned at the key type, so a bad key type is reported at the field, not at the derive. A
    // colocated model's rows are identified by `(parent key, own key)`.
    let (key_arg, into_key) = match &model.colocate {
        None => (
            quote_spanned!(key_ty.span()=> impl __cdb::KeyArg<#key_ty>),
            quote_spanned!(key_ty.span()=> <_ as __cdb::KeyArg<#key_ty>>::into_arg(key)),
        ),
        Some(_) => (
            quote_spanned! {key_ty.span()=>
                (impl __cdb::KeyArg<#route_ty>, impl __cdb::KeyArg<#key_ty>)
            },
            quote_spanned! {key_ty.span()=>
                (
                    <_ as __cdb::KeyArg<#route_ty>>::into_arg(key.0),
                    <_ as __cdb::KeyArg<#key_ty>>::into_arg(key.1),
                )
            },
        ),
    };
    let scan = match &model.colocate {
        None => {
            let doc_scan = format!(
                "Reads `{table}` rows in key order across every shard, `limit` at a time, after the key `after`."
            );
            quote! {
                #[doc = #doc_scan]
                pub async fn scan<B: __cdb::Backend>(
                    db: &__cdb::CollegeDb<B>,
                    after: ::core::option::Option<#key_ty>,
                    limit: usize,
                ) -> __cdb::Result<__cdb::scan::Page<Self>> {
                    __cdb::scan::scan::<Self, B>(db, after, limit).await
                }
            }
        }
        Some(_) => {
            let doc = format!(
                "A query over the `{table}` rows of one parent key: they share its shard, so it runs there alone."
            );
            let field = &route.ident;
            quote! {
                #[doc = #doc]
                pub fn query_for(
                    key: impl __cdb::KeyArg<#route_ty>,
                ) -> __cdb::Query<Self> {
                    let key = <_ as __cdb::KeyArg<#route_ty>>::into_arg(key);
                    Self::query().filter(Self::fields().#field().eq(key))
                }
            }
        }
    };

    let doc_find = format!("Finds the `{table}` row with this key, or `None`.");
    let doc_insert = format!("Inserts a new `{table}` row, placed by the model's write strategy.");
    let doc_insert_many = format!(
        "Inserts many new `{table}` rows: every row is validated first, then each shard's rows are written in one transaction. See `collegedb::bulk` for what is atomic."
    );
    let doc_insert_many_idempotent = format!(
        "Inserts the `{table}` rows not present yet, skipping rows already present with equal content; safe to run again with the same input to finish an interrupted import."
    );
    let doc_update = format!("Updates every column of an existing `{table}` row.");
    let doc_upsert = format!("Inserts the `{table}` row, or updates it where it lives.");
    let doc_delete =
        format!("Deletes the `{table}` row with this key; returns whether one was deleted.");
    let doc_create = format!("Creates the `{table}` table on every shard if it does not exist.");
    let doc_count = format!("Counts `{table}` rows over every shard.");
    let doc_locate = format!("The name of the shard that holds this `{table}` key's row, if any.");

    quote! {
        const _: () = {
            use ::collegedb::__private as __cdb;

            #assertions

            impl __cdb::Model for #ident {
                type Key = #route_ty;
                type Id = #id_ty;
                const TABLE: &'static str = #table;
                const COLUMNS: &'static [__cdb::ColumnDef] = &[#(#columns),*];
                const KEY_INDEX: usize = #route_index;
                const ID_COLUMNS: &'static [usize] = #id_columns;
                #scope
                const STRATEGY: __cdb::StrategyOverride = #strategies;
                const PRIMARY_READS: bool = #primary_reads;
                const UNIQUE: &'static [usize] = &[#(#unique),*];

                fn key(&self) -> &Self::Key {
                    &self.#route_ident
                }

                fn to_values(&self) -> __cdb::Result<__cdb::Vec<__cdb::Value>> {
                    let values: [__cdb::Value; #count] = [#(#to_values),*];
                    ::core::result::Result::Ok(__cdb::Vec::from(values))
                }

                fn from_values(values: __cdb::Vec<__cdb::Value>) -> __cdb::Result<Self> {
                    let mut values = values.into_iter();
                    ::core::result::Result::Ok(Self { #(#from_values),* })
                }

                fn sql() -> &'static __cdb::ModelSql {
                    static SQL: __cdb::OnceLock<__cdb::ModelSql> = __cdb::OnceLock::new();
                    SQL.get_or_init(__cdb::ModelSql::render::<Self>)
                }
            }

            impl #ident {
                #[doc = #doc_create]
                pub async fn create_table<B: __cdb::Backend>(
                    db: &__cdb::CollegeDb<B>,
                ) -> __cdb::Result<()> {
                    __cdb::crud::create_table::<Self, B>(db).await
                }

                #[doc = #doc_insert]
                pub async fn insert<B: __cdb::Backend>(
                    db: &__cdb::CollegeDb<B>,
                    row: &Self,
                ) -> __cdb::Result<()> {
                    __cdb::crud::insert::<Self, B>(db, row).await
                }

                #[doc = #doc_insert_many]
                pub async fn insert_many<B: __cdb::Backend>(
                    db: &__cdb::CollegeDb<B>,
                    rows: &[Self],
                ) -> __cdb::Result<usize> {
                    __cdb::bulk::insert_many::<Self, B>(db, rows).await
                }

                #[doc = #doc_insert_many_idempotent]
                pub async fn insert_many_idempotent<B: __cdb::Backend>(
                    db: &__cdb::CollegeDb<B>,
                    rows: &[Self],
                ) -> __cdb::Result<__cdb::bulk::InsertReport> {
                    __cdb::bulk::insert_many_idempotent::<Self, B>(db, rows).await
                }

                #[doc = #doc_find]
                pub async fn find<B: __cdb::Backend>(
                    db: &__cdb::CollegeDb<B>,
                    key: #key_arg,
                ) -> __cdb::Result<::core::option::Option<Self>> {
                    __cdb::crud::find::<Self, B>(db, #into_key).await
                }

                #[doc = #doc_update]
                pub async fn update<B: __cdb::Backend>(
                    db: &__cdb::CollegeDb<B>,
                    row: &Self,
                ) -> __cdb::Result<()> {
                    __cdb::crud::update::<Self, B>(db, row).await
                }

                #[doc = #doc_upsert]
                pub async fn upsert<B: __cdb::Backend>(
                    db: &__cdb::CollegeDb<B>,
                    row: &Self,
                ) -> __cdb::Result<()> {
                    __cdb::crud::upsert::<Self, B>(db, row).await
                }

                #[doc = #doc_delete]
                pub async fn delete<B: __cdb::Backend>(
                    db: &__cdb::CollegeDb<B>,
                    key: #key_arg,
                ) -> __cdb::Result<bool> {
                    __cdb::crud::delete::<Self, B>(db, #into_key).await
                }

                #[doc = #doc_count]
                pub async fn count<B: __cdb::Backend>(
                    db: &__cdb::CollegeDb<B>,
                ) -> __cdb::Result<u64> {
                    __cdb::crud::count::<Self, B>(db).await
                }

                #scan

                #[doc = #doc_locate]
                pub async fn locate<B: __cdb::Backend>(
                    db: &__cdb::CollegeDb<B>,
                    key: #key_arg,
                ) -> __cdb::Result<::core::option::Option<::std::string::String>> {
                    __cdb::crud::locate::<Self, B>(db, #into_key).await
                }

                #(#finders)*
            }
        };
    }
}

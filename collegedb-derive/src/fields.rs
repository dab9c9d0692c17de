//! Generates the typed column handles: `User::fields()` returns a `UserFields` value with one
//! method per field, each returning a `collegedb::query::Column<User, FieldType>` (fields marked
//! `json` get `Column<User, Json>`, which neither compares nor orders), and `User::query()`.
//!
//! The handles type-check every comparison: the runtime's `Operand<T>` trait is implemented
//! only for values of the field's type, so `fields().age().eq("x")` fails to compile.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::schema::Model;

pub fn expand(model: &Model) -> TokenStream {
    let ident = &model.ident;
    let vis = &model.vis;
    let table = &model.table;
    let fields_ident = format_ident!("{}Fields", ident);
    let methods = model.fields.iter().enumerate().map(|(index, field)| {
        let (name, column) = (&field.ident, &field.column);
        let ty = if field.json {
            quote!(::collegedb::__private::Json)
        } else {
            let ty = &field.ty;
            quote!(#ty)
        };
        let doc = format!("The `{column}` column of `{table}`.");
        quote! {
            #[doc = #doc]
            #[inline]
            pub fn #name(&self) -> ::collegedb::__private::Column<#ident, #ty> {
                ::collegedb::__private::Column::new(#column, #index)
            }
        }
    });
    let doc_fields = format!(
        "Typed handles on the columns of `{table}`, for filters and ordering: `{ident}::fields()`."
    );
    let doc_fields_fn = format!("Typed handles on the columns of `{table}`.");
    let doc_query = format!(
        "A query over `{table}` rows on every shard: add `filter`, `order_by`, `limit`, then run it with `all`, `first`, `count` or `exists`."
    );
    quote! {
        #[doc = #doc_fields]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #fields_ident {
            _private: (),
        }

        impl #fields_ident {
            #(#methods)*
        }

        impl #ident {
            #[doc = #doc_fields_fn]
            #[inline]
            pub fn fields() -> #fields_ident {
                #fields_ident { _private: () }
            }

            #[doc = #doc_query]
            pub fn query() -> ::collegedb::__private::Query<Self> {
                ::collegedb::__private::Query::new()
            }
        }
    }
}

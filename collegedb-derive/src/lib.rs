//! `#[derive(Sharded)]` for collegedb models.
//!
//! The derive is a three-step pipeline: `syn` parses the struct, `schema` validates it into a
//! small model (collecting every mistake, each at its own span), and `expand` generates an
//! implementation of `collegedb::Model` plus thin typed methods that forward to the runtime's
//! generic CRUD. Generated code reaches the runtime only through `collegedb::__private`.

mod expand;
mod fields;
mod schema;

use proc_macro::TokenStream;

/// Derives a sharded model; see the `collegedb` crate for the attributes.
#[proc_macro_derive(Sharded, attributes(sharded))]
pub fn derive_sharded(input: TokenStream) -> TokenStream {
    derive(input.into()).into()
}

fn derive(input: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    syn::parse2::<syn::DeriveInput>(input)
        .and_then(|ast| schema::Model::from_ast(&ast))
        .map(|model| {
            let mut tokens = expand::model(&model);
            tokens.extend(fields::expand(&model));
            tokens
        })
        .unwrap_or_else(syn::Error::into_compile_error)
}

#[cfg(test)]
mod tests {
    use quote::quote;

    fn expand_tokens(input: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
        super::derive(input)
    }

    fn expand(input: proc_macro2::TokenStream) -> String {
        expand_tokens(input).to_string()
    }

    #[test]
    fn generates_a_model_impl() {
        let out = expand(quote! {
            #[sharded(table = "users", write = "round-robin")]
            struct User { #[sharded(key)] id: String, name: String }
        });
        assert!(out.contains("impl __cdb :: Model for User"), "{out}");
        assert!(out.contains("\"users\""), "{out}");
        assert!(out.contains("Strategy :: RoundRobin"), "{out}");
    }

    /// The whole expansion of a representative model, pretty-printed and compared with
    /// `tests/expand/user.expanded.rs`, so a change to generated code shows in review. After an
    /// intended change, rerun with `UPDATE_EXPANSIONS=1` and review the diff.
    #[test]
    fn expansion_snapshot() {
        let out = expand_tokens(quote! {
            #[sharded(table = "users", read = "hash", write = "location")]
            struct User {
                #[sharded(key)]
                id: String,
                name: String,
                #[sharded(column = "mail")]
                email: Option<String>,
                #[sharded(json)]
                prefs: Prefs,
            }
        });
        let file: syn::File = syn::parse2(out).expect("the expansion parses as a file");
        let pretty = prettyplease::unparse(&file);
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/expand/user.expanded.rs");
        if std::env::var_os("UPDATE_EXPANSIONS").is_some() {
            std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
            std::fs::write(path, &pretty).unwrap();
        }
        let expected =
            std::fs::read_to_string(path).expect("snapshot exists (UPDATE_EXPANSIONS=1 writes it)");
        assert_eq!(
            pretty, expected,
            "the expansion changed: review it, then UPDATE_EXPANSIONS=1"
        );
    }

    #[test]
    fn collects_every_error() {
        let out = expand(quote! {
            #[sharded(table = "users", read = "hsh", colour = "red")]
            struct User { id: String, #[sharded(keys)] name: String }
        });
        for expected in [
            "unknown strategy `hsh`",
            "unknown `sharded` attribute `colour`",
            "unknown field attribute `keys`",
            "no shard key",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in {out}");
        }
    }
}

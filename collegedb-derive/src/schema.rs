//! Parses and validates the derive input into a [`Model`]: no tokens are generated here.

use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Type};

/// D1 allows at most 100 columns per table.
const MAX_COLUMNS: usize = 100;

const STRATEGIES: [&str; 4] = ["hash", "round-robin", "random", "location"];

/// A validated model.
pub struct Model {
    pub ident: Ident,
    pub vis: syn::Visibility,
    pub table: String,
    pub read: Option<String>,
    pub write: Option<String>,
    /// `consistency = "primary"`: reads always go to the primary.
    pub primary_reads: bool,
    pub fields: Vec<Field>,
    pub key_index: usize,
    /// `colocate = Parent`: the parent model whose key places the rows.
    pub colocate: Option<syn::Path>,
    /// The `#[sharded(shard_key)]` field of a colocated model: it holds the parent's key.
    pub shard_key_index: Option<usize>,
}

/// One field: one column.
pub struct Field {
    pub ident: Ident,
    pub ty: Type,
    pub column: String,
    pub json: bool,
    /// `#[sharded(unique)]`: the value is unique over every shard, with a `find_by_` lookup.
    pub unique: bool,
}

impl Model {
    /// The field whose value places the row: the shard key of a colocated model, else the key.
    pub fn route(&self) -> &Field {
        &self.fields[self.route_index()]
    }

    /// The position of [`Model::route`].
    pub fn route_index(&self) -> usize {
        self.shard_key_index.unwrap_or(self.key_index)
    }
}

impl Model {
    pub fn key(&self) -> &Field {
        &self.fields[self.key_index]
    }
}

/// Gathers errors so one compile reports every mistake.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(value),
        }
    }
}

fn sql_identifier(lit: &LitStr, what: &str, errors: &mut Errors) -> String {
    let value = lit.value();
    let mut chars = value.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && value.len() <= 64;
    if !valid {
        errors.push(syn::Error::new(
            lit.span(),
            format!("invalid {what} `{value}`: use 1 to 64 ASCII letters, digits or `_`, not starting with a digit"),
        ));
    }
    value
}

fn strategy(lit: &LitStr, errors: &mut Errors) -> String {
    let value = lit.value();
    if !STRATEGIES.contains(&value.as_str()) {
        errors.push(syn::Error::new(
            lit.span(),
            format!("unknown strategy `{value}`; expected one of `hash`, `round-robin`, `random`, `location`"),
        ));
    }
    value
}

impl Model {
    pub fn from_ast(ast: &DeriveInput) -> syn::Result<Model> {
        let mut errors = Errors::default();
        let named = match &ast.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(fields) => Some(&fields.named),
                other => {
                    errors.push(syn::Error::new(
                        if matches!(other, Fields::Unit) { ast.ident.span() } else { other.span() },
                        "`Sharded` needs a struct with named fields, one per column: `struct User { #[sharded(key)] id: String, ... }`",
                    ));
                    None
                }
            },
            Data::Enum(data) => {
                errors.push(syn::Error::new(
                    data.enum_token.span,
                    "`Sharded` cannot be derived for an enum: a model is a struct with named fields, one per column",
                ));
                None
            }
            Data::Union(data) => {
                errors.push(syn::Error::new(
                    data.union_token.span,
                    "`Sharded` cannot be derived for a union: a model is a struct with named fields, one per column",
                ));
                None
            }
        };
        if !ast.generics.params.is_empty() {
            errors.push(syn::Error::new(
                ast.generics.span(),
                "sharded models cannot be generic: one struct maps to one table",
            ));
        }

        let mut table: Option<String> = None;
        let (mut read, mut write, mut both): (Option<String>, Option<String>, Option<String>) =
            (None, None, None);
        let mut primary_reads = false;
        let mut colocate: Option<syn::Path> = None;
        for attr in ast.attrs.iter().filter(|a| a.path().is_ident("sharded")) {
            let result = attr.parse_nested_meta(|meta| {
                let name = meta.path.get_ident().map(ToString::to_string).unwrap_or_default();
                let slot = match name.as_str() {
                    "table" => {
                        let lit: LitStr = meta.value()?.parse()?;
                        if table.is_some() {
                            errors.push(syn::Error::new(meta.path.span(), "`table` specified more than once"));
                        }
                        table = Some(sql_identifier(&lit, "table name", &mut errors));
                        return Ok(());
                    }
                    "colocate" => {
                        let path: syn::Path = meta.value()?.parse()?;
                        if colocate.is_some() {
                            errors.push(syn::Error::new(meta.path.span(), "`colocate` specified more than once"));
                        }
                        colocate = Some(path);
                        return Ok(());
                    }
                    "consistency" => {
                        let lit: LitStr = meta.value()?.parse()?;
                        match lit.value().as_str() {
                            "primary" => primary_reads = true,
                            "handle" => primary_reads = false,
                            other => errors.push(syn::Error::new(
                                lit.span(),
                                format!("unknown consistency `{other}`; expected `primary` (reads always on the primary) or `handle` (as the handle reads, the default)"),
                            )),
                        }
                        return Ok(());
                    }
                    "read" => &mut read,
                    "write" => &mut write,
                    "strategy" => &mut both,
                    _ => {
                        errors.push(meta.error(format!(
                            "unknown `sharded` attribute `{name}`; expected `table`, `read`, `write`, `strategy`, `consistency` or `colocate`"
                        )));
                        // Skip a value, if any, so parsing can go on.
                        if meta.input.peek(syn::Token![=]) {
                            let _: syn::Expr = meta.value()?.parse()?;
                        }
                        return Ok(());
                    }
                };
                let lit: LitStr = meta.value()?.parse()?;
                if slot.is_some() {
                    errors.push(syn::Error::new(meta.path.span(), format!("`{name}` specified more than once")));
                }
                *slot = Some(strategy(&lit, &mut errors));
                Ok(())
            });
            if let Err(error) = result {
                errors.push(error);
            }
        }
        if let Some(strategy) = both {
            if read.is_some() || write.is_some() {
                errors.push(syn::Error::new(
                    ast.ident.span(),
                    "`strategy` sets both `read` and `write`: use either `strategy` or `read`/`write`",
                ));
            }
            read = Some(strategy.clone());
            write = Some(strategy);
        }
        if table.is_none() {
            errors.push(syn::Error::new(
                ast.ident.span(),
                format!(
                    "missing table name: add `#[sharded(table = \"{}\")]` to the struct",
                    snake_plural(&ast.ident.to_string())
                ),
            ));
        }

        let mut fields = Vec::new();
        let mut key_index: Option<usize> = None;
        let mut shard_key_index: Option<usize> = None;
        for field in named.into_iter().flatten() {
            let ident = field.ident.clone().expect("named field");
            let mut column = ident.to_string().trim_start_matches("r#").to_owned();
            let (mut is_key, mut json, mut unique, mut shard_key) = (false, false, false, false);
            for attr in field.attrs.iter().filter(|a| a.path().is_ident("sharded")) {
                let result = attr.parse_nested_meta(|meta| {
                    let name = meta.path.get_ident().map(ToString::to_string).unwrap_or_default();
                    match name.as_str() {
                        "key" => is_key = true,
                        "json" => json = true,
                        "unique" => unique = true,
                        "shard_key" => shard_key = true,
                        "column" => {
                            let lit: LitStr = meta.value()?.parse()?;
                            column = sql_identifier(&lit, "column name", &mut errors);
                        }
                        _ => errors.push(meta.error(format!(
                            "unknown field attribute `{name}`; expected `key`, `shard_key`, `unique`, `json` or `column = \"...\"`"
                        ))),
                    }
                    Ok(())
                });
                if let Err(error) = result {
                    errors.push(error);
                }
            }
            if is_key {
                if json {
                    errors.push(syn::Error::new(
                        field.span(),
                        "a shard key cannot be `json`: use a `String` or integer key",
                    ));
                }
                if let Some(first) = key_index {
                    let first: &Field = &fields[first];
                    errors.push(syn::Error::new(
                        ident.span(),
                        format!("`{ident}` is a second `#[sharded(key)]` field; `{}` is already the key: a model has exactly one shard key", first.ident),
                    ));
                } else {
                    key_index = Some(fields.len());
                }
            }
            if shard_key {
                if is_key || json {
                    errors.push(syn::Error::new(
                        ident.span(),
                        format!("`{ident}` cannot be the `shard_key` and also the `key` or `json`: the shard key holds the parent's key, the key identifies the row among its parent's rows"),
                    ));
                } else if let Some(first) = shard_key_index {
                    let first: &Field = &fields[first];
                    errors.push(syn::Error::new(
                        ident.span(),
                        format!("`{ident}` is a second `#[sharded(shard_key)]` field; `{}` already holds the parent's key: a model has one", first.ident),
                    ));
                } else {
                    shard_key_index = Some(fields.len());
                }
            }
            // A colocated model's own key is unique within its parent only: `unique` makes it
            // unique over every parent.
            if unique && is_key && colocate.is_none() {
                errors.push(syn::Error::new(
                    ident.span(),
                    format!("`{ident}` is the key, which is unique already: remove `unique`"),
                ));
                unique = false;
            }
            if unique && json {
                errors.push(syn::Error::new(
                    ident.span(),
                    format!("`{ident}` cannot be both `json` and `unique`: a unique column must be a `String` or an integer"),
                ));
                unique = false;
            }
            if let Some(other) = fields.iter().find(|f: &&Field| f.column == column) {
                errors.push(syn::Error::new(
                    ident.span(),
                    format!(
                        "column `{column}` is already used by field `{}`",
                        other.ident
                    ),
                ));
            }
            fields.push(Field {
                ident,
                ty: field.ty.clone(),
                column,
                json,
                unique,
            });
        }
        if named.is_some() && key_index.is_none() {
            errors.push(syn::Error::new(
                ast.ident.span(),
                "no shard key: mark the primary-key field with `#[sharded(key)]`",
            ));
        }
        if fields.len() > MAX_COLUMNS {
            errors.push(syn::Error::new(
                ast.ident.span(),
                format!(
                    "{} columns: D1 allows at most {MAX_COLUMNS} columns per table",
                    fields.len()
                ),
            ));
        }
        match (&colocate, shard_key_index) {
            (Some(parent), None) if named.is_some() => errors.push(syn::Error::new(
                parent.span(),
                "a colocated model needs the field that holds its parent's key: mark it `#[sharded(shard_key)]`",
            )),
            (None, Some(index)) => errors.push(syn::Error::new(
                fields[index].ident.span(),
                "`shard_key` holds a parent's key: name the parent with `#[sharded(colocate = Parent)]` on the struct",
            )),
            _ => {}
        }
        if let Some(parent) = &colocate {
            if read.is_some() || write.is_some() {
                errors.push(syn::Error::new(
                    parent.span(),
                    "a colocated model is placed by its parent's key, with the parent's strategies: remove `read`, `write` and `strategy`",
                ));
            }
        }
        errors.finish(Model {
            ident: ast.ident.clone(),
            vis: ast.vis.clone(),
            table: table.unwrap_or_default(),
            read,
            write,
            primary_reads,
            fields,
            key_index: key_index.unwrap_or_default(),
            colocate,
            shard_key_index,
        })
    }
}

/// `UserProfile` -> `user_profiles`, for the suggestion in the missing-table error.
fn snake_plural(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out.push('s');
    out
}

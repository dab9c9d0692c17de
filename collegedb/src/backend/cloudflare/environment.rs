//! The configuration from the Worker's environment, so that the shard list is written once, in
//! `wrangler.toml`.

use worker::js_sys::{self, Function, Object, Reflect};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::Env;

use crate::config::Config;
use crate::error::{Error, Result};

/// Where [`config_from_env`] finds the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource<'a> {
    /// A var holding the JSON of [`Config::from_json`], as a string or as a table in
    /// `wrangler.toml` (`[vars] COLLEGEDB_CONFIG = { shards = [...] }`).
    Json(&'a str),
    /// Every D1 binding whose name starts with this prefix is a shard, in name order, with the
    /// defaults of [`Config::new`] ([`Config::from_binding_names`]).
    BindingPrefix(&'a str),
}

/// Builds and validates the configuration from `env`, with the same checks and
/// [`Error::ConfigInvalid`] messages as [`Config::from_json`]; a missing var, or one that is
/// neither a string nor a table, is `CONFIG_INVALID` too.
///
/// ```ignore
/// let config = config_from_env(&env, ConfigSource::Json("COLLEGEDB_CONFIG"))?;
/// let db = open(&env, config, DirectoryChoice::DurableObject("DIRECTORY_DO".into()), "COORDINATOR")?;
/// ```
pub fn config_from_env(env: &Env, source: ConfigSource<'_>) -> Result<Config> {
    let env: &JsValue = env.as_ref();
    match source {
        ConfigSource::Json(var) => {
            let value = Reflect::get(env, &var.into()).unwrap_or(JsValue::UNDEFINED);
            if value.is_undefined() || value.is_null() {
                return Err(Error::config(format!(
                    "the var `{var}` is not set: add it under [vars] in wrangler.toml, holding the configuration's JSON"
                )));
            }
            let json = match value.as_string() {
                Some(text) => text,
                None if value.is_object() => js_sys::JSON::stringify(&value)
                    .ok()
                    .and_then(|s| s.as_string())
                    .ok_or_else(|| Error::config(format!("the var `{var}` is not JSON")))?,
                None => {
                    return Err(Error::config(format!(
                        "the var `{var}` is neither a string nor a table"
                    )))
                }
            };
            Config::from_json(&json).map_err(|e| match e {
                Error::ConfigInvalid(message) => Error::config(format!("var `{var}`: {message}")),
                other => other,
            })
        }
        ConfigSource::BindingPrefix(prefix) => {
            let names: Vec<String> = Object::keys(env.unchecked_ref::<Object>())
                .iter()
                .filter_map(|name| name.as_string())
                .filter(|name| name.starts_with(prefix) && is_d1(env, name))
                .collect();
            Config::from_binding_names(prefix, names.iter().map(String::as_str))
        }
    }
}

/// Whether the binding `name` looks like a D1 database: it has `prepare`, `batch` and `exec`.
fn is_d1(env: &JsValue, name: &str) -> bool {
    let Ok(binding) = Reflect::get(env, &name.into()) else {
        return false;
    };
    binding.is_object()
        && ["prepare", "batch", "exec"].iter().all(|method| {
            Reflect::get(&binding, &(*method).into())
                .map(|f| f.is_instance_of::<Function>())
                .unwrap_or(false)
        })
}

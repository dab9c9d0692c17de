//! The stored shard list: the guard that stops an edited configuration from misrouting rows.
//!
//! Hash placement maps keys onto positions in the shard list, and the directory names shards by
//! name. Appending, removing, renaming or reordering shards in the configuration of a deployment
//! that holds rows would therefore send reads and writes to the wrong shards, silently. So the
//! first open stores the configured list (version 1) next to the directory, and every later open
//! compares: a different list is refused with [`Error::ConfigInvalid`] saying what changed and
//! what to do, unless the deployment holds no rows yet, in which case the new list is stored
//! (version + 1).
//!
//! Moving rows so that a list *can* change (add and drain shards) is designed in
//! `docs/growth.md`; this module is the part of it that keeps data safe until then. It is built
//! for the embedded backend; on Cloudflare the shard list is still only the configuration.

use crate::error::Error;

/// The shard list stored for a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredShards {
    /// Bumped each time the list is replaced.
    pub version: u64,
    /// Shard names in placement order.
    pub shards: Vec<String>,
}

/// How a configured list differs from the stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListChange {
    /// The same names in the same order.
    Same,
    /// Anything else, described for the error message.
    Different(String),
}

/// Compares the configured list with the stored one.
pub fn compare(stored: &[String], configured: &[String]) -> ListChange {
    if stored == configured {
        return ListChange::Same;
    }
    let added: Vec<&str> = configured
        .iter()
        .filter(|name| !stored.contains(name))
        .map(String::as_str)
        .collect();
    let removed: Vec<&str> = stored
        .iter()
        .filter(|name| !configured.contains(name))
        .map(String::as_str)
        .collect();
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!(
            "configured shards not in the stored list: {} (adding a shard to a deployment that holds rows moves keys, which needs `add_shard`, not built yet: see docs/growth.md; remove them from the configuration for now)",
            added.join(", ")
        ));
    }
    if !removed.is_empty() {
        parts.push(format!(
            "stored shards missing from the configuration: {} (their rows would become unreachable: put them back)",
            removed.join(", ")
        ));
    }
    if parts.is_empty() {
        parts.push(
            "the same shards in another order (hash placement follows positions in the list: restore the stored order)"
                .to_owned(),
        );
    }
    ListChange::Different(parts.join("; "))
}

/// The error for a configuration whose list differs from the stored one.
pub fn refused(stored: &StoredShards, why: &str) -> Error {
    Error::ConfigInvalid(format!(
        "the shard list differs from the one this deployment's data was placed with (version {}: {}): {why}",
        stored.version,
        stored.shards.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_kind_of_edit_is_named() {
        let stored = names(&["a", "b", "c"]);
        assert_eq!(compare(&stored, &names(&["a", "b", "c"])), ListChange::Same);
        let cases = [
            (vec!["a", "b", "c", "d"], "not in the stored list: d"),
            (vec!["a", "b"], "missing from the configuration: c"),
            (vec!["c", "a", "b"], "another order"),
            (vec!["a", "b", "x"], "missing from the configuration: c"),
        ];
        for (configured, expected) in cases {
            match compare(&stored, &names(&configured)) {
                ListChange::Different(why) => assert!(why.contains(expected), "{why}"),
                ListChange::Same => panic!("{configured:?} is not the same list"),
            }
        }
    }
}

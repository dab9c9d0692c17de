//! The guard that stops an edited configuration from stranding rows.
//!
//! Placement follows the stored [`ShardMap`], not positions in the
//! configured list, so reordering the list changes nothing, and a configured shard that the map
//! does not list yet is simply *standby*: reachable, owning no slots, receiving no new keys until
//! [`CollegeDb::add_shard`](crate::CollegeDb::add_shard) gives it its share. What cannot be allowed
//! is a shard of the map missing from the configuration (renamed or removed by editing the
//! list): its rows would become unreachable. Opening such a configuration is refused with
//! [`Error::ConfigInvalid`] naming the operation to use, unless the deployment holds no rows yet,
//! in which case the new list simply replaces the seed.

use crate::error::Error;
use crate::slots::ShardMap;

/// How a configured list relates to the stored map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListChange {
    /// Every shard of the map is configured (others may be standby).
    Covered,
    /// Shards of the map are missing from the configuration; the text says which and what to do.
    Missing(String),
}

/// Compares the configured names with the stored map.
pub fn compare(stored: &ShardMap, configured: &[String]) -> ListChange {
    let missing: Vec<&str> = stored
        .shards()
        .iter()
        .filter(|name| !configured.contains(name))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return ListChange::Covered;
    }
    let added: Vec<&str> = configured
        .iter()
        .filter(|name| !stored.contains(name))
        .map(String::as_str)
        .collect();
    let mut why = format!(
        "shards of the map are missing from the configuration: {} (their rows would become unreachable: put them back; to retire a shard, keep it configured and run `drain_shard`",
        missing.join(", ")
    );
    if !added.is_empty() {
        why.push_str(&format!(
            "; to rename one, configure the new name ({}) beside the old, run `add_shard` for it, then `drain_shard` the old",
            added.join(", ")
        ));
    }
    why.push(')');
    ListChange::Missing(why)
}

/// The error for a configuration that does not cover the stored map.
pub fn refused(stored: &ShardMap, why: &str) -> Error {
    Error::ConfigInvalid(format!(
        "the configured shards do not cover the stored shard map (version {}: {}): {why}",
        stored.version(),
        stored.shards().join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn order_and_standby_shards_are_fine_and_missing_ones_are_named() {
        let stored = ShardMap::seed(&names(&["a", "b", "c"])).unwrap();
        for fine in [
            vec!["a", "b", "c"],
            vec!["c", "a", "b"],
            vec!["a", "b", "c", "d"],
        ] {
            assert_eq!(compare(&stored, &names(&fine)), ListChange::Covered);
        }
        let cases = [
            (vec!["a", "b"], "missing from the configuration: c"),
            (vec!["a", "b", "x"], "configure the new name (x)"),
        ];
        for (configured, expected) in cases {
            match compare(&stored, &names(&configured)) {
                ListChange::Missing(why) => assert!(why.contains(expected), "{why}"),
                ListChange::Covered => panic!("{configured:?} does not cover the map"),
            }
        }
    }
}

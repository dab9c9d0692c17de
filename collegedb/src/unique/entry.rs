//! The text of one lookup entry in the directory store, and the row it names.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::key::Key;
use crate::model::Model;
use crate::value::Value;

/// The row a lookup entry names: its primary key's values, in [`Model::ID_COLUMNS`] order. One
/// key for most models; for a colocated model the parent's key, then the row's own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Owner(Arc<[Key]>);

impl Owner {
    /// The owner of a row given in column order.
    pub fn of_row<M: Model>(values: &[Value]) -> Result<Self> {
        M::ID_COLUMNS
            .iter()
            .map(|&column| Key::from_value(values[column].clone()))
            .collect::<Result<Vec<Key>>>()
            .map(|keys| Owner(keys.into()))
    }

    /// The owner of the row with primary key `ids`, as [`RowId`](crate::model::RowId) gives
    /// them.
    pub fn of_id(ids: &[Value]) -> Result<Self> {
        ids.iter()
            .map(|value| Key::from_value(value.clone()))
            .collect::<Result<Vec<Key>>>()
            .map(|keys| Owner(keys.into()))
    }

    /// The key that places the row: the first ([`Model::ID_COLUMNS`] lists it first).
    pub fn placing(&self) -> &Key {
        &self.0[0]
    }

    /// The primary key's values.
    pub fn ids(&self) -> Vec<Value> {
        self.0.iter().map(Key::to_value).collect()
    }

    /// `i:<integer>` or `t:<text>` for one key; `c:` and a JSON array of the keys for more.
    fn encode(&self) -> String {
        match &*self.0 {
            [Key::Int(n)] => format!("i:{n}"),
            [Key::Text(t)] => format!("t:{t}"),
            keys => {
                let json: Vec<serde_json::Value> = keys
                    .iter()
                    .map(|key| match key {
                        Key::Int(n) => serde_json::Value::from(*n),
                        Key::Text(t) => serde_json::Value::from(t.as_str()),
                    })
                    .collect();
                format!("c:{}", serde_json::Value::Array(json))
            }
        }
    }

    fn parse(text: &str) -> Option<Self> {
        let keys = match text.split_at_checked(2)? {
            ("i:", n) => vec![Key::Int(n.parse().ok()?)],
            ("t:", t) => vec![Key::Text(t.to_owned())],
            ("c:", json) => {
                let values: Vec<serde_json::Value> = serde_json::from_str(json).ok()?;
                let keys = values
                    .into_iter()
                    .map(|value| match value {
                        serde_json::Value::String(t) => Some(Key::Text(t)),
                        other => other.as_i64().map(Key::Int),
                    })
                    .collect::<Option<Vec<Key>>>()?;
                if keys.len() < 2 {
                    return None;
                }
                keys
            }
            _ => return None,
        };
        Some(Owner(keys.into()))
    }
}

/// One lookup entry: the row that holds the value; while the write that claimed it has not
/// confirmed it, when it was claimed; and a tag drawn by that write, so that no two writes ever
/// hold the same text and each compare-and-set acts on its own write's entry only.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    pub owner: Owner,
    pub pending_since: Option<u64>,
    pub tag: u64,
}

impl Entry {
    /// A new pending entry for `owner`, stamped now, with a fresh tag.
    pub fn pending(owner: &Owner, now_ms: u64) -> Self {
        Entry {
            owner: owner.clone(),
            pending_since: Some(now_ms),
            tag: fastrand::u64(..),
        }
    }

    /// The same entry, confirmed.
    pub fn live(&self) -> Self {
        Entry {
            pending_since: None,
            ..self.clone()
        }
    }

    /// `live#<tag> <owner>` or `pending@<ms>#<tag> <owner>`, the tag in hex and the owner as
    /// [`Owner::encode`] writes it.
    pub fn encode(&self) -> String {
        let owner = self.owner.encode();
        let tag = self.tag;
        match self.pending_since {
            None => format!("live#{tag:x} {owner}"),
            Some(ms) => format!("pending@{ms}#{tag:x} {owner}"),
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        let malformed = || Error::Directory(format!("malformed unique lookup entry {text:?}"));
        let (state, owner) = text.split_once(' ').ok_or_else(malformed)?;
        let (state, tag) = state.split_once('#').ok_or_else(malformed)?;
        let tag = u64::from_str_radix(tag, 16).map_err(|_| malformed())?;
        let pending_since = match state {
            "live" => None,
            _ => Some(
                state
                    .strip_prefix("pending@")
                    .and_then(|ms| ms.parse().ok())
                    .ok_or_else(malformed)?,
            ),
        };
        let owner = Owner::parse(owner).ok_or_else(malformed)?;
        Ok(Entry {
            owner,
            pending_since,
            tag,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(keys: &[Key]) -> Owner {
        Owner(keys.to_vec().into())
    }

    #[test]
    fn entries_round_trip() {
        let pending = Entry::pending(&owner(&[Key::Text("a b:c".into())]), 1_700_000_000_000);
        let pair = owner(&[Key::Text("ad\"a], c:".into()), Key::Int(-7)]);
        for entry in [
            Entry::pending(&owner(&[Key::Int(-42)]), 5).live(),
            pending.clone(),
            pending.live(),
            Entry::pending(&owner(&[Key::Text(String::new())]), 0),
            Entry::pending(&pair, 9),
            Entry::pending(&pair, 9).live(),
            Entry::pending(&owner(&[Key::Int(i64::MIN), Key::Text("x".into())]), 1),
        ] {
            assert_eq!(Entry::parse(&entry.encode()).unwrap(), entry);
        }
        assert_ne!(pending.encode(), pending.live().encode());
        assert_ne!(
            Entry::pending(&owner(&[Key::Int(1)]), 7).encode(),
            Entry::pending(&owner(&[Key::Int(1)]), 7).encode(),
            "two writes never hold the same text"
        );
        for bad in [
            "",
            "live",
            "live x:1",
            "live#zz i:1",
            "live i:1",
            "pending@#1 t:a",
            "pending@x#1 t:a",
            "live#1 i:z",
            "live#1 c:",
            "live#1 c:[\"a\"]",
            "live#1 c:[\"a\", 1.5]",
            "live#1 c:[\"a\", null]",
            "live#1 c:{}",
        ] {
            assert!(Entry::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}

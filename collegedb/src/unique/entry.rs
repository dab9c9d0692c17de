//! The text of one lookup entry in the directory store.

use crate::error::{Error, Result};
use crate::key::Key;

/// One lookup entry: the key of the row that holds the value; while the write that claimed it
/// has not confirmed it, when it was claimed; and a tag drawn by that write, so that no two
/// writes ever hold the same text and each compare-and-set acts on its own write's entry only.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    pub owner: Key,
    pub pending_since: Option<u64>,
    pub tag: u64,
}

impl Entry {
    /// A new pending entry for `owner`, stamped now, with a fresh tag.
    pub fn pending(owner: &Key, now_ms: u64) -> Self {
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
    /// `i:<integer>` or `t:<text>`.
    pub fn encode(&self) -> String {
        let owner = match &self.owner {
            Key::Int(n) => format!("i:{n}"),
            Key::Text(t) => format!("t:{t}"),
        };
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
        let owner = match owner.split_at_checked(2) {
            Some(("i:", n)) => Key::Int(n.parse().map_err(|_| malformed())?),
            Some(("t:", t)) => Key::Text(t.to_owned()),
            _ => return Err(malformed()),
        };
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

    #[test]
    fn entries_round_trip() {
        let pending = Entry::pending(&Key::Text("a b:c".into()), 1_700_000_000_000);
        for entry in [
            Entry::pending(&Key::Int(-42), 5).live(),
            pending.clone(),
            pending.live(),
            Entry::pending(&Key::Text(String::new()), 0),
        ] {
            assert_eq!(Entry::parse(&entry.encode()).unwrap(), entry);
        }
        assert_ne!(pending.encode(), pending.live().encode());
        assert_ne!(
            Entry::pending(&Key::Int(1), 7).encode(),
            Entry::pending(&Key::Int(1), 7).encode(),
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
        ] {
            assert!(Entry::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}

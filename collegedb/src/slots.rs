//! Hash slots and the shard map: which shard owns each slot, as stored, versioned data.
//!
//! A key's **slot** is the top 12 bits of its XXH3-64 placement hash, so there are [`SLOTS`]
//! (4,096) slots, fixed forever. Hash placement sends a key to the owner of its slot. The
//! [`ShardMap`] assigns every slot to one shard and carries a version that every change bumps.
//!
//! Slots, not keys, are what moves: adding a shard hands it about `1 / (n + 1)` of the slots,
//! taken evenly from the others; draining a shard hands its slots to the rest. Because placement
//! follows the map and not positions in a list, the order of the configured shards means nothing,
//! and any shard can be drained, not only the last. See `docs/growth.md` and [`crate::growth`].
//!
//! The configured shard list only *seeds* the map, once (version 1, contiguous ranges over the
//! names in sorted order). After that the map changes only through [`crate::growth`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::key::Key;

/// The number of hash slots.
pub const SLOTS: usize = 4096;

/// The slot of a key: the top 12 bits of its placement hash.
///
/// ```
/// use collegedb::{slots, Key};
/// let slot = slots::slot_of(&Key::Text("alice".into()));
/// assert!((slot as usize) < slots::SLOTS);
/// ```
#[inline]
pub fn slot_of(key: &Key) -> u16 {
    (key.placement_hash() >> 52) as u16
}

/// The slot of a stored key value, as SQL sees it: `None` for a value that cannot be a shard key
/// (not INTEGER or TEXT, an integer beyond ±(2^53 - 1), an empty or oversized string). Agrees
/// with [`slot_of`] on every valid key; the embedded backend registers it as the SQL function
/// `collegedb_slot(key)`, so a move can filter rows by slot inside SQLite.
pub fn slot_of_stored(integer: Option<i64>, text: Option<&[u8]>) -> Option<u16> {
    let hash = match (integer, text) {
        (Some(i), _) if (-crate::MAX_SAFE_INTEGER..=crate::MAX_SAFE_INTEGER).contains(&i) => {
            xxhash_rust::xxh3::xxh3_64(&i.to_be_bytes())
        }
        (None, Some(bytes)) if !bytes.is_empty() && bytes.len() <= crate::MAX_KEY_BYTES => {
            xxhash_rust::xxh3::xxh3_64(bytes)
        }
        _ => return None,
    };
    Some((hash >> 52) as u16)
}

/// Which shard owns each slot, at a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredMap", into = "StoredMap")]
pub struct ShardMap {
    version: u64,
    shards: Vec<String>,
    /// For each slot, an index into `shards`.
    owners: Vec<u16>,
}

/// One planned transfer of slots from one shard to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotTransfer {
    /// The shard that gives the slots up.
    pub from: String,
    /// The shard that receives them.
    pub to: String,
    /// The slots, ascending.
    pub slots: Vec<u16>,
}

impl ShardMap {
    /// The first map of a deployment: the named shards, sorted, each owning one contiguous range
    /// of slots of (nearly) equal size.
    ///
    /// ```
    /// use collegedb::slots::ShardMap;
    /// let map = ShardMap::seed(&["b".to_string(), "a".to_string()])?;
    /// assert_eq!(map.version(), 1);
    /// assert_eq!(map.owner(0), "a");
    /// assert_eq!(map.owner(4095), "b");
    /// assert_eq!(map.slots_of("a").len(), 2048);
    /// # Ok::<(), collegedb::Error>(())
    /// ```
    pub fn seed(names: &[String]) -> Result<Self> {
        if names.is_empty() {
            return Err(Error::config("a shard map needs at least one shard"));
        }
        let mut shards = names.to_vec();
        shards.sort();
        shards.dedup();
        let n = shards.len();
        let owners = (0..SLOTS).map(|slot| (slot * n / SLOTS) as u16).collect();
        Ok(ShardMap {
            version: 1,
            shards,
            owners,
        })
    }

    /// The version: 1 for a seed, plus one per change.
    pub fn version(&self) -> u64 {
        self.version
    }

    // Used by the embedded backend only.
    #[cfg_attr(not(feature = "embedded"), allow(dead_code))]
    pub(crate) fn set_version(&mut self, version: u64) {
        self.version = version;
    }

    /// The shards that own at least one slot, sorted by name.
    pub fn shards(&self) -> &[String] {
        &self.shards
    }

    /// Whether `shard` owns slots in this map.
    pub fn contains(&self, shard: &str) -> bool {
        self.shards.iter().any(|s| s == shard)
    }

    /// The owner of `slot`.
    pub fn owner(&self, slot: u16) -> &str {
        &self.shards[self.owners[slot as usize] as usize]
    }

    /// The owner of each slot, in slot order.
    pub fn owners(&self) -> impl Iterator<Item = &str> + '_ {
        self.owners
            .iter()
            .map(|&i| self.shards[i as usize].as_str())
    }

    /// The slots `shard` owns, ascending.
    pub fn slots_of(&self, shard: &str) -> Vec<u16> {
        let Some(index) = self.shards.iter().position(|s| s == shard) else {
            return Vec::new();
        };
        (0..SLOTS as u16)
            .filter(|&slot| self.owners[slot as usize] as usize == index)
            .collect()
    }

    /// The transfers that give a new shard its even share: about `SLOTS / (n + 1)` slots, taken
    /// from the shards holding the most, highest slots first.
    pub fn plan_add(&self, shard: &str) -> Result<Vec<SlotTransfer>> {
        if self.contains(shard) {
            return Err(Error::config(format!(
                "shard `{shard}` already owns slots in the map (version {})",
                self.version
            )));
        }
        let target = SLOTS / (self.shards.len() + 1);
        let mut owned: Vec<(String, Vec<u16>)> = self
            .shards
            .iter()
            .map(|s| (s.clone(), self.slots_of(s)))
            .collect();
        let mut taken: Vec<Vec<u16>> = vec![Vec::new(); owned.len()];
        for _ in 0..target {
            let (richest, _) = owned
                .iter()
                .enumerate()
                .max_by_key(|(i, (_, slots))| (slots.len(), std::cmp::Reverse(*i)))
                .expect("at least one shard");
            let slot = owned[richest]
                .1
                .pop()
                .expect("the richest shard owns slots");
            taken[richest].push(slot);
        }
        Ok(owned
            .into_iter()
            .zip(taken)
            .filter(|(_, slots)| !slots.is_empty())
            .map(|((from, _), mut slots)| {
                slots.sort_unstable();
                SlotTransfer {
                    from,
                    to: shard.to_owned(),
                    slots,
                }
            })
            .collect())
    }

    /// The transfers that empty `shard`: each of its slots goes to the shard holding the fewest
    /// at that moment, so the others stay even.
    pub fn plan_drain(&self, shard: &str) -> Result<Vec<SlotTransfer>> {
        if !self.contains(shard) {
            return Err(Error::config(format!(
                "shard `{shard}` owns no slots in the map (version {}); its shards are {}",
                self.version,
                self.shards.join(", ")
            )));
        }
        if self.shards.len() == 1 {
            return Err(Error::config(format!(
                "shard `{shard}` is the only shard: add another before draining it"
            )));
        }
        let mut counts: Vec<(String, usize, Vec<u16>)> = self
            .shards
            .iter()
            .filter(|s| *s != shard)
            .map(|s| (s.clone(), self.slots_of(s).len(), Vec::new()))
            .collect();
        for slot in self.slots_of(shard) {
            let poorest = counts
                .iter_mut()
                .min_by_key(|(_, count, _)| *count)
                .expect("another shard");
            poorest.1 += 1;
            poorest.2.push(slot);
        }
        Ok(counts
            .into_iter()
            .filter(|(_, _, slots)| !slots.is_empty())
            .map(|(to, _, slots)| SlotTransfer {
                from: shard.to_owned(),
                to,
                slots,
            })
            .collect())
    }

    /// The next version, with `slots` owned by `to` (added to the shards if new) and shards that
    /// no longer own any slot removed.
    pub fn with_owner(&self, slots: &[u16], to: &str) -> ShardMap {
        let mut owner_names: Vec<&str> = self.owners().collect();
        for &slot in slots {
            owner_names[slot as usize] = to;
        }
        let mut shards: Vec<String> = owner_names.iter().map(|s| s.to_string()).collect();
        shards.sort();
        shards.dedup();
        let owners = owner_names
            .iter()
            .map(|name| shards.iter().position(|s| s == name).expect("listed") as u16)
            .collect();
        ShardMap {
            version: self.version + 1,
            shards,
            owners,
        }
    }
}

/// The stored form: run-length ranges keep it a few hundred bytes.
#[derive(Serialize, Deserialize)]
struct StoredMap {
    version: u64,
    shards: Vec<String>,
    /// `[first_slot, last_slot, shard_index]`, ascending and covering every slot.
    ranges: Vec<[u16; 3]>,
}

impl From<ShardMap> for StoredMap {
    fn from(map: ShardMap) -> Self {
        let mut ranges: Vec<[u16; 3]> = Vec::new();
        for (slot, &owner) in map.owners.iter().enumerate() {
            match ranges.last_mut() {
                Some(last) if last[2] == owner && last[1] as usize + 1 == slot => {
                    last[1] = slot as u16
                }
                _ => ranges.push([slot as u16, slot as u16, owner]),
            }
        }
        StoredMap {
            version: map.version,
            shards: map.shards,
            ranges,
        }
    }
}

impl TryFrom<StoredMap> for ShardMap {
    type Error = String;

    fn try_from(stored: StoredMap) -> std::result::Result<Self, String> {
        let mut owners = Vec::with_capacity(SLOTS);
        for [first, last, owner] in stored.ranges {
            if first as usize != owners.len() || last < first {
                return Err(format!("slot range {first}..={last} is out of order"));
            }
            if owner as usize >= stored.shards.len() {
                return Err(format!("slot range {first}..={last} names shard #{owner}"));
            }
            owners.extend(std::iter::repeat_n(owner, (last - first) as usize + 1));
        }
        if owners.len() != SLOTS {
            return Err(format!("the map covers {} of {SLOTS} slots", owners.len()));
        }
        Ok(ShardMap {
            version: stored.version,
            shards: stored.shards,
            owners,
        })
    }
}

impl ShardMap {
    /// The map as JSON, for stores.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a shard map serializes")
    }

    /// A map from [`ShardMap::to_json`]; a damaged one is [`Error::DirectoryInconsistent`].
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json)
            .map_err(|e| Error::DirectoryInconsistent(format!("the stored shard map: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn slots_spread_keys_evenly() {
        let mut counts = vec![0u32; SLOTS];
        for i in 0..409_600i64 {
            counts[slot_of(&Key::Int(i)) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 40 && *max < 170, "min {min} max {max}");
        // Golden: the top 12 bits of the XXH3 vectors in `placement::hash`.
        assert_eq!(slot_of(&Key::Text("a".into())), 0xe6c);
        assert_eq!(slot_of(&Key::Int(42)), 0x2e4);
        for key in [Key::Int(-7), Key::Int(0), Key::Text("héllo".into())] {
            let stored = match &key {
                Key::Int(i) => slot_of_stored(Some(*i), None),
                Key::Text(t) => slot_of_stored(None, Some(t.as_bytes())),
            };
            assert_eq!(stored, Some(slot_of(&key)), "{key}");
        }
        assert_eq!(slot_of_stored(Some(1 << 60), None), None);
        assert_eq!(slot_of_stored(None, Some(b"")), None);
        assert_eq!(slot_of_stored(None, None), None);
    }

    #[test]
    fn the_seed_ignores_order_and_round_trips_through_json() {
        let map = ShardMap::seed(&names(&["c", "a", "b"])).unwrap();
        assert_eq!(map, ShardMap::seed(&names(&["a", "b", "c"])).unwrap());
        assert_eq!(map.shards(), ["a", "b", "c"]);
        let json = map.to_json();
        assert!(json.len() < 200, "{json}");
        assert_eq!(ShardMap::from_json(&json).unwrap(), map);
        let damaged = json.replace("4095", "4000");
        assert_eq!(
            ShardMap::from_json(&damaged).unwrap_err().code(),
            "DIRECTORY_INCONSISTENT"
        );
    }

    #[test]
    fn adding_a_fourth_shard_takes_a_quarter_evenly_and_draining_spreads_it_back() {
        let map = ShardMap::seed(&names(&["a", "b", "c"])).unwrap();
        let plan = map.plan_add("d").unwrap();
        let moved: usize = plan.iter().map(|t| t.slots.len()).sum();
        assert_eq!(moved, SLOTS / 4);
        let mut grown = map.clone();
        for transfer in &plan {
            assert_eq!(transfer.to, "d");
            grown = grown.with_owner(&transfer.slots, &transfer.to);
        }
        assert_eq!(grown.version(), 1 + plan.len() as u64);
        for shard in ["a", "b", "c", "d"] {
            assert!(
                (1023..=1025).contains(&grown.slots_of(shard).len()),
                "{shard}"
            );
        }
        // Keys of unmoved slots keep their owner; moved ones all go to d.
        for slot in 0..SLOTS as u16 {
            if grown.owner(slot) != map.owner(slot) {
                assert_eq!(grown.owner(slot), "d");
            }
        }
        let mut drained = grown.clone();
        for transfer in grown.plan_drain("b").unwrap() {
            assert_eq!(transfer.from, "b");
            drained = drained.with_owner(&transfer.slots, &transfer.to);
        }
        assert_eq!(drained.shards(), ["a", "c", "d"]);
        for shard in ["a", "c", "d"] {
            assert!(
                (1364..=1366).contains(&drained.slots_of(shard).len()),
                "{shard}"
            );
        }
        assert_eq!(map.plan_add("a").unwrap_err().code(), "CONFIG_INVALID");
        assert_eq!(map.plan_drain("zz").unwrap_err().code(), "CONFIG_INVALID");
    }
}

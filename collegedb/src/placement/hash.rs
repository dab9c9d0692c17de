//! Deterministic placement: XXH3-64 of the key's canonical bytes, then jump consistent hash
//! (Lamping and Veach, 2014) onto the append-only shard list.
//!
//! Jump hash moves only the keys that must move when a shard is appended: growing from `n` to
//! `n + 1` shards sends about `1 / (n + 1)` of the keys to the new shard and leaves every other key
//! where it was. `hash % n` would move most of them.

use crate::key::Key;

/// Maps a 64-bit hash onto `0..buckets` with jump consistent hash. `buckets` must be at least 1.
pub fn jump_consistent_hash(mut hash: u64, buckets: u32) -> u32 {
    debug_assert!(buckets > 0);
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets as i64 {
        b = j;
        hash = hash.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((hash >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The shard index that hash placement gives `key` among `shards` shards.
pub fn hash_shard(key: &Key, shards: usize) -> usize {
    jump_consistent_hash(key.placement_hash(), shards as u32) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden vectors computed with an independent XXH3 implementation (the Python `xxhash`
    /// package) and a transcription of the paper's jump hash.
    #[test]
    fn golden_vectors() {
        let cases: [(Key, u64, [u32; 6]); 6] = [
            (
                Key::Text("a".into()),
                0xe6c632b61e964e1f,
                [0, 1, 1, 1, 8, 350],
            ),
            (
                Key::Text("user-1".into()),
                0x7c7615c11438e5c9,
                [0, 1, 1, 1, 9, 844],
            ),
            (
                Key::Text("héllo".into()),
                0x6a45b79a7b549b1f,
                [0, 1, 2, 3, 5, 156],
            ),
            (Key::Int(0), 0xc77b3abb6f87acd9, [0, 1, 1, 1, 1, 910]),
            (Key::Int(42), 0x2e4fe982b68910ac, [0, 0, 0, 0, 7, 747]),
            (Key::Int(-1), 0x5111c7e47d784413, [0, 0, 0, 0, 4, 509]),
        ];
        for (key, hash, shards) in cases {
            assert_eq!(key.placement_hash(), hash, "{key}");
            for (n, expected) in [1u32, 2, 3, 4, 10, 1000].into_iter().zip(shards) {
                assert_eq!(jump_consistent_hash(hash, n), expected, "{key} over {n}");
            }
        }
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2d06800538d394c2);
    }

    #[test]
    fn appending_a_shard_moves_about_one_in_n_plus_one_keys_and_only_to_it() {
        let keys = 100_000;
        let mut moved = 0;
        for i in 0..keys {
            let key = Key::Text(format!("user-{i}"));
            let (before, after) = (hash_shard(&key, 3), hash_shard(&key, 4));
            if before != after {
                assert_eq!(after, 3, "a moved key must move to the new shard");
                moved += 1;
            }
        }
        let fraction = moved as f64 / keys as f64;
        assert!(
            (fraction - 0.25).abs() < 0.02,
            "moved {fraction}, expected about 0.25"
        );
    }

    #[test]
    fn placement_is_uniform() {
        let mut counts = [0u32; 5];
        for i in 0..50_000i64 {
            counts[hash_shard(&Key::Int(i), 5)] += 1;
        }
        for c in counts {
            assert!((9_400..=10_600).contains(&c), "{counts:?}");
        }
    }
}

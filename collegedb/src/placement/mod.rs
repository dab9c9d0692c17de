//! Placement: choosing the shard for a new key.
//!
//! This module owns the pure decision of *where a new key goes* under each strategy. It does no
//! I/O: the router records non-deterministic choices in the directory, and the round-robin counter
//! comes from the coordinator.

use crate::config::{Config, Region};
use crate::error::{Error, Result};

/// Shards of equal standing for one target region, with cumulative priority weights.
#[derive(Debug, Clone, Default)]
struct Candidates {
    shards: Vec<usize>,
    cumulative: Vec<u64>,
}

impl Candidates {
    fn pick(&self, roll: u64) -> usize {
        let total = *self.cumulative.last().expect("non-empty candidates");
        let point = roll % total;
        let at = self.cumulative.partition_point(|&c| c <= point);
        self.shards[at]
    }
}

/// Precomputed placement tables for one configuration.
#[derive(Debug, Clone)]
pub struct Placer {
    /// Shards that may receive new keys (configuration indices): those owning slots in the map.
    eligible: Vec<usize>,
    /// Indexed like [`Region::ALL`]; empty when no shard has a region.
    near: Vec<Candidates>,
}

impl Placer {
    /// Builds the tables for a validated configuration, every shard eligible.
    pub fn new(config: &Config) -> Self {
        Self::among(config, &vec![true; config.shards.len()])
    }

    /// Builds the tables for the shards marked in `eligible` (indexed like `config.shards`):
    /// the router passes the shards that own slots, so a shard waiting for `add_shard` or
    /// drained away receives no new keys.
    pub fn among(config: &Config, eligible: &[bool]) -> Self {
        let present: Vec<Region> = Region::ALL
            .into_iter()
            .filter(|r| {
                config
                    .shards
                    .iter()
                    .zip(eligible)
                    .any(|(s, ok)| *ok && s.region == Some(*r))
            })
            .collect();
        let near = Region::ALL
            .into_iter()
            .map(|target| {
                let Some(nearest) = present
                    .iter()
                    .copied()
                    .min_by(|a, b| target.distance_km(*a).total_cmp(&target.distance_km(*b)))
                else {
                    return Candidates::default();
                };
                let mut candidates = Candidates::default();
                let mut total = 0u64;
                for (index, shard) in config.shards.iter().enumerate() {
                    if eligible[index] && shard.region == Some(nearest) {
                        total += u64::from(shard.priority);
                        candidates.shards.push(index);
                        candidates.cumulative.push(total);
                    }
                }
                candidates
            })
            .collect();
        Placer {
            eligible: (0..eligible.len()).filter(|&i| eligible[i]).collect(),
            near,
        }
    }

    /// A uniformly random shard.
    pub fn random(&self) -> usize {
        self.eligible[fastrand::usize(..self.eligible.len())]
    }

    /// The round-robin shard for the coordinator's `ticket`.
    pub fn round_robin(&self, ticket: u64) -> usize {
        self.eligible[(ticket % self.eligible.len() as u64) as usize]
    }

    /// A shard near `target`: among the shards of the nearest region that has any, chosen at
    /// random in proportion to their priorities.
    pub fn location(&self, target: Option<Region>) -> Result<usize> {
        self.location_with_roll(target, fastrand::u64(..))
    }

    fn location_with_roll(&self, target: Option<Region>, roll: u64) -> Result<usize> {
        let target = target.ok_or_else(|| {
            Error::config(
                "the `location` strategy needs a target region: set `Config::with_target_region` or call `db.near(region)`",
            )
        })?;
        let index = Region::ALL
            .iter()
            .position(|r| *r == target)
            .expect("known region");
        let candidates = &self.near[index];
        if candidates.shards.is_empty() {
            return Err(Error::config(
                "the `location` strategy needs shards with a `region`: no shard has one",
            ));
        }
        Ok(candidates.pick(roll))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ShardConfig;

    fn regional() -> Config {
        Config::new()
            .shard(ShardConfig::new("us-a").region(Region::Enam))
            .shard(ShardConfig::new("eu-a").region(Region::Weur).priority(1))
            .shard(ShardConfig::new("eu-b").region(Region::Weur).priority(3))
            .shard(ShardConfig::new("ap-a").region(Region::Apac))
    }

    #[test]
    fn location_spreads_over_the_region_by_priority() {
        let placer = Placer::new(&regional());
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[placer.location(Some(Region::Weur)).unwrap()] += 1;
        }
        assert_eq!(counts[0] + counts[3], 0, "only European shards: {counts:?}");
        // Priorities 1 : 3 give about 10,000 : 30,000.
        assert!((9_000..=11_000).contains(&counts[1]), "{counts:?}");
        assert!((29_000..=31_000).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn location_falls_back_to_the_nearest_region_with_shards() {
        let placer = Placer::new(&regional());
        for _ in 0..100 {
            // Eastern Europe has no shard: Western Europe is nearest.
            let shard = placer.location(Some(Region::Eeur)).unwrap();
            assert!(shard == 1 || shard == 2);
            assert_eq!(placer.location(Some(Region::Wnam)).unwrap(), 0);
            assert_eq!(placer.location(Some(Region::Oc)).unwrap(), 3);
        }
    }

    #[test]
    fn location_without_regions_or_target_is_a_config_error() {
        let placer = Placer::new(&regional());
        assert_eq!(placer.location(None).unwrap_err().code(), "CONFIG_INVALID");
        let bare = Placer::new(&Config::with_shard_names(["a", "b"]));
        assert_eq!(
            bare.location(Some(Region::Weur)).unwrap_err().code(),
            "CONFIG_INVALID"
        );
    }

    #[test]
    fn weighted_pick_covers_every_roll_boundary() {
        let placer = Placer::new(&regional());
        // Weights 1 and 3: roll 0 -> eu-a; rolls 1..=3 -> eu-b; then it wraps.
        let picks: Vec<usize> = (0..8)
            .map(|roll| placer.location_with_roll(Some(Region::Weur), roll).unwrap())
            .collect();
        assert_eq!(picks, [1, 2, 2, 2, 1, 2, 2, 2]);
    }

    #[test]
    fn random_and_round_robin_are_even() {
        let placer = Placer::new(&Config::with_shard_names(["a", "b", "c"]));
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[placer.random()] += 1;
        }
        assert!(
            counts.iter().all(|c| (9_300..=10_700).contains(c)),
            "{counts:?}"
        );
        let rr: Vec<usize> = (0..6).map(|t| placer.round_robin(t)).collect();
        assert_eq!(rr, [0, 1, 2, 0, 1, 2]);
        let two = Placer::among(
            &Config::with_shard_names(["a", "b", "c"]),
            &[true, false, true],
        );
        let rr: Vec<usize> = (0..4).map(|t| two.round_robin(t)).collect();
        assert_eq!(rr, [0, 2, 0, 2]);
        assert!((0..100).all(|_| two.random() != 1));
    }
}

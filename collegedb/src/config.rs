//! Configuration: the shards, their regions and priorities, and the default placement strategies.
//!
//! Build a [`Config`] in code with [`Config::new`] and the `with_*`/`shard` methods, or load it from
//! JSON with [`Config::from_json`]. Either way [`Config::validate`] runs before a database opens,
//! so a bad configuration fails early with [`Error::ConfigInvalid`] naming the field to fix.
//!
//! The shard list is ordered and **append-only**: hash placement maps keys onto positions in it,
//! so reordering or removing shards moves keys. Add new shards at the end.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A Cloudflare location hint, as used by D1 and Durable Objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    /// Western North America.
    Wnam,
    /// Eastern North America.
    Enam,
    /// Western Europe.
    Weur,
    /// Eastern Europe.
    Eeur,
    /// Asia-Pacific.
    Apac,
    /// Oceania.
    Oc,
    /// Middle East.
    Me,
    /// Africa.
    Af,
}

impl Region {
    /// Every region, in a fixed order.
    pub const ALL: [Region; 8] = [
        Region::Wnam,
        Region::Enam,
        Region::Weur,
        Region::Eeur,
        Region::Apac,
        Region::Oc,
        Region::Me,
        Region::Af,
    ];

    /// The location hint's name (`"wnam"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Region::Wnam => "wnam",
            Region::Enam => "enam",
            Region::Weur => "weur",
            Region::Eeur => "eeur",
            Region::Apac => "apac",
            Region::Oc => "oc",
            Region::Me => "me",
            Region::Af => "af",
        }
    }

    /// A representative point (latitude, longitude in degrees) for distance ranking.
    fn anchor(self) -> (f64, f64) {
        match self {
            Region::Wnam => (37.8, -122.4),
            Region::Enam => (40.7, -74.0),
            Region::Weur => (51.5, -0.1),
            Region::Eeur => (52.2, 21.0),
            Region::Apac => (1.35, 103.8),
            Region::Oc => (-33.9, 151.2),
            Region::Me => (25.3, 55.3),
            Region::Af => (-26.2, 28.0),
        }
    }

    /// Great-circle distance between the regions' anchors, in kilometres.
    pub fn distance_km(self, other: Region) -> f64 {
        self.distance_from(other.anchor())
    }

    /// Great-circle distance from the region's anchor to `(latitude, longitude)` in degrees, in
    /// kilometres.
    pub fn distance_from(self, (lat2, lon2): (f64, f64)) -> f64 {
        let (lat1, lon1) = self.anchor();
        let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
        let dp = (lat2 - lat1).to_radians();
        let dl = (lon2 - lon1).to_radians();
        let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        2.0 * 6371.0 * a.sqrt().asin()
    }
}

impl std::str::FromStr for Region {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Region::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                Error::config(format!(
                    "unknown region `{s}`; expected one of wnam, enam, weur, eeur, apac, oc, me, af"
                ))
            })
    }
}

/// How a key is placed on (write) or looked up from (read) a shard. See the crate docs for the
/// exact semantics of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Deterministic: jump consistent hash of the key over the shard list. Needs no directory.
    Hash,
    /// Even placement of new keys through the coordinator's counter.
    RoundRobin,
    /// Uniformly random placement of new keys.
    Random,
    /// Placement near a target region, spread over that region's shards by priority.
    Location,
}

impl Strategy {
    /// The strategy's name as written in attributes and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Hash => "hash",
            Strategy::RoundRobin => "round-robin",
            Strategy::Random => "random",
            Strategy::Location => "location",
        }
    }

    /// Whether the strategy computes the shard from the key alone.
    pub fn is_deterministic(self) -> bool {
        self == Strategy::Hash
    }
}

/// A read strategy and a write strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Strategies {
    /// How reads (and updates, deletes) find a key's shard.
    pub read: Strategy,
    /// How new keys are placed.
    pub write: Strategy,
}

impl Strategies {
    /// The same strategy for reads and writes.
    pub const fn uniform(strategy: Strategy) -> Self {
        Strategies {
            read: strategy,
            write: strategy,
        }
    }
}

impl Default for Strategies {
    fn default() -> Self {
        Strategies::uniform(Strategy::Hash)
    }
}

/// A model's own strategies; unset ones inherit the configuration's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StrategyOverride {
    /// Overrides [`Strategies::read`].
    pub read: Option<Strategy>,
    /// Overrides [`Strategies::write`].
    pub write: Option<Strategy>,
}

impl StrategyOverride {
    /// Applies the override on top of defaults.
    pub fn resolve(self, defaults: Strategies) -> Strategies {
        Strategies {
            read: self.read.unwrap_or(defaults.read),
            write: self.write.unwrap_or(defaults.write),
        }
    }
}

/// What `round-robin` placement does when the coordinator cannot hand out a ticket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoordinatorFallback {
    /// Use a counter local to this process (isolate): placement stays round-robin within the
    /// process, so still close to even, and the write succeeds. The default.
    #[default]
    LocalCounter,
    /// Fail the write with `COORDINATOR_UNAVAILABLE`.
    Error,
}

/// One shard: a D1 database (on Cloudflare) or a SQLite file (embedded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// Unique name, ignoring ASCII case: the D1 binding on Cloudflare, the file stem on the
    /// embedded backend.
    /// Letters, digits, `_` and `-`, at most 64 characters.
    pub name: String,
    /// Where the shard lives, for the `location` strategy.
    #[serde(default)]
    pub region: Option<Region>,
    /// Relative weight among shards of one region for the `location` strategy (at least 1).
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// On Cloudflare: the Durable Object namespace binding that holds this shard as an object
    /// with SQLite storage (named after the shard), instead of a D1 binding of the shard's name.
    /// Ignored by the embedded backend, where every shard is a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_object: Option<String>,
}

fn default_priority() -> u32 {
    1
}

impl ShardConfig {
    /// A shard with no region and priority 1.
    pub fn new(name: impl Into<String>) -> Self {
        ShardConfig {
            name: name.into(),
            region: None,
            priority: 1,
            durable_object: None,
        }
    }

    /// Keeps the shard in a Durable Object of the namespace bound as `binding`, instead of a D1
    /// database (Cloudflare only; see `backend::cloudflare::ObjectShard`).
    #[must_use]
    pub fn durable_object(mut self, binding: impl Into<String>) -> Self {
        self.durable_object = Some(binding.into());
        self
    }

    /// Sets the shard's region.
    #[must_use]
    pub fn region(mut self, region: Region) -> Self {
        self.region = Some(region);
        self
    }

    /// Sets the shard's priority weight.
    #[must_use]
    pub fn priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }
}

/// The whole configuration of a sharded database.
///
/// ```
/// use collegedb::{Config, Region, ShardConfig, Strategy};
///
/// let config = Config::new()
///     .shard(ShardConfig::new("east").region(Region::Enam))
///     .shard(ShardConfig::new("west").region(Region::Wnam).priority(2))
///     .with_strategy(Strategy::Hash);
/// config.validate().unwrap();
///
/// let same = Config::from_json(r#"{
///     "shards": [
///         { "name": "east", "region": "enam" },
///         { "name": "west", "region": "wnam", "priority": 2 }
///     ],
///     "strategy": { "read": "hash", "write": "hash" }
/// }"#).unwrap();
/// assert_eq!(config, same);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The shards, in append-only order.
    pub shards: Vec<ShardConfig>,
    /// Default strategies for models that do not set their own.
    #[serde(default)]
    pub strategy: Strategies,
    /// The region new keys target under the `location` strategy, unless a call names one.
    #[serde(default)]
    pub target_region: Option<Region>,
    /// How many key-to-shard entries the in-memory directory cache holds.
    #[serde(default = "default_cache_capacity")]
    pub directory_cache_capacity: usize,
    /// Whether [`flush`](crate::CollegeDb::flush) may delete data. Never enable in production.
    #[serde(default)]
    pub allow_flush: bool,
    /// What round-robin placement does when the coordinator fails.
    #[serde(default)]
    pub coordinator_fallback: CoordinatorFallback,
    /// How long, in milliseconds, a unique value claimed by a write that has not written its
    /// row yet is held for it (see [`crate::unique`]). A write of the same value by another
    /// key waits that long at most before taking the claim over.
    #[serde(default = "default_unique_lease_ms")]
    pub unique_lease_ms: u64,
}

fn default_cache_capacity() -> usize {
    100_000
}

fn default_unique_lease_ms() -> u64 {
    10_000
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

impl Config {
    /// An empty configuration: add shards with [`Config::shard`].
    pub fn new() -> Self {
        Config {
            shards: Vec::new(),
            strategy: Strategies::default(),
            target_region: None,
            directory_cache_capacity: default_cache_capacity(),
            allow_flush: false,
            coordinator_fallback: CoordinatorFallback::default(),
            unique_lease_ms: default_unique_lease_ms(),
        }
    }

    /// A configuration of shards with the given names, no regions, hash placement.
    pub fn with_shard_names<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        names.into_iter().fold(Config::new(), |config, name| {
            config.shard(ShardConfig::new(name))
        })
    }

    /// Parses a JSON configuration. Unknown fields are an error, not ignored.
    pub fn from_json(json: &str) -> Result<Self> {
        let config: Config = serde_json::from_str(json).map_err(Error::config)?;
        config.validate()?;
        Ok(config)
    }

    /// A configuration of the binding names that start with `prefix`, in name order, with the
    /// defaults of [`Config::new`]; how a Worker discovers its D1 shards from its environment
    /// (`backend::cloudflare::config_from_env`). Validated like [`Config::from_json`].
    ///
    /// The order only seeds the first shard map: once the coordinator stores one, a binding added
    /// later (whatever its name sorts as) joins as a standby shard that owns nothing until
    /// [`CollegeDb::add_shard`](crate::CollegeDb::add_shard).
    ///
    /// ```
    /// use collegedb::Config;
    /// let config = Config::from_binding_names("DB_", ["DB_WEST", "CACHE", "DB_EAST"])?;
    /// assert_eq!(config.shards[0].name, "DB_EAST");
    /// assert_eq!(config.shards.len(), 2);
    /// assert_eq!(Config::from_binding_names("SHARD_", ["DB_EAST"]).unwrap_err().code(), "CONFIG_INVALID");
    /// # Ok::<(), collegedb::Error>(())
    /// ```
    pub fn from_binding_names<'a>(
        prefix: &str,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self> {
        if prefix.is_empty() {
            return Err(Error::config(
                "the shard binding prefix is empty: name one, such as `DB_`, that only the shards' D1 bindings start with",
            ));
        }
        let mut shards: Vec<&str> = names
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect();
        if shards.is_empty() {
            return Err(Error::config(format!(
                "no D1 binding starts with `{prefix}`: declare the shards as [[d1_databases]] in wrangler.toml with bindings named `{prefix}...`"
            )));
        }
        shards.sort_unstable();
        let config = Config::with_shard_names(shards);
        config.validate()?;
        Ok(config)
    }

    /// Appends a shard.
    #[must_use]
    pub fn shard(mut self, shard: ShardConfig) -> Self {
        self.shards.push(shard);
        self
    }

    /// Sets the same default strategy for reads and writes.
    #[must_use]
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = Strategies::uniform(strategy);
        self
    }

    /// Sets the default read and write strategies separately.
    #[must_use]
    pub fn with_strategies(mut self, read: Strategy, write: Strategy) -> Self {
        self.strategy = Strategies { read, write };
        self
    }

    /// Sets the default target region for the `location` strategy.
    #[must_use]
    pub fn with_target_region(mut self, region: Region) -> Self {
        self.target_region = Some(region);
        self
    }

    /// Sets the directory cache's capacity in entries (0 disables caching).
    #[must_use]
    pub fn with_directory_cache_capacity(mut self, entries: usize) -> Self {
        self.directory_cache_capacity = entries;
        self
    }

    /// Allows or forbids [`flush`](crate::CollegeDb::flush).
    #[must_use]
    pub fn allow_flush(mut self, allow: bool) -> Self {
        self.allow_flush = allow;
        self
    }

    /// Sets what round-robin placement does when the coordinator fails.
    #[must_use]
    pub fn with_coordinator_fallback(mut self, fallback: CoordinatorFallback) -> Self {
        self.coordinator_fallback = fallback;
        self
    }

    /// Checks the configuration; every database constructor calls this.
    pub fn validate(&self) -> Result<()> {
        if self.shards.is_empty() {
            return Err(Error::config(
                "`shards` is empty: configure at least one shard",
            ));
        }
        if self.shards.len() > u16::MAX as usize {
            return Err(Error::config("more than 65535 shards"));
        }
        let mut seen = std::collections::HashMap::new();
        for shard in &self.shards {
            let name = &shard.name;
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return Err(Error::config(format!(
                    "shard name {name:?} is invalid: use 1 to 64 letters, digits, `_` or `-`"
                )));
            }
            // Names become file names natively, and differ only by case on case-insensitive file
            // systems: `a` and `A` would be one file.
            if let Some(other) = seen.insert(name.to_ascii_lowercase(), name.as_str()) {
                return Err(if other == name {
                    Error::config(format!("shard name `{name}` appears twice"))
                } else {
                    Error::config(format!(
                        "shard names `{other}` and `{name}` differ only in case; they would share one file on case-insensitive file systems: rename one"
                    ))
                });
            }
            if shard.priority == 0 {
                return Err(Error::config(format!(
                    "shard `{name}` has priority 0: priorities are weights and must be at least 1"
                )));
            }
        }
        self.check_location(self.strategy.write)
    }

    /// Checks that `location` placement can work with this configuration, when `write` is
    /// `location`: some shard needs a region, and a target region must be set (handles built with
    /// [`CollegeDb::near`](crate::CollegeDb::near) override it per request). The database checks
    /// each model's own write strategy the same way on its first write.
    pub fn check_location(&self, write: Strategy) -> Result<()> {
        if write != Strategy::Location {
            return Ok(());
        }
        if self.shards.iter().all(|s| s.region.is_none()) {
            return Err(Error::config(
                "the `location` write strategy needs shards with a `region`, and no shard has one: set `region` on the shards",
            ));
        }
        if self.target_region.is_none() {
            return Err(Error::config(
                "the `location` write strategy needs a `target_region` (the default; `CollegeDb::near` overrides it per request)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_configs_are_refused_with_a_reason() {
        let cases = [
            (r#"{"shards": []}"#, "empty"),
            (r#"{"shards": [{"name": "a"}, {"name": "a"}]}"#, "twice"),
            (r#"{"shards": [{"name": "../etc"}]}"#, "invalid"),
            (
                r#"{"shards": [{"name": "a", "priority": 0}]}"#,
                "priority 0",
            ),
            (
                r#"{"shards": [{"name": "a", "region": "mars"}]}"#,
                "unknown variant",
            ),
            (
                r#"{"shards": [{"name": "a"}], "strategy": {"read": "hsh", "write": "hash"}}"#,
                "unknown variant",
            ),
            (
                r#"{"shards": [{"name": "a"}], "shardz": 1}"#,
                "unknown field",
            ),
            (r#"{"shards": "#, "EOF"),
        ];
        for (json, expected) in cases {
            let err = Config::from_json(json).unwrap_err();
            assert_eq!(err.code(), "CONFIG_INVALID", "{json}");
            assert!(err.to_string().contains(expected), "{json}: {err}");
        }
    }

    #[test]
    fn region_distances_rank_neighbours_first() {
        assert!(Region::Weur.distance_km(Region::Eeur) < Region::Weur.distance_km(Region::Enam));
        assert!(Region::Wnam.distance_km(Region::Enam) < Region::Wnam.distance_km(Region::Apac));
        assert!(Region::Apac.distance_km(Region::Oc) < Region::Apac.distance_km(Region::Weur));
        assert_eq!(Region::Me.distance_km(Region::Me), 0.0);
        assert_eq!("oc".parse::<Region>().unwrap(), Region::Oc);
        assert!("mars".parse::<Region>().is_err());
    }
}

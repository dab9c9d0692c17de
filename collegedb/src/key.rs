//! Shard keys: the primary-key values that decide where a row lives.
//!
//! A key is either an integer or a string. Its *canonical bytes* feed the placement hash: the
//! 8-byte big-endian two's complement of an integer, or the UTF-8 bytes of a string. They never
//! depend on the platform, so a key lands on the same shard on x86_64 and on wasm32.

use crate::error::{Error, Result, MAX_SAFE_INTEGER};
use crate::value::{ColumnValue, Value};

/// The longest key accepted, in canonical bytes: Cloudflare KV's key limit.
pub const MAX_KEY_BYTES: usize = 512;

/// A validated shard key. Its serde form (`{"int": 7}`, `{"text": "alice"}`) is for journals;
/// a key read back is validated again before use.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Key {
    /// An integer key, within ±(2^53 - 1).
    Int(i64),
    /// A non-empty string key of at most [`MAX_KEY_BYTES`] bytes.
    Text(String),
}

impl Key {
    /// Validates and wraps an integer key.
    pub fn int(value: i64) -> Result<Self> {
        if !(-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&value) {
            return Err(Error::integer_out_of_range(
                value,
                "integer shard keys must lie within ±(2^53 - 1) so D1 can carry them exactly",
            ));
        }
        Ok(Key::Int(value))
    }

    /// Validates and wraps a string key.
    pub fn text(value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        if value.is_empty() {
            return Err(Error::KeyInvalid {
                reason: "the empty string cannot be a shard key",
            });
        }
        if value.len() > MAX_KEY_BYTES {
            return Err(Error::KeyTooLarge {
                len: value.len(),
                max: MAX_KEY_BYTES,
            });
        }
        Ok(Key::Text(value))
    }

    /// The stable 64-bit placement hash of the canonical bytes (XXH3-64, seed 0).
    pub fn placement_hash(&self) -> u64 {
        match self {
            Key::Int(i) => xxhash_rust::xxh3::xxh3_64(&i.to_be_bytes()),
            Key::Text(s) => xxhash_rust::xxh3::xxh3_64(s.as_bytes()),
        }
    }

    /// A self-describing byte encoding for directory stores: a type tag, then the canonical bytes.
    /// `1` and `"1"` never share an entry.
    pub fn directory_bytes(&self) -> Vec<u8> {
        match self {
            Key::Int(i) => {
                let mut out = Vec::with_capacity(9);
                out.push(b'i');
                out.extend_from_slice(&i.to_be_bytes());
                out
            }
            Key::Text(s) => {
                let mut out = Vec::with_capacity(1 + s.len());
                out.push(b's');
                out.extend_from_slice(s.as_bytes());
                out
            }
        }
    }

    /// Decodes [`Key::directory_bytes`].
    pub fn from_directory_bytes(bytes: &[u8]) -> Result<Self> {
        match bytes.split_first() {
            Some((b'i', rest)) if rest.len() == 8 => Ok(Key::Int(i64::from_be_bytes(
                rest.try_into().expect("8 bytes"),
            ))),
            Some((b's', rest)) => std::str::from_utf8(rest)
                .map(|s| Key::Text(s.to_owned()))
                .map_err(|_| {
                    Error::DirectoryInconsistent(
                        "directory entry holds a non-UTF-8 text key".into(),
                    )
                }),
            _ => Err(Error::DirectoryInconsistent(
                "directory entry holds a malformed key".into(),
            )),
        }
    }

    /// The key read back from a key column: an INTEGER or a TEXT value.
    pub fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Integer(i) => Key::int(i),
            Value::Text(s) => Key::text(s),
            other => Err(Error::decode(
                "key",
                format!(
                    "a shard key is INTEGER or TEXT, found {}",
                    other.type_name()
                ),
            )),
        }
    }

    /// The key as a value to bind in a statement.
    pub fn to_value(&self) -> Value {
        match self {
            Key::Int(i) => Value::Integer(*i),
            Key::Text(s) => Value::Text(s.clone()),
        }
    }

    /// The key as a value to bind, without copying.
    pub fn into_value(self) -> Value {
        match self {
            Key::Int(i) => Value::Integer(i),
            Key::Text(s) => Value::Text(s),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// A Rust type that can be a model's shard key: `String`, `i64`, `i32` or `u32`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a shard key",
    label = "unsupported shard key type",
    note = "a `#[sharded(key)]` field must be `String`, `i64`, `i32` or `u32`"
)]
pub trait ShardKey: ColumnValue + Clone + Send + Sync + 'static {
    /// Validates the value and converts it to a [`Key`].
    fn into_key(self) -> Result<Key>;
    /// Converts a validated key back (used by cross-shard listing and moves).
    fn from_key(key: Key) -> Result<Self>;
}

impl ShardKey for String {
    fn into_key(self) -> Result<Key> {
        Key::text(self)
    }
    fn from_key(key: Key) -> Result<Self> {
        match key {
            Key::Text(s) => Ok(s),
            Key::Int(i) => Ok(i.to_string()),
        }
    }
}

macro_rules! int_shard_key {
    ($($t:ty),*) => {$(
        impl ShardKey for $t {
            fn into_key(self) -> Result<Key> {
                Key::int(self as i64)
            }
            fn from_key(key: Key) -> Result<Self> {
                match key {
                    Key::Int(i) => <$t>::try_from(i).map_err(|_| {
                        Error::integer_out_of_range(i, concat!("does not fit ", stringify!($t)))
                    }),
                    Key::Text(_) => Err(Error::decode("key", "expected an integer key, found text")),
                }
            }
        }
    )*};
}
int_shard_key!(i64, i32, u32);

/// A value that can be passed where a model's key of type `K` is expected.
///
/// For `String` keys this accepts `String`, `&str` and `&String`; for integer keys, the integer
/// type itself and narrower integer types that convert losslessly.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a key of type `{K}`",
    label = "expected `{K}` here",
    note = "pass a value of the key field's own type"
)]
pub trait KeyArg<K: ShardKey> {
    /// Converts into the key type.
    fn into_arg(self) -> K;
}

impl KeyArg<String> for String {
    fn into_arg(self) -> String {
        self
    }
}
impl KeyArg<String> for &str {
    fn into_arg(self) -> String {
        self.to_owned()
    }
}
impl KeyArg<String> for &String {
    fn into_arg(self) -> String {
        self.clone()
    }
}
macro_rules! into_int_key {
    ($key:ty: $($from:ty),*) => {$(
        impl KeyArg<$key> for $from {
            fn into_arg(self) -> $key { <$key>::from(self) }
        }
        impl KeyArg<$key> for &$from {
            fn into_arg(self) -> $key { <$key>::from(*self) }
        }
    )*};
}
into_int_key!(i64: i64, i32, u32, i16, u16, i8, u8);
into_int_key!(i32: i32, i16, u16, i8, u8);
into_int_key!(u32: u32, u16, u8);

/// Anything that names a key in the raw routed API: strings, integers, or a [`Key`].
pub trait AnyKey {
    /// Validates and converts to a [`Key`].
    fn into_any_key(self) -> Result<Key>;
}

impl AnyKey for Key {
    fn into_any_key(self) -> Result<Key> {
        match self {
            Key::Int(i) => Key::int(i),
            Key::Text(s) => Key::text(s),
        }
    }
}
impl AnyKey for &str {
    fn into_any_key(self) -> Result<Key> {
        Key::text(self)
    }
}
impl AnyKey for &String {
    fn into_any_key(self) -> Result<Key> {
        Key::text(self.as_str())
    }
}
impl<K: ShardKey> AnyKey for K {
    fn into_any_key(self) -> Result<Key> {
        self.into_key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_oversized_keys_are_refused() {
        assert_eq!(Key::text("").unwrap_err().code(), "KEY_INVALID");
        assert!(Key::text("x".repeat(MAX_KEY_BYTES)).is_ok());
        let err = Key::text("x".repeat(MAX_KEY_BYTES + 1)).unwrap_err();
        assert_eq!(err.code(), "KEY_TOO_LARGE");
        // Multi-byte characters count in bytes, not chars.
        assert_eq!(
            Key::text("é".repeat(257)).unwrap_err().code(),
            "KEY_TOO_LARGE"
        );
    }

    #[test]
    fn integer_keys_beyond_2_pow_53_are_refused() {
        assert!(Key::int(MAX_SAFE_INTEGER).is_ok());
        assert!(Key::int(-MAX_SAFE_INTEGER).is_ok());
        assert_eq!(
            Key::int(MAX_SAFE_INTEGER + 1).unwrap_err().code(),
            "INTEGER_OUT_OF_RANGE"
        );
        assert_eq!(
            Key::int(i64::MIN).unwrap_err().code(),
            "INTEGER_OUT_OF_RANGE"
        );
    }

    #[test]
    fn directory_bytes_round_trip_and_separate_types() {
        for key in [
            Key::Int(-5),
            Key::Int(1),
            Key::Text("1".into()),
            Key::Text("a\0'b".into()),
        ] {
            assert_eq!(
                Key::from_directory_bytes(&key.directory_bytes()).unwrap(),
                key
            );
        }
        assert_ne!(
            Key::Int(1).directory_bytes(),
            Key::Text("1".into()).directory_bytes()
        );
    }
}

//! SQL values as they cross the wire, and the mapping between Rust field types and columns.
//!
//! [`Value`] mirrors SQLite's (and so D1's) five storage classes. [`ColumnValue`] is the trait a
//! model field's type implements to be stored in a column; the derive calls it, so a field of an
//! unsupported type is a compile error at that field.
//!
//! Integers: D1 carries numbers as JavaScript doubles, so only integers within ±(2^53 - 1) survive
//! exactly. collegedb *rejects* larger integers with [`Error::IntegerOutOfRange`] everywhere (keys,
//! model fields and raw parameters) on every backend, so code that works on the embedded backend
//! works unchanged on D1. Store wider numbers as `String`.

use crate::error::{Error, Result, MAX_SAFE_INTEGER};

/// One SQL value: SQLite's storage classes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// A 64-bit signed integer (within ±(2^53 - 1) when bound; see the module docs).
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Raw bytes.
    Blob(Vec<u8>),
}

impl Value {
    /// Checks that this value can be bound on every backend: integers within ±(2^53 - 1), no
    /// NaN (SQLite stores NaN as NULL, which would silently change the value), and TEXT and BLOB
    /// values within [`crate::MAX_VALUE_BYTES`].
    pub fn check_bindable(&self) -> Result<()> {
        let max = crate::model::MAX_VALUE_BYTES;
        match self {
            Value::Text(t) if t.len() > max => Err(Error::ValueTooLarge {
                what: "a TEXT value",
                len: t.len(),
                max,
            }),
            Value::Blob(b) if b.len() > max => Err(Error::ValueTooLarge {
                what: "a BLOB value",
                len: b.len(),
                max,
            }),
            Value::Real(f) if f.is_nan() => Err(Error::ValueUnsupported {
                reason: "NaN cannot be stored: SQLite and D1 turn it into NULL",
            }),
            Value::Integer(i) if !(-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(i) => {
                Err(Error::integer_out_of_range(
                    i,
                    "D1 carries integers exactly only within ±(2^53 - 1)",
                ))
            }
            _ => Ok(()),
        }
    }

    /// The storage class name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Integer(_) => "INTEGER",
            Value::Real(_) => "REAL",
            Value::Text(_) => "TEXT",
            Value::Blob(_) => "BLOB",
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $variant:ident $(as $cast:ty)?),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self { Value::$variant(v $(as $cast)?) }
        }
    )*};
}
value_from!(i64 => Integer, i32 => Integer as i64, u32 => Integer as i64, i16 => Integer as i64,
    u16 => Integer as i64, i8 => Integer as i64, u8 => Integer as i64, f64 => Real, f32 => Real as f64,
    String => Text, Vec<u8> => Blob);

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Integer(v as i64)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Blob(v.to_vec())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// The declared SQL type of a column, used for `CREATE TABLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `INTEGER` (also booleans, as 0/1).
    Integer,
    /// `REAL`.
    Real,
    /// `TEXT` (also JSON).
    Text,
    /// `BLOB`.
    Blob,
}

/// A Rust type that can be stored in one column of a sharded model.
///
/// Implemented for `String`, `i64`, `i32`, `u32`, `i16`, `u16`, `i8`, `u8`, `f64`, `f32`, `bool`,
/// `Vec<u8>`, `serde_json::Value` and `Option<T>` of these. Any `serde` type can be stored as JSON
/// text by marking the field `#[sharded(json)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in a sharded model column",
    label = "unsupported column type",
    note = "supported: String, i64, i32, u32, i16, u16, i8, u8, f64, f32, bool, Vec<u8>, serde_json::Value, and Option<T> of these",
    note = "to store any serde type as JSON text, mark the field `#[sharded(json)]`"
)]
pub trait ColumnValue: Sized {
    /// The column's declared type.
    const COLUMN_TYPE: ColumnType;
    /// Whether the column accepts `NULL` (true for `Option<T>`).
    const NULLABLE: bool = false;
    /// Converts to a bindable value. Fails for integers D1 cannot carry.
    fn to_value(&self) -> Result<Value>;
    /// Converts from a value read back from a shard.
    fn from_value(value: Value) -> Result<Self>;
}

fn mismatch(expected: &str, got: &Value) -> Error {
    Error::decode(
        "?",
        format!("expected {expected}, found {}", got.type_name()),
    )
}

macro_rules! integer_column {
    ($($t:ty),*) => {$(
        impl ColumnValue for $t {
            const COLUMN_TYPE: ColumnType = ColumnType::Integer;
            fn to_value(&self) -> Result<Value> {
                Ok(Value::Integer(*self as i64))
            }
            fn from_value(value: Value) -> Result<Self> {
                match value {
                    Value::Integer(i) => <$t>::try_from(i).map_err(|_| {
                        Error::integer_out_of_range(i, concat!("does not fit ", stringify!($t)))
                    }),
                    other => Err(mismatch("INTEGER", &other)),
                }
            }
        }
    )*};
}
integer_column!(i32, u32, i16, u16, i8, u8);

impl ColumnValue for i64 {
    const COLUMN_TYPE: ColumnType = ColumnType::Integer;
    fn to_value(&self) -> Result<Value> {
        let value = Value::Integer(*self);
        value.check_bindable()?;
        Ok(value)
    }
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Integer(i) => Ok(i),
            other => Err(mismatch("INTEGER", &other)),
        }
    }
}

impl ColumnValue for f64 {
    const COLUMN_TYPE: ColumnType = ColumnType::Real;
    fn to_value(&self) -> Result<Value> {
        let value = Value::Real(*self);
        value.check_bindable()?;
        Ok(value)
    }
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Real(f) => Ok(f),
            // SQLite stores integral REALs compactly and D1 returns plain numbers.
            Value::Integer(i) => Ok(i as f64),
            other => Err(mismatch("REAL", &other)),
        }
    }
}

impl ColumnValue for f32 {
    const COLUMN_TYPE: ColumnType = ColumnType::Real;
    fn to_value(&self) -> Result<Value> {
        (*self as f64).to_value()
    }
    fn from_value(value: Value) -> Result<Self> {
        f64::from_value(value).map(|f| f as f32)
    }
}

impl ColumnValue for bool {
    const COLUMN_TYPE: ColumnType = ColumnType::Integer;
    fn to_value(&self) -> Result<Value> {
        Ok(Value::Integer(*self as i64))
    }
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Integer(0) => Ok(false),
            Value::Integer(1) => Ok(true),
            Value::Integer(i) => Err(Error::decode(
                "?",
                format!("expected 0 or 1 for a bool, found {i}"),
            )),
            other => Err(mismatch("INTEGER (0/1)", &other)),
        }
    }
}

impl ColumnValue for String {
    const COLUMN_TYPE: ColumnType = ColumnType::Text;
    fn to_value(&self) -> Result<Value> {
        Ok(Value::Text(self.clone()))
    }
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Text(s) => Ok(s),
            other => Err(mismatch("TEXT", &other)),
        }
    }
}

impl ColumnValue for Vec<u8> {
    const COLUMN_TYPE: ColumnType = ColumnType::Blob;
    fn to_value(&self) -> Result<Value> {
        Ok(Value::Blob(self.clone()))
    }
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Blob(b) => Ok(b),
            other => Err(mismatch("BLOB", &other)),
        }
    }
}

impl ColumnValue for serde_json::Value {
    const COLUMN_TYPE: ColumnType = ColumnType::Text;
    fn to_value(&self) -> Result<Value> {
        Ok(Value::Text(self.to_string()))
    }
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Text(s) => serde_json::from_str(&s)
                .map_err(|e| Error::decode("?", format!("invalid JSON: {e}"))),
            other => Err(mismatch("TEXT (JSON)", &other)),
        }
    }
}

impl<T: ColumnValue> ColumnValue for Option<T> {
    const COLUMN_TYPE: ColumnType = T::COLUMN_TYPE;
    const NULLABLE: bool = true;
    fn to_value(&self) -> Result<Value> {
        match self {
            Some(v) => v.to_value(),
            None => Ok(Value::Null),
        }
    }
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// Stores any `serde` type as JSON text; used by fields marked `#[sharded(json)]`.
pub mod json {
    use super::*;

    /// Serializes a field to a TEXT value.
    pub fn to_value<T: serde::Serialize>(value: &T) -> Result<Value> {
        serde_json::to_string(value)
            .map(Value::Text)
            .map_err(|e| Error::decode("?", format!("cannot serialize to JSON: {e}")))
    }

    /// Deserializes a field from a TEXT value (`NULL` reads as JSON `null`, so `Option<T>` works).
    pub fn from_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
        let parsed = match value {
            Value::Text(s) => serde_json::from_str(&s),
            Value::Null => serde_json::from_str("null"),
            other => return Err(mismatch("TEXT (JSON)", &other)),
        };
        parsed.map_err(|e| Error::decode("?", format!("invalid JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_beyond_2_pow_53_are_refused() {
        assert!((MAX_SAFE_INTEGER).to_value().is_ok());
        assert!((-MAX_SAFE_INTEGER).to_value().is_ok());
        let err = (MAX_SAFE_INTEGER + 1).to_value().unwrap_err();
        assert_eq!(err.code(), "INTEGER_OUT_OF_RANGE");
        assert!(i64::MIN.to_value().is_err());
    }

    #[test]
    fn narrow_integers_refuse_values_that_do_not_fit() {
        assert_eq!(u32::from_value(Value::Integer(7)).unwrap(), 7);
        assert_eq!(
            u32::from_value(Value::Integer(-1)).unwrap_err().code(),
            "INTEGER_OUT_OF_RANGE"
        );
        assert_eq!(
            i32::from_value(Value::Integer(1 << 40)).unwrap_err().code(),
            "INTEGER_OUT_OF_RANGE"
        );
    }

    #[test]
    fn bools_are_zero_and_one() {
        assert_eq!(true.to_value().unwrap(), Value::Integer(1));
        assert!(!bool::from_value(Value::Integer(0)).unwrap());
        assert!(bool::from_value(Value::Integer(2)).is_err());
    }

    #[test]
    fn options_map_null() {
        assert_eq!(Option::<String>::None.to_value().unwrap(), Value::Null);
        assert_eq!(Option::<i32>::from_value(Value::Null).unwrap(), None);
        assert_eq!(
            Option::<i32>::from_value(Value::Integer(3)).unwrap(),
            Some(3)
        );
    }

    #[test]
    fn type_mismatch_is_a_decode_error() {
        assert_eq!(
            String::from_value(Value::Integer(1)).unwrap_err().code(),
            "DECODE_FAILED"
        );
    }
}

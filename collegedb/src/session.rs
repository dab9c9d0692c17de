//! Read consistency: the primary, or D1 read replicas through sessions, with bookmarks carried
//! across requests.
//!
//! D1 can serve reads from replicas near the user. It does so only inside a *session*
//! (`withSession`), which keeps the statements it runs sequentially consistent: each sees every
//! write an earlier statement of the session made or saw. A session starts either where a
//! *bookmark* points (the latest position an earlier session saw), or, without one, as
//! [`SessionStart`] says. Each shard is its own D1 database, so a handle keeps one session and
//! one bookmark per shard.
//!
//! | [`ReadConsistency`] | reads go to | sees its own writes |
//! | --- | --- | --- |
//! | `Primary` (default) | each shard's primary | always |
//! | `Sessions(FirstPrimary)` | the primary first, then any replica at least as new | within the handle, and across requests with [`Bookmarks`] |
//! | `Sessions(FirstUnconstrained)` | any replica from the first statement | within the handle, and across requests with [`Bookmarks`] |
//!
//! To let a user read their own writes on the next request, send the handle's bookmarks back
//! with the response ([`Bookmarks::HEADER`]) and start the next request's sessions from the
//! header the client returns. On Workers, `backend::cloudflare::open_with` opens such a
//! handle and `backend::cloudflare::bookmarks` reads its bookmarks; the embedded backend has no
//! replicas, and every statement there reads the one database.
//!
//! ```
//! use collegedb::session::Bookmarks;
//!
//! let from_client = Bookmarks::parse("DB_EAST=0000001b-00000004-00004fc1-f2c0ac0fb69de7f4")?;
//! assert_eq!(from_client.get("DB_EAST"), Some("0000001b-00000004-00004fc1-f2c0ac0fb69de7f4"));
//! assert!(Bookmarks::parse("DB_EAST=\"><script>").is_err());
//! # Ok::<(), collegedb::Error>(())
//! ```

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Where a handle's reads go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Every statement goes to each shard's primary database (no session).
    #[default]
    Primary,
    /// One D1 session per shard: reads may come from replicas, sequentially consistent within
    /// the handle. A shard with a bookmark starts from it; the others start as this says.
    Sessions(SessionStart),
}

/// How a session without a bookmark starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStart {
    /// The first statement goes to the primary, so it sees the latest write (`first-primary`).
    FirstPrimary,
    /// The first statement may go to any replica, however far behind (`first-unconstrained`).
    FirstUnconstrained,
}

impl SessionStart {
    /// D1's name for the constraint.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStart::FirstPrimary => "first-primary",
            SessionStart::FirstUnconstrained => "first-unconstrained",
        }
    }
}

/// The longest bookmark accepted (D1's are about 60 characters).
pub const MAX_BOOKMARK_BYTES: usize = 256;

/// The latest D1 session bookmark of each shard: what a client carries from one request to the
/// next so that it reads its own writes.
///
/// The header form is `SHARD=bookmark` pairs joined by commas, for example
/// `DB_EAST=0000001b-00000004-00004fc1-f2c0ac0f,DB_EU=00000009-...`. Parsing refuses anything
/// else with [`Error::BookmarkInvalid`]: names outside the shard-name alphabet, bookmarks with
/// characters other than letters, digits, `-`, `_`, `.` and `:`, or more than 256 pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bookmarks(BTreeMap<String, String>);

impl Bookmarks {
    /// The HTTP header that carries bookmarks, both ways.
    pub const HEADER: &'static str = "x-collegedb-bookmarks";

    /// No bookmarks: every session starts as its [`SessionStart`] says.
    pub fn new() -> Self {
        Bookmarks::default()
    }

    /// Parses the header form. An empty string is no bookmarks.
    pub fn parse(header: &str) -> Result<Self> {
        let mut bookmarks = BTreeMap::new();
        for pair in header.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((shard, bookmark)) = pair.split_once('=') else {
                return Err(Error::BookmarkInvalid(format!(
                    "`{}` is not `SHARD=bookmark`",
                    shown(pair)
                )));
            };
            Self::check(shard, bookmark)?;
            bookmarks.insert(shard.to_owned(), bookmark.to_owned());
            if bookmarks.len() > 256 {
                return Err(Error::BookmarkInvalid("more than 256 shards".into()));
            }
        }
        Ok(Bookmarks(bookmarks))
    }

    fn check(shard: &str, bookmark: &str) -> Result<()> {
        let name_ok = !shard.is_empty()
            && shard.len() <= 64
            && shard
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(Error::BookmarkInvalid(format!(
                "`{}` is not a shard name",
                shown(shard)
            )));
        }
        let bookmark_ok = !bookmark.is_empty()
            && bookmark.len() <= MAX_BOOKMARK_BYTES
            && bookmark
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !bookmark_ok {
            return Err(Error::BookmarkInvalid(format!(
                "the bookmark of shard `{shard}` is malformed"
            )));
        }
        Ok(())
    }

    /// The bookmark of `shard`, if any.
    pub fn get(&self, shard: &str) -> Option<&str> {
        self.0.get(shard).map(String::as_str)
    }

    /// Records `shard`'s latest bookmark (replacing an older one).
    pub fn set(&mut self, shard: &str, bookmark: &str) -> Result<()> {
        Self::check(shard, bookmark)?;
        self.0.insert(shard.to_owned(), bookmark.to_owned());
        Ok(())
    }

    /// Whether no shard has a bookmark.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every `(shard, bookmark)`, by shard name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(s, b)| (s.as_str(), b.as_str()))
    }

    /// The header form ([`Bookmarks::parse`] reads it back).
    pub fn to_header(&self) -> String {
        self.iter()
            .map(|(shard, bookmark)| format!("{shard}={bookmark}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// At most 40 characters of client input, for an error message.
fn shown(input: &str) -> String {
    input
        .chars()
        .take(40)
        .flat_map(char::escape_default)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookmarks_round_trip_through_the_header() {
        let mut bookmarks = Bookmarks::new();
        bookmarks
            .set("DB_WEST", "00000009-00000002-00004f4d-aa")
            .unwrap();
        bookmarks.set("DB_EAST", "0000001b-00000004-1").unwrap();
        let header = bookmarks.to_header();
        assert_eq!(
            header,
            "DB_EAST=0000001b-00000004-1,DB_WEST=00000009-00000002-00004f4d-aa"
        );
        assert_eq!(Bookmarks::parse(&header).unwrap(), bookmarks);
        assert!(Bookmarks::parse("").unwrap().is_empty());
        assert_eq!(
            Bookmarks::parse(" DB_EU=1 , ").unwrap().get("DB_EU"),
            Some("1")
        );
    }

    #[test]
    fn hostile_headers_are_refused_with_a_typed_error() {
        let long = format!("DB=1{}", "0".repeat(MAX_BOOKMARK_BYTES));
        let many = (0..300)
            .map(|i| format!("s{i}=1"))
            .collect::<Vec<_>>()
            .join(",");
        for header in [
            "DB_EAST",
            "=123",
            "DB EAST=1",
            "DB_EAST=",
            "DB_EAST=1;drop",
            "DB_EAST=\u{0}",
            "../x=1",
            long.as_str(),
            many.as_str(),
        ] {
            let err = Bookmarks::parse(header).unwrap_err();
            assert_eq!(err.code(), "BOOKMARK_INVALID", "{header:?}");
            assert_eq!(err.http_status(), 400);
            assert!(err.to_string().len() < 300, "{err}");
        }
    }
}

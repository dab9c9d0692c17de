//! What a handle takes from the request it serves and gives back with the response: the region
//! the request arrived in (for `location` placement) and the D1 session bookmarks that let a
//! client read its own writes on its next request.

use worker::js_sys::Reflect;
use worker::wasm_bindgen::JsValue;
use worker::{Headers, Request};

use super::Cloudflare;
use crate::error::{Error, Result};
use crate::geo::RequestLocation;
use crate::router::CollegeDb;
use crate::session::Bookmarks;

/// Where `req` arrived, from `request.cf` (continent, country, latitude, longitude); empty when
/// the request has no `cf` object. Map it to a region with [`RequestLocation::region`] and build
/// the request's handle with [`CollegeDb::near`]:
///
/// ```ignore
/// let db = match request_location(&req).region() {
///     Some(region) => db.near(region),
///     None => db,
/// };
/// ```
///
/// Values that are missing or not of the documented type are left out, never a panic.
pub fn request_location(req: &Request) -> RequestLocation {
    let inner: &JsValue = req.inner().as_ref();
    let Some(cf) = Reflect::get(inner, &"cf".into())
        .ok()
        .filter(|cf| cf.is_object())
    else {
        return RequestLocation::default();
    };
    let text = |name: &str| {
        Reflect::get(&cf, &name.into())
            .ok()
            .and_then(|v| v.as_string())
    };
    // `cf.latitude` and `cf.longitude` are strings ("30.27130"); accept numbers too.
    let degrees = |name: &str| {
        let value = Reflect::get(&cf, &name.into()).ok()?;
        value
            .as_f64()
            .or_else(|| value.as_string()?.trim().parse().ok())
    };
    RequestLocation {
        continent: text("continent"),
        country: text("country"),
        coordinates: degrees("latitude").zip(degrees("longitude")),
    }
}

/// The bookmarks the client sent back in [`Bookmarks::HEADER`]; none if it sent no header.
/// A malformed header is [`Error::BookmarkInvalid`] (400).
pub fn request_bookmarks(req: &Request) -> Result<Bookmarks> {
    match req.headers().get(Bookmarks::HEADER) {
        Ok(Some(header)) => Bookmarks::parse(&header),
        Ok(None) => Ok(Bookmarks::new()),
        Err(e) => Err(Error::BookmarkInvalid(e.to_string())),
    }
}

/// The latest bookmark of every shard `db` holds a session on, merged over `carried` (the
/// bookmarks the request brought, so that a shard this request did not touch keeps the position
/// the client had seen). Shards the configuration does not have are dropped, and a bookmark D1
/// returns in an unexpected form is left out (and logged): never an error once the request's
/// writes are done.
pub fn bookmarks(db: &CollegeDb<Cloudflare>, carried: &Bookmarks) -> Result<Bookmarks> {
    let known = db.list_known_shards();
    let mut merged = Bookmarks::new();
    for (shard, bookmark) in carried.iter() {
        if known.contains(&shard) {
            merged.set(shard, bookmark)?;
        }
    }
    for shard in db.shards_as_opened() {
        match shard.bookmark() {
            Ok(Some(bookmark)) => {
                if merged.set(shard.name(), &bookmark).is_err() {
                    worker::console_warn!(
                        "collegedb: shard {} returned a bookmark of an unexpected form",
                        shard.name()
                    );
                }
            }
            Ok(None) => {}
            Err(error) => {
                worker::console_warn!("collegedb: no bookmark from {}: {error}", shard.name())
            }
        }
    }
    Ok(merged)
}

/// Sets [`Bookmarks::HEADER`] on a response's headers (nothing when there are no bookmarks).
pub fn set_bookmarks(headers: &mut Headers, bookmarks: &Bookmarks) -> Result<()> {
    if bookmarks.is_empty() {
        return Ok(());
    }
    headers
        .set(Bookmarks::HEADER, &bookmarks.to_header())
        .map_err(|e| Error::BookmarkInvalid(e.to_string()))
}

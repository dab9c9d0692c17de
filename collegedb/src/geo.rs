//! The region nearest a request, for `location` placement.
//!
//! Cloudflare tells a Worker where each request arrived (`request.cf`: continent, country,
//! coordinates of the client's location). [`RequestLocation::region`] maps that to one of the
//! eight [`Region`]s, so a handle built for the request ([`CollegeDb::near`]) places new keys on a
//! shard close to the user. On Workers, `collegedb::backend::cloudflare::request_location` reads
//! it from the request.
//!
//! The mapping, most precise first:
//!
//! 1. a country whose region differs from its continent's default: the Gulf and Levant, Egypt and
//!    Turkey go to `me`; the countries of eastern Europe (Poland to Russia) go to `eeur`;
//! 2. coordinates: the nearest region *of the continent's candidates* (North America: `wnam` or
//!    `enam`; Europe: `weur` or `eeur`; Asia: `apac` or `me`; Africa: `af` or `me`), so that a
//!    coordinate never lands on another continent's region because its anchor happens to be
//!    nearer (São Paulo is nearer Johannesburg than New York, but is served from North America);
//!    with no continent, the nearest of all eight;
//! 3. the continent's default: `NA` and `SA` → `enam`, `EU` → `weur`, `AS` → `apac`, `OC` and
//!    `AN` → `oc`, `AF` → `af`;
//! 4. nothing known (local development, a request without `cf`): `None`, and the handle keeps
//!    its configured target region.
//!
//! ```
//! use collegedb::geo::RequestLocation;
//! use collegedb::Region;
//!
//! let denver = RequestLocation {
//!     continent: Some("NA".into()),
//!     country: Some("US".into()),
//!     coordinates: Some((39.74, -104.99)),
//! };
//! assert_eq!(denver.region(), Some(Region::Wnam));
//! assert_eq!(RequestLocation::default().region(), None);
//! ```
//!
//! [`CollegeDb::near`]: crate::CollegeDb::near

use crate::config::Region;

/// Where a request arrived, as Cloudflare reports it in `request.cf`. Every part is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestLocation {
    /// Two-letter continent code (`"NA"`, `"SA"`, `"EU"`, `"AS"`, `"AF"`, `"OC"`, `"AN"`).
    pub continent: Option<String>,
    /// ISO 3166-1 alpha-2 country code (`"US"`, `"DE"`, ...).
    pub country: Option<String>,
    /// Latitude and longitude in degrees.
    pub coordinates: Option<(f64, f64)>,
}

/// Countries served from a region other than their continent's default.
const COUNTRY_REGIONS: &[(&str, Region)] = &[
    // The Middle East (Cloudflare files most of it under Asia, Egypt under Africa).
    ("AE", Region::Me),
    ("BH", Region::Me),
    ("EG", Region::Me),
    ("IL", Region::Me),
    ("IQ", Region::Me),
    ("IR", Region::Me),
    ("JO", Region::Me),
    ("KW", Region::Me),
    ("LB", Region::Me),
    ("OM", Region::Me),
    ("PS", Region::Me),
    ("QA", Region::Me),
    ("SA", Region::Me),
    ("SY", Region::Me),
    ("TR", Region::Me),
    ("YE", Region::Me),
    // Eastern Europe.
    ("BG", Region::Eeur),
    ("BY", Region::Eeur),
    ("CZ", Region::Eeur),
    ("EE", Region::Eeur),
    ("HU", Region::Eeur),
    ("LT", Region::Eeur),
    ("LV", Region::Eeur),
    ("MD", Region::Eeur),
    ("PL", Region::Eeur),
    ("RO", Region::Eeur),
    ("RU", Region::Eeur),
    ("SK", Region::Eeur),
    ("UA", Region::Eeur),
];

/// A continent's candidate regions, its default first.
fn continent_regions(code: &str) -> Option<&'static [Region]> {
    Some(match code {
        "NA" => &[Region::Enam, Region::Wnam],
        "SA" => &[Region::Enam],
        "EU" => &[Region::Weur, Region::Eeur],
        "AS" => &[Region::Apac, Region::Me],
        "AF" => &[Region::Af, Region::Me],
        "OC" | "AN" => &[Region::Oc],
        _ => return None,
    })
}

impl RequestLocation {
    /// The region to place this request's new keys in, or `None` when nothing usable is known.
    /// Codes are matched case-insensitively; coordinates outside the globe are ignored.
    pub fn region(&self) -> Option<Region> {
        let upper = |code: &Option<String>| code.as_deref().map(|c| c.trim().to_ascii_uppercase());
        if let Some(country) = upper(&self.country) {
            if let Some(&(_, region)) = COUNTRY_REGIONS.iter().find(|(c, _)| *c == country) {
                return Some(region);
            }
        }
        let candidates = upper(&self.continent).and_then(|c| continent_regions(&c));
        let point = self.coordinates.filter(|(lat, lon)| {
            lat.is_finite() && lon.is_finite() && lat.abs() <= 90.0 && lon.abs() <= 180.0
        });
        match (point, candidates) {
            (Some(point), candidates) => {
                let candidates = candidates.unwrap_or(&Region::ALL);
                candidates
                    .iter()
                    .copied()
                    .min_by(|a, b| a.distance_from(point).total_cmp(&b.distance_from(point)))
            }
            (None, Some(candidates)) => candidates.first().copied(),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(continent: &str, country: &str, coordinates: Option<(f64, f64)>) -> Option<Region> {
        RequestLocation {
            continent: Some(continent.into()),
            country: Some(country.into()),
            coordinates,
        }
        .region()
    }

    #[test]
    fn every_continent_maps_to_its_region() {
        // Continent alone (no coordinates, a country without an override).
        let defaults = [
            ("NA", "US", Region::Enam),
            ("SA", "BR", Region::Enam),
            ("EU", "DE", Region::Weur),
            ("AS", "JP", Region::Apac),
            ("AF", "NG", Region::Af),
            ("OC", "AU", Region::Oc),
            ("AN", "AQ", Region::Oc),
        ];
        for (continent, country, region) in defaults {
            assert_eq!(at(continent, country, None), Some(region), "{continent}");
        }
        // With coordinates, the nearest of the continent's candidates.
        let cities = [
            ("NA", "US", (37.77, -122.42), Region::Wnam), // San Francisco
            ("NA", "US", (39.74, -104.99), Region::Wnam), // Denver
            ("NA", "US", (41.88, -87.63), Region::Enam),  // Chicago
            ("NA", "CA", (43.65, -79.38), Region::Enam),  // Toronto
            ("SA", "BR", (-23.55, -46.63), Region::Enam), // São Paulo, not Johannesburg
            ("EU", "FR", (48.86, 2.35), Region::Weur),    // Paris
            ("EU", "FI", (60.17, 24.94), Region::Eeur),   // Helsinki
            ("AS", "JP", (35.68, 139.69), Region::Apac),  // Tokyo
            ("AS", "IN", (19.08, 72.88), Region::Me),     // Mumbai: nearer Dubai than Singapore
            ("AF", "KE", (-1.29, 36.82), Region::Af),     // Nairobi
            ("AF", "ZA", (-33.92, 18.42), Region::Af),    // Cape Town
            ("OC", "NZ", (-36.85, 174.76), Region::Oc),   // Auckland
            ("AN", "AQ", (-77.85, 166.67), Region::Oc),   // McMurdo
        ];
        for (continent, country, point, region) in cities {
            assert_eq!(
                at(continent, country, Some(point)),
                Some(region),
                "{point:?}"
            );
        }
    }

    #[test]
    fn countries_override_their_continent() {
        assert_eq!(at("AS", "AE", Some((25.2, 55.3))), Some(Region::Me));
        assert_eq!(at("AF", "EG", None), Some(Region::Me));
        assert_eq!(at("EU", "PL", Some((52.23, 21.01))), Some(Region::Eeur));
        assert_eq!(at("eu", "ru", None), Some(Region::Eeur));
    }

    #[test]
    fn missing_or_unusable_cf_leaves_the_target_region_alone() {
        assert_eq!(RequestLocation::default().region(), None);
        let unknown = RequestLocation {
            continent: Some("XX".into()),
            country: Some("ZZ".into()),
            coordinates: Some((f64::NAN, 400.0)),
        };
        assert_eq!(unknown.region(), None);
        // Coordinates alone: the nearest of all eight.
        let sydney = RequestLocation {
            coordinates: Some((-33.87, 151.21)),
            ..Default::default()
        };
        assert_eq!(sydney.region(), Some(Region::Oc));
        let lagos_country_only = RequestLocation {
            country: Some("NG".into()),
            ..Default::default()
        };
        assert_eq!(lagos_country_only.region(), None);
    }
}

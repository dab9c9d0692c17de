//! The admin routes of health, metrics and the dashboard (see the table in the crate docs).
//!
//! Metrics are per isolate: every request an isolate serves shares one set of counters (see
//! `collegedb::metrics`), and another isolate of the same deployment has its own. The page says
//! so. Rows, sizes, health, moves and migrations are read from the shards, the directory and the
//! coordinator on every request, so they are the deployment's.

use collegedb::dashboard;
use worker::Response;

use crate::Db;

/// Whose calls the metrics count.
const SCOPE: &str = "this Worker isolate";

/// The page's title.
const TITLE: &str = "collegedb Worker example";

/// `GET /admin/health`: every component's probe; 503 when one fails.
pub async fn health(db: &Db) -> collegedb::Result<Response> {
    let health = db.health().await;
    let status = if health.ok { 200 } else { 503 };
    Ok(Response::from_json(&health)
        .expect("JSON of health")
        .with_status(status))
}

/// `GET /admin/metrics`: this isolate's routed calls per shard.
pub fn metrics(db: &Db) -> collegedb::Result<Response> {
    Ok(Response::from_json(&db.metrics()).expect("JSON of metrics"))
}

/// `GET /admin/dashboard`: the HTML page, which polls `/admin/dashboard.json`.
pub async fn page(db: &Db) -> collegedb::Result<Response> {
    let data = dashboard::collect(db, TITLE, SCOPE).await;
    let html = dashboard::render_page(&data, "/admin/dashboard.json");
    let mut response = Response::from_html(html).expect("an HTML response");
    let _ = response.headers_mut().set("cache-control", "no-store");
    Ok(response)
}

/// `GET /admin/dashboard.json`: what the page shows.
pub async fn data(db: &Db) -> collegedb::Result<Response> {
    let data = dashboard::collect(db, TITLE, SCOPE).await;
    let mut response = Response::from_json(&data).expect("JSON of the dashboard");
    let _ = response.headers_mut().set("cache-control", "no-store");
    Ok(response)
}

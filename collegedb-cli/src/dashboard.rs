//! `collegedb health <folder>` and `collegedb dashboard <folder>`: the library's health probes as
//! a text report, and its dashboard page served on 127.0.0.1.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use collegedb::{dashboard, EmbeddedDb, Result};

use crate::deployment::Deployment;

/// Prints every component's probe; whether all are healthy.
pub fn health(folder: &Path, timeout: Duration) -> Result<bool> {
    let db = Deployment::find(folder)?.open_map()?;
    let health = pollster::block_on(db.health_within(timeout));
    println!("{health}");
    Ok(health.ok)
}

/// The deployment's handle, opened again when its stored shard map changes (a shard added or
/// drained by another process), so the page always shows the shards that serve rows.
struct Current {
    folder: std::path::PathBuf,
    version: u64,
    db: EmbeddedDb,
}

impl Current {
    fn open(folder: &Path) -> Result<Self> {
        let deployment = Deployment::find(folder)?;
        Ok(Current {
            version: deployment.map.version(),
            db: deployment.open_map()?,
            folder: folder.to_owned(),
        })
    }

    fn db(&mut self) -> Result<&EmbeddedDb> {
        let now = Deployment::find(&self.folder)?.map.version();
        if now != self.version {
            *self = Current::open(&self.folder)?;
        }
        Ok(&self.db)
    }
}

/// Serves the dashboard on `127.0.0.1:port` (0: any free port) until the process is stopped.
/// Every request reads the shards anew; nothing is written.
pub fn serve(folder: &Path, port: u16) -> Result<bool> {
    let mut current = Current::open(folder)?;
    let server = tiny_http::Server::http(("127.0.0.1", port))
        .map_err(|e| collegedb::Error::Io(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
    let address = server
        .server_addr()
        .to_ip()
        .map_or_else(|| format!("127.0.0.1:{port}"), |a| a.to_string());
    let title = folder
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| folder.display().to_string());
    // Not println!: a closed standard output must not stop the server.
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "dashboard of {} at http://{address}/\nJSON: /dashboard.json, /health.json, /metrics.json; stop with Ctrl-C",
        folder.display()
    );
    let _ = out.flush();
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("/").to_owned();
        let answer = match current.db() {
            Err(error) => json_reply(
                503,
                &serde_json::json!({ "error": error.to_string(), "code": error.code() }),
            ),
            Ok(db) => route(db, &path, &title),
        };
        let _ = request.respond(answer);
    }
    Ok(true)
}

type Reply = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn route(db: &EmbeddedDb, path: &str, title: &str) -> Reply {
    const SCOPE: &str = "this collegedb dashboard process";
    match path {
        "/" | "/index.html" => {
            let data = pollster::block_on(dashboard::collect(db, title, SCOPE));
            reply(
                200,
                "text/html; charset=utf-8",
                dashboard::render_page(&data, "dashboard.json"),
            )
        }
        "/dashboard.json" => json_reply(
            200,
            &pollster::block_on(dashboard::collect(db, title, SCOPE)),
        ),
        "/health.json" => {
            let health = pollster::block_on(db.health());
            json_reply(if health.ok { 200 } else { 503 }, &health)
        }
        "/metrics.json" => json_reply(200, &db.metrics()),
        _ => reply(404, "text/plain; charset=utf-8", "no such page".to_owned()),
    }
}

fn json_reply<T: serde::Serialize>(status: u16, value: &T) -> Reply {
    let body = serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    reply(status, "application/json", body)
}

fn reply(status: u16, content_type: &str, body: String) -> Reply {
    let header =
        tiny_http::Header::from_bytes("Content-Type", content_type).expect("a valid header");
    let no_store =
        tiny_http::Header::from_bytes("Cache-Control", "no-store").expect("a valid header");
    tiny_http::Response::from_data(body.into_bytes())
        .with_status_code(status)
        .with_header(header)
        .with_header(no_store)
}

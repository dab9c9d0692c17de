//! Headless Chromium driving the dashboard: runs `tests/browser/dashboard.mjs` (puppeteer-core,
//! pinned in the root `package.json`, against Debian's `chromium`; both installed by
//! `scripts/install-browser.sh`) and talks to it over its standard input and output.
//!
//! The script loads the page and reports the rows it shows per shard ([`Browser::ready`]); the
//! test writes rows, then tells it the counts to wait for ([`Browser::expect`]), and the script
//! checks that the page shows them by itself (it polls its JSON endpoint), takes a screenshot
//! and passes ([`Browser::finish`]). Every wait is bounded; the browser process is killed when
//! the value is dropped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

/// The script, running.
pub struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    transcript: Vec<String>,
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// The Node.js the project installs (`COLLEGEDB_TOOLS_DIR`, default `.tools/`), else `node`.
fn node() -> PathBuf {
    let root = repository_root();
    let tools = std::env::var("COLLEGEDB_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or(root.join(".tools"));
    let installed = tools.join("bin/node");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("node")
    }
}

impl Browser {
    /// Opens `url` in headless Chromium; `shards` are the shards the page must list, and the
    /// screenshot goes to `screenshot`.
    pub fn open(url: &str, shards: &[&str], screenshot: &Path) -> Browser {
        let root = repository_root();
        assert!(
            root.join("node_modules/puppeteer-core").exists(),
            "puppeteer-core is not installed: run scripts/install-browser.sh"
        );
        if let Some(dir) = screenshot.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot's folder");
        }
        let mut child = Command::new(node())
            .process_group(0)
            .arg(root.join("tests/browser/dashboard.mjs"))
            .arg(url)
            .arg(shards.join(","))
            .arg(screenshot)
            .current_dir(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node with the browser script");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Browser {
            stdin: child.stdin.take(),
            child,
            lines,
            transcript: Vec::new(),
        }
    }

    /// The next line that starts with one of `prefixes`, within `limit`; panics with what the
    /// script said otherwise.
    fn line(&mut self, prefixes: &[&str], limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.transcript.push(line.clone());
                    if line.starts_with("FAIL") {
                        panic!("browser: {line}\n{}", self.transcript.join("\n"));
                    }
                    if prefixes.iter().any(|p| line.starts_with(p)) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "browser: no {prefixes:?} line within {limit:?}; it said:\n{}",
                    self.transcript.join("\n")
                ),
            }
        }
    }

    /// Waits until the page has loaded and lists every shard; returns its rows per shard.
    pub fn ready(&mut self) -> BTreeMap<String, u64> {
        let line = self.line(&["READY "], Duration::from_secs(60));
        let json = line["READY ".len()..]
            .split(" health=")
            .next()
            .unwrap()
            .to_owned();
        serde_json::from_str(&json).expect("rows per shard")
    }

    /// Tells the script the rows per shard the page must come to show.
    pub fn expect(&mut self, rows: &BTreeMap<String, u64>) {
        let stdin = self.stdin.as_mut().expect("the script's input");
        writeln!(stdin, "EXPECT {}", serde_json::to_string(rows).unwrap()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the script to pass, and for it to exit.
    pub fn finish(mut self) -> String {
        let line = self.line(&["PASS"], Duration::from_secs(60));
        self.stdin.take();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match self.child.try_wait().unwrap() {
                Some(status) => {
                    assert!(status.success(), "the browser script exited with {status}");
                    return line;
                }
                None if std::time::Instant::now() > deadline => {
                    panic!("the browser script did not exit after passing")
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Node stops the Chromium it started on SIGTERM (puppeteer's handler); SIGKILL after.
        if let Ok(None) = self.child.try_wait() {
            let group = format!("-{}", self.child.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = self.child.wait();
        }
    }
}

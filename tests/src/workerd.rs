//! A local workerd (`wrangler dev --local`) running the Worker example (or the raw D1 Worker of
//! `tests/workerd-raw`, the load benchmark's baseline), for end-to-end tests and the load
//! benchmark. Every address is on 127.0.0.1; the server runs in its own process group and is
//! stopped, group and all, when the [`Workerd`] value is dropped, whatever the outcome. Crash
//! tests kill the group with SIGKILL ([`Workerd::kill`]) and start it again on the same port and
//! persisted state ([`Workerd::restart`]).

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running local workerd with the Worker example.
pub struct Workerd {
    child: Child,
    base: String,
    agent: ureq::Agent,
    persist: tempfile::TempDir,
    log: PathBuf,
    port: u16,
    config: Option<PathBuf>,
    vars: Vec<(String, String)>,
    probe: String,
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body, parsed as JSON (`Null` when it is not JSON).
    pub json: serde_json::Value,
    /// The raw body.
    pub text: String,
    /// `(reads, writes)` from `x-collegedb-directory-ops`.
    pub directory_ops: (u64, u64),
    /// The D1 session bookmarks the response carried (`x-collegedb-bookmarks`).
    pub bookmarks: Option<String>,
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// The clock ticks per second of `/proc/<pid>/stat` times.
fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// `(parent pid, command name, utime + stime in ticks)` from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(u32, String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last `)`.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, name, utime + stime))
}

/// Starts `wrangler dev --local` in its own process group, persisting under `persist/state`,
/// appending its output to `log`.
fn spawn(
    config: Option<&Path>,
    vars: &[(String, String)],
    persist: &Path,
    port: u16,
    log: &Path,
) -> Child {
    let root = repository_root();
    let wrangler = root.join("node_modules/.bin/wrangler");
    assert!(
        wrangler.exists(),
        "wrangler is not installed: run scripts/install-wasm-toolchain.sh"
    );
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let tools = std::env::var("COLLEGEDB_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or(root.join(".tools"));
    let path = format!(
        "{}:{}",
        tools.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(&wrangler)
        .args([
            "dev",
            "--local",
            "--ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(config.map(|c| format!("--config={}", c.display())))
        .args(
            vars.iter()
                .flat_map(|(name, value)| ["--var".to_owned(), format!("{name}:{value}")]),
        )
        .arg("--persist-to")
        .arg(persist.join("state"))
        .args([
            "--show-interactive-dev-session=false",
            "--log-level",
            "warn",
        ])
        .current_dir(&root)
        .env("PATH", path)
        .env("WRANGLER_SEND_METRICS", "false")
        .env("WRANGLER_SEND_ERROR_REPORTS", "false")
        .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
        .env("XDG_CONFIG_HOME", persist.join("xdg-config"))
        .env("XDG_CACHE_HOME", persist.join("xdg-cache"))
        .env("WRANGLER_LOG_PATH", persist.join("wrangler-logs"))
        .env_remove("CLOUDFLARE_API_TOKEN")
        .env_remove("CLOUDFLARE_ACCOUNT_ID")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .expect("start wrangler dev")
}

/// Whether `pid` is a workerd process that has not exited (a zombie waiting to be reaped has).
fn running_workerd(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let state = stat[close + 1..].split_whitespace().next().unwrap_or("X");
    &stat[open + 1..close] == "workerd" && state != "Z" && state != "X"
}

impl Workerd {
    /// Starts the Worker example (the repository's `wrangler.toml`) with `wrangler dev --local`
    /// on a free port with persistence in a fresh temporary folder, and waits (at most 90 s)
    /// until it answers.
    pub fn start() -> Workerd {
        let root = repository_root();
        let shim = root.join("examples/worker/build/worker/shim.mjs");
        assert!(
            shim.exists(),
            "the Worker example is not built: run scripts/build-worker.sh (after scripts/install-wasm-toolchain.sh)"
        );
        Self::start_with(None, &[], "/coordinator/health")
    }

    /// Like [`Workerd::start`], with vars that replace those of `wrangler.toml` (`--var`), for
    /// example another `COLLEGEDB_CONFIG`.
    pub fn start_with_vars(vars: &[(&str, &str)]) -> Workerd {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        Self::start_with(None, &vars, "/coordinator/health")
    }

    /// Starts the raw D1 Worker of `tests/workerd-raw` (plain JavaScript, one D1 database), the
    /// load benchmark's baseline, like [`Workerd::start`].
    pub fn start_raw() -> Workerd {
        let config = repository_root().join("tests/workerd-raw/wrangler.toml");
        Self::start_with(Some(&config), &[], "/health")
    }

    /// Starts `wrangler dev --local` with `config` (default: the repository's `wrangler.toml`)
    /// and waits until `GET probe` answers 200.
    fn start_with(config: Option<&Path>, vars: &[(String, String)], probe: &str) -> Workerd {
        // One start at a time in this process: wrangler instances starting together can race for
        // the ports they pick for themselves. A start that fails that way is tried again on a
        // new port.
        static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        let mut failures = Vec::new();
        for _ in 0..3 {
            let persist = tempfile::tempdir().expect("temporary folder");
            let port = free_port();
            let log = persist.path().join("wrangler.log");
            let child = spawn(config, vars, persist.path(), port, &log);
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into();
            let mut server = Workerd {
                child,
                base: format!("http://127.0.0.1:{port}"),
                agent,
                persist,
                log,
                port,
                config: config.map(Path::to_owned),
                vars: vars.to_vec(),
                probe: probe.to_owned(),
            };
            match server.wait_until_ready() {
                Ok(()) => return server,
                Err(failure) if failure.contains("already in use") => failures.push(failure),
                Err(failure) => panic!("{failure}"),
            }
        }
        panic!(
            "wrangler dev did not start in 3 tries:\n{}",
            failures.join("\n---\n")
        );
    }

    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(reply) = self.try_request("GET", &self.probe.clone(), None, &[]) {
                if reply.status == 200 {
                    return Ok(());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "wrangler dev exited with {status}:\n{}",
                    self.log_tail()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "wrangler dev did not answer within 90 s:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Kills wrangler and workerd at once with SIGKILL (the whole process group: no shutdown
    /// of any kind), and waits until every process of the group is gone and the port is free.
    pub fn kill(&mut self) {
        let workerd = self.workerd_pids();
        let group = format!("-{}", self.child.id());
        let status = Command::new("kill")
            .args(["-KILL", "--", &group])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL {group} failed");
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let alive = workerd.iter().any(|pid| running_workerd(*pid));
            let port_free = TcpListener::bind(("127.0.0.1", self.port)).is_ok();
            if !alive && port_free {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the killed server did not go away (workerd alive: {alive}, port free: {port_free})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the server again, after [`Workerd::kill`], on the same port with the same
    /// persisted state (D1, KV, Durable Objects and their alarms), and waits until it answers.
    pub fn restart(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
        self.child = spawn(
            self.config.as_deref(),
            &self.vars,
            self.persist.path(),
            self.port,
            &self.log,
        );
        if let Err(failure) = self.wait_until_ready() {
            panic!("{failure}");
        }
    }

    /// The last lines of wrangler's output, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The workerd processes serving this server (wrangler's descendants named `workerd`).
    pub fn workerd_pids(&self) -> Vec<u32> {
        let mut parents: HashMap<u32, Vec<(u32, String)>> = HashMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some((ppid, name, _)) = proc_stat(pid) {
                parents.entry(ppid).or_default().push((pid, name));
            }
        }
        let mut found = Vec::new();
        let mut queue = vec![self.child.id()];
        while let Some(pid) = queue.pop() {
            for (child, name) in parents.get(&pid).into_iter().flatten() {
                if name == "workerd" {
                    found.push(*child);
                }
                queue.push(*child);
            }
        }
        found.sort_unstable();
        found
    }

    /// CPU time (user + system) the workerd processes of this server have used so far. Workers,
    /// Durable Objects and the local D1 and KV simulators all run inside workerd.
    pub fn workerd_cpu(&self) -> Duration {
        let pids = self.workerd_pids();
        assert!(
            !pids.is_empty(),
            "no workerd process under wrangler {}",
            self.child.id()
        );
        let ticks: u64 = pids
            .iter()
            .filter_map(|pid| proc_stat(*pid))
            .map(|(_, _, t)| t)
            .sum();
        Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64)
    }

    /// The base URL, `http://127.0.0.1:<port>`.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, ureq::Error> {
        let url = format!("{}{path}", self.base);
        fn with<B>(
            mut request: ureq::RequestBuilder<B>,
            headers: &[(&str, &str)],
        ) -> ureq::RequestBuilder<B> {
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request
        }
        let mut response = match (method, body) {
            ("GET", _) => with(self.agent.get(&url), headers).call()?,
            ("DELETE", None) => with(self.agent.delete(&url), headers).call()?,
            ("DELETE", Some(body)) => with(self.agent.delete(&url), headers)
                .force_send_body()
                .send(body)?,
            ("POST", body) => with(self.agent.post(&url), headers)
                .header("content-type", "application/json")
                .send(body.unwrap_or(""))?,
            ("PUT", body) => with(self.agent.put(&url), headers)
                .header("content-type", "application/json")
                .send(body.unwrap_or(""))?,
            _ => panic!("unsupported method {method}"),
        };
        let bookmarks = response
            .headers()
            .get("x-collegedb-bookmarks")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = response.status().as_u16();
        let directory_ops = response
            .headers()
            .get("x-collegedb-directory-ops")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(','))
            .map(|(r, w)| (r.parse().unwrap_or(u64::MAX), w.parse().unwrap_or(u64::MAX)))
            .unwrap_or((u64::MAX, u64::MAX));
        let mut text = String::new();
        response
            .body_mut()
            .as_reader()
            .read_to_string(&mut text)
            .map_err(ureq::Error::from)?;
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Ok(Reply {
            status,
            json,
            text,
            directory_ops,
            bookmarks,
        })
    }

    /// Sends a request; panics (with wrangler's log) if it cannot be sent.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.request_with(method, path, body, &[])
    }

    /// Sends a request with extra headers; panics (with wrangler's log) if it cannot be sent.
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.try_request(method, path, body, headers)
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e}\n{}", self.log_tail()))
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Reply {
        self.request("POST", path, Some(&body.to_string()))
    }
}

impl Drop for Workerd {
    fn drop(&mut self) {
        // wrangler starts workerd as a child: stop the whole process group.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

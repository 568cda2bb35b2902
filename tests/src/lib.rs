//! Helpers for the end-to-end tests: build the plugin crates once, lay out
//! plugin directories (copies, so every test loads fresh instances), and
//! write probe plans.

pub mod redis;
pub mod served;

use mq_host::{Direction, Event, EventResult, Host, HostBuilder};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The packages whose `.so` files the tests load.
const PLUGIN_PACKAGES: &[&str] = &[
    "mq-test-probe",
    "mq-test-async-probe",
    "mq-test-c-probe",
    "mq-test-hostile",
    "mq-test-c-hostile",
    "mq-test-c-misuse",
    "mq-test-c-out-socket",
    "mq-test-c-fastjson",
    "mq-test-json-props",
    "mq-example-stamp",
    "mq-example-allowlist",
    "mq-example-c-allowlist",
    "mq-example-tarpit",
    "mq-example-body-hash",
    "mq-example-redis-allowlist",
    "mq-example-out-trace",
    "mq-example-dkim-sign",
    "mq-example-greylist",
    "mq-example-rate-limit",
    "mq-example-http-check",
    "mq-test-abi-mismatch",
    "mq-host",
];

/// The cargo profile directory the tests run from (`target/debug`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_owned()
}

/// Builds the plugin packages (once per process; cargo makes concurrent
/// processes wait for each other) and returns the profile directory.
pub fn built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = profile_dir();
        let target = profile.parent().expect("target dir").to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.arg("build")
            .arg("--quiet")
            .arg("--target-dir")
            .arg(&target);
        if profile.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        for p in PLUGIN_PACKAGES {
            cmd.arg("-p").arg(p);
        }
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
        let status = cmd
            .status()
            .expect("run cargo build for the plugin fixtures");
        assert!(
            status.success(),
            "building the plugin fixtures failed: {status}"
        );
        profile
    })
}

/// The `.so` built from package `package` (e.g. `mq-test-probe`).
pub fn plugin_so(package: &str) -> PathBuf {
    let path = built().join(format!("lib{}.so", package.replace('-', "_")));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// The Rust probe.
pub fn rust_probe() -> PathBuf {
    plugin_so("mq-test-probe")
}

/// The C probe.
pub fn c_probe() -> PathBuf {
    plugin_so("mq-test-c-probe")
}

/// Waits for `child` to exit, 60 s at most: a child that outlives that is
/// killed and the test fails, naming `what`, instead of hanging the suite.
pub fn wait_bounded(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after 60 s, killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs a Python script (a real smtplib client) with the SMTP port as its
/// argument; its stdout, after checking that it succeeded.
pub fn python_client(script: &str, port: u16) -> String {
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `mq-host` binary.
pub fn host_binary() -> PathBuf {
    let path = built().join("mq-host");
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// A temporary plugin directory, removed on drop.
pub struct PluginDir {
    path: PathBuf,
}

impl PluginDir {
    /// A new empty directory.
    pub fn new(test: &str) -> PluginDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("mq-e2e-{test}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create plugin dir");
        PluginDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies `so` in as `name` (a copy is a new file, so the dynamic loader
    /// loads a fresh instance with its own statics), with an optional plan.
    pub fn add(&self, name: &str, so: &Path, plan: &str) -> PathBuf {
        let dest = self.path.join(name);
        std::fs::copy(so, &dest)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", so.display(), dest.display()));
        if !plan.is_empty() {
            std::fs::write(self.path.join(format!("{name}.plan")), plan).expect("write plan");
        }
        dest
    }

    /// A host on this directory with test-friendly limits.
    pub fn builder(&self) -> HostBuilder {
        Host::builder().plugin_dir(&self.path).workers(1)
    }

    /// Starts a host on this directory.
    pub fn start(&self) -> Host {
        self.builder()
            .start()
            .unwrap_or_else(|e| panic!("host start: {e}"))
    }
}

impl Drop for PluginDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A plain test message.
pub fn message() -> serde_json::Value {
    serde_json::json!({
        "envelope": "sender@example.com",
        "recipient": "rcpt@example.org",
        "mime": "From: sender@example.com\r\nSubject: test\r\n\r\nbody\r\n",
        "custom": {"kept": true}
    })
}

/// Runs `smtp_in_message` for [`message`].
pub fn run_message(host: &Host) -> EventResult {
    host.run_event(Direction::Incoming, Event::Message(message()))
        .expect("run smtp_in_message")
}

/// The names of the plugins called, in order.
pub fn called(result: &EventResult) -> Vec<String> {
    result.calls.iter().map(|c| c.plugin.clone()).collect()
}

/// Lines `probe <name> ...` of a result's log, without the prefix `probe `.
pub fn probe_lines(result: &EventResult) -> Vec<String> {
    result
        .plugin_log()
        .into_iter()
        .filter_map(|l| l.strip_prefix("probe ").map(str::to_owned))
        .collect()
}

/// Asserts no probe reported a failed check.
pub fn assert_no_failures(lines: &[String]) {
    let failures: Vec<&String> = lines.iter().filter(|l| l.contains(" fail ")).collect();
    assert!(
        failures.is_empty(),
        "probe checks failed: {failures:#?}\nall lines: {lines:#?}"
    );
}

/// A Python interpreter that has aiosmtpd (`python3`, else the system's).
pub fn python_with_aiosmtpd() -> &'static str {
    static FOUND: OnceLock<&'static str> = OnceLock::new();
    FOUND.get_or_init(|| {
        ["python3", "/usr/bin/python3"]
            .into_iter()
            .find(|python| {
                Command::new(python)
                    .args(["-c", "import aiosmtpd"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("the delivery tests need aiosmtpd: apt-get install python3-aiosmtpd")
    })
}

/// A real SMTP server to deliver to: `tests/support/sink.py` (aiosmtpd),
/// storing what it receives; killed on drop.
pub struct Sink {
    child: std::process::Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
}

/// One message a [`Sink`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// `MAIL FROM`.
    pub mail_from: String,
    /// `RCPT TO`s.
    pub rcpt_tos: Vec<String>,
    /// The DATA content, exactly as received (after dot-unstuffing).
    pub data: Vec<u8>,
}

impl Sink {
    /// Starts a sink storing into `dir`, with `args` (`--fail-first N`,
    /// `--reject DOMAIN`, `--delay SECS`).
    pub fn start(dir: &Path, args: &[&str]) -> Sink {
        use std::io::BufRead;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/sink.py");
        let mut child = Command::new(python_with_aiosmtpd())
            .arg(script)
            .arg(dir)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the SMTP sink");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("sink stdout"))
            .read_line(&mut line)
            .expect("the sink prints its port");
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the sink did not start: {line:?}")
        });
        Sink {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn relay(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every message received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        let mut names: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        names.retain(|p: &PathBuf| p.extension().is_some_and(|e| e == "eml"));
        names.sort();
        names
            .iter()
            .map(|eml| {
                let meta: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(eml.with_extension("json")).unwrap())
                        .unwrap();
                Received {
                    mail_from: meta["mail_from"].as_str().unwrap_or("").to_owned(),
                    rcpt_tos: meta["rcpt_tos"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r.as_str().unwrap().to_owned())
                        .collect(),
                    data: std::fs::read(eml).unwrap(),
                }
            })
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON files in `dir` (sorted by name); none if it does not exist.
pub fn json_files(dir: &Path) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
        .collect()
}

/// Starts the `mq-host serve` binary on a free port; returns the child, its
/// stderr (past the "serving" line) and the address.
pub fn spawn_serve(
    args: &[&std::ffi::OsStr],
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStderr>,
    std::net::SocketAddr,
) {
    let mut child = std::process::Command::new(host_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--grace", "1"])
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    use std::io::BufRead;
    let addr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve exited early"
        );
        if let Some(rest) = line.strip_prefix("mq-host: serving SMTP on ") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    (child, stderr, addr)
}

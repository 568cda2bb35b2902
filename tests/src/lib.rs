//! Helpers for the end-to-end tests: build the plugin crates once, lay out
//! plugin directories (copies, so every test loads fresh instances), and
//! write probe plans.

use mq_host::{Direction, Event, EventResult, Host, HostBuilder};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The packages whose `.so` files the tests load.
const PLUGIN_PACKAGES: &[&str] = &[
    "mq-test-probe",
    "mq-test-async-probe",
    "mq-test-c-probe",
    "mq-example-stamp",
    "mq-example-allowlist",
    "mq-example-c-allowlist",
    "mq-example-tarpit",
    "mq-example-body-hash",
    "mq-example-redis-allowlist",
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

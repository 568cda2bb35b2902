//! The workloads of the hook-cost bench (`benches/hook_cost.rs`): a host
//! with one bench plugin (C, Rust, or none for the baseline), a set of
//! open connections on one worker, and batches of chain runs on them.
//!
//! The two bench plugins, `bench/plugins/c-hooks` (C) and
//! `bench/plugins/rust-hooks` (Rust), implement the same hooks doing the
//! same work; [`Case`] names which hook a run drives.

pub mod callgrind;

use mq_host::{Direction, Event, Host, PendingEvent};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One measured case: a hook and the work both plugins do in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// Sync `smtp_in_rcptto`: allow-list by domain (email, suffix check, go on).
    AllowList,
    /// `smtp_in_mailfrom` with nothing to do (C: returns false; Rust: an
    /// `async fn` that finishes at once).
    Nothing,
    /// `smtp_in_data`: take control, go on from a zero timer.
    ZeroTimer,
    /// `smtp_in_connect`: take control, go on from a 1 ms timer.
    Timer,
    /// `smtp_in_secure`: take control, go on when an fd is readable.
    FdReady,
}

impl Case {
    /// Every case, in table order.
    pub const ALL: [Case; 5] = [
        Case::AllowList,
        Case::Nothing,
        Case::ZeroTimer,
        Case::Timer,
        Case::FdReady,
    ];

    /// The name used on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Case::AllowList => "allowlist",
            Case::Nothing => "nothing",
            Case::ZeroTimer => "zero-timer",
            Case::Timer => "timer-1ms",
            Case::FdReady => "fd-ready",
        }
    }

    /// What the table calls it.
    pub fn title(self) -> &'static str {
        match self {
            Case::AllowList => "sync rcptto allow-list (email, suffix, go on)",
            Case::Nothing => "nothing to do (C sync false; Rust async fn)",
            Case::ZeroTimer => "take control, go on from a zero timer",
            Case::Timer => "take control, go on from a 1 ms timer",
            Case::FdReady => "take control, go on when an fd is readable",
        }
    }

    /// The case called `name`.
    pub fn from_name(name: &str) -> Option<Case> {
        Case::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The event whose chain this case runs.
    pub fn event(self) -> Event {
        match self {
            Case::AllowList => Event::RcptTo("alice@example.org".into()),
            Case::Nothing => Event::MailFrom("shop@example.com".into()),
            Case::ZeroTimer => Event::Data(b"Subject: hi\r\n\r\nhello\r\n".to_vec()),
            Case::Timer => Event::Connect,
            Case::FdReady => Event::Secure,
        }
    }
}

/// Which plugin the host loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// No plugin: the chain is empty. What the host costs by itself; the
    /// bench subtracts it from the other two.
    Baseline,
    /// `bench/plugins/c-hooks`.
    C,
    /// `bench/plugins/rust-hooks`.
    Rust,
}

impl Lang {
    /// The name used on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Baseline => "baseline",
            Lang::C => "c",
            Lang::Rust => "rust",
        }
    }

    /// The language called `name`.
    pub fn from_name(name: &str) -> Option<Lang> {
        [Lang::Baseline, Lang::C, Lang::Rust]
            .into_iter()
            .find(|l| l.name() == name)
    }

    fn package(self) -> Option<&'static str> {
        match self {
            Lang::Baseline => None,
            Lang::C => Some("mq-bench-c-hooks"),
            Lang::Rust => Some("mq-bench-rust-hooks"),
        }
    }
}

/// The cargo profile directory this binary runs from (`target/release`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable path");
    // target/<profile>/deps/<bench-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_owned()
}

/// Builds the two bench plugins with the profile this binary was built
/// with; panics, showing cargo's status, when that fails.
pub fn build_plugins() {
    let profile = profile_dir();
    let target = profile.parent().expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--target-dir"]).arg(target);
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    cmd.args(["-p", "mq-bench-c-hooks", "-p", "mq-bench-rust-hooks"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let status = cmd.status().expect("run cargo build for the bench plugins");
    assert!(
        status.success(),
        "building the bench plugins failed: {status}"
    );
}

/// A plugin directory holding `lang`'s plugin (empty for the baseline),
/// removed on drop.
pub struct PluginDir {
    path: PathBuf,
}

impl PluginDir {
    /// A fresh directory for `lang` (the plugins must have been built).
    pub fn new(lang: Lang) -> PluginDir {
        // A new path each time: the dynamic loader loads a fresh instance.
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "mq-bench-{}-{}-{n}",
            lang.name(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the plugin dir");
        if let Some(package) = lang.package() {
            let so = profile_dir().join(format!("lib{}.so", package.replace('-', "_")));
            std::fs::copy(&so, path.join("10-bench.so"))
                .unwrap_or_else(|e| panic!("copy {}: {e} (was it built?)", so.display()));
        }
        PluginDir { path }
    }

    /// A host with one worker on this directory; no watchdog, no hold
    /// reports, so that only the chains run.
    pub fn start(&self) -> Host {
        Host::builder()
            .plugin_dir(&self.path)
            .workers(1)
            .stall_report(None)
            .hold_report(None)
            .start()
            .unwrap_or_else(|e| panic!("host start: {e}"))
    }
}

impl Drop for PluginDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Submits `event` on every session at once, then waits for every chain:
/// one batch. Panics if a chain fails or is refused.
pub fn run_batch(sessions: &[mq_host::Session<'_>], event: &Event) {
    let pending: Vec<PendingEvent> = sessions
        .iter()
        .map(|s| s.submit(event.clone()).expect("submit"))
        .collect();
    for p in pending {
        let result = p.wait().expect("chain run");
        assert!(!result.refused(), "the bench chain was refused: {result:?}");
    }
}

/// The heap in use (all malloc arenas) and the resident set, in bytes.
pub fn memory_in_use() -> (u64, u64) {
    // SAFETY: mallinfo2 takes no arguments and only reads malloc's state.
    let heap = unsafe { libc::mallinfo2() }.uordblks as u64;
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf takes no pointers.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    (heap, pages * page)
}

/// Opens `n` incoming sessions on `host`.
pub fn open_sessions(host: &Host, n: usize) -> Vec<mq_host::Session<'_>> {
    (0..n)
        .map(|_| host.open(Direction::Incoming).expect("open a session"))
        .collect()
}

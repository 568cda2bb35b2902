//! [`TestHost`]: a real mq-host in the test process, with the plugins of
//! one test.

use crate::locate::Plugin;
use crate::session::{Delivery, Smtp};
use mq_host::{CounterSnapshot, Direction, Host, HostBuilder, LogRecord, Source};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How long a step may run, in real time, before the test fails: only a
/// plugin that never resumes takes that long (on the virtual clock even
/// a hook that waits an hour ends at once).
pub const DEFAULT_STEP_LIMIT: Duration = Duration::from_secs(60);

/// Builds a [`TestHost`]; see [`TestHost::builder`].
#[must_use = "a builder does nothing until `start`"]
pub struct TestHostBuilder {
    plugins: Vec<Plugin>,
    virtual_time: bool,
    workers: usize,
    step_limit: Duration,
    configure: Vec<Box<dyn FnOnce(HostBuilder) -> HostBuilder>>,
}

impl TestHostBuilder {
    /// Adds a plugin to the chain: plugins run in the order they are added.
    /// Without any, the host loads [`Plugin::this_crate`].
    pub fn plugin(mut self, plugin: Plugin) -> Self {
        self.plugins.push(plugin);
        self
    }

    /// Adds the plugin of the crate under test ([`Plugin::this_crate`]).
    pub fn this_crate(self) -> Self {
        self.plugin(Plugin::this_crate())
    }

    /// Whether the workers run on the virtual clock (default: yes). A
    /// worker with nothing to do but wait for a timer jumps to it, so
    /// sleeps and timeouts in hooks end at once and in order; while a
    /// plugin's socket is watched or a `spawn_blocking` job runs, the
    /// clock runs at the real rate (see `docs/testing.md`).
    pub fn virtual_time(mut self, on: bool) -> Self {
        self.virtual_time = on;
        self
    }

    /// Number of worker threads (default 1, so that every connection of
    /// the test shares one worker and one clock).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// How long a step may take in real time before the test fails
    /// (default [`DEFAULT_STEP_LIMIT`]).
    pub fn step_limit(mut self, limit: Duration) -> Self {
        self.step_limit = limit;
        self
    }

    /// Sets anything else on mq-host's own builder: a hold deadline, the
    /// hold report interval, the API version, ...
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// let host = mq_plugin_test::TestHost::builder()
    ///     .configure(|b| b.hold_deadline(Some(Duration::from_secs(5))))
    ///     .start();
    /// ```
    pub fn configure(mut self, f: impl FnOnce(HostBuilder) -> HostBuilder + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// Copies the plugins into a directory of this host's own (so each
    /// test gets fresh plugin statics), loads them, runs `mq_initialize`
    /// and starts the workers. Panics with mq-host's reason when a plugin
    /// is refused.
    pub fn start(self) -> TestHost {
        let plugins = if self.plugins.is_empty() {
            vec![Plugin::this_crate()]
        } else {
            self.plugins
        };
        let dir = TempDir::new();
        let mut builder = Host::builder()
            .workers(self.workers)
            .virtual_time(self.virtual_time);
        let mut names = Vec::new();
        for plugin in &plugins {
            let mut name = plugin.name();
            if names.contains(&name) {
                name = format!("{name}-{}", names.len() + 1);
            }
            let copy = dir.0.join(format!("{name}.so"));
            names.push(name);
            std::fs::copy(plugin.path(), &copy).unwrap_or_else(|e| {
                panic!(
                    "mq-plugin-test: cannot copy {} to {}: {e}",
                    plugin.path().display(),
                    copy.display()
                )
            });
            builder = builder.plugin_file(copy);
        }
        for f in self.configure {
            builder = f(builder);
        }
        let host = builder.start().unwrap_or_else(|e| {
            let hint = if e.to_string().contains("export-dynamic-symbol") {
                "\n(a C plugin needs the test binary to export the host's functions: add a \
                 build.rs with `println!(\"cargo:rustc-link-arg-tests=-Wl,--export-dynamic-symbol=MQ_*\");`)"
            } else {
                ""
            };
            panic!("mq-plugin-test: the host did not start: {e}{hint}")
        });
        TestHost {
            host: Some(host),
            step_limit: self.step_limit,
            _dir: dir,
        }
    }
}

/// A real mq-host running in the test process with the plugins of one
/// test, on a virtual clock by default.
///
/// When the test fails (a panic while the host is alive), the host prints
/// its whole log — what every plugin logged, and the host's own reports —
/// to the test's output as it is dropped.
///
/// ```no_run
/// use mq_plugin_test::TestHost;
///
/// let host = TestHost::new(); // this crate's plugin
/// let mut smtp = host.smtp();
/// smtp.connect().assert_accepted();
/// smtp.mail_from("shop@example.com").assert_accepted();
/// smtp.rcpt_to("nobody@evil.example").assert_refused(550);
/// ```
pub struct TestHost {
    host: Option<Host>,
    step_limit: Duration,
    _dir: TempDir,
}

impl TestHost {
    /// A host with the crate under test's plugin ([`Plugin::this_crate`])
    /// on the virtual clock, one worker.
    pub fn new() -> TestHost {
        TestHost::builder().start()
    }

    /// A builder: plugins in chain order, the clock, workers, and mq-host's
    /// own settings.
    pub fn builder() -> TestHostBuilder {
        TestHostBuilder {
            plugins: Vec::new(),
            virtual_time: true,
            workers: 1,
            step_limit: DEFAULT_STEP_LIMIT,
            configure: Vec::new(),
        }
    }

    /// A new incoming SMTP connection; no hook has run yet (start with
    /// [`Smtp::connect`]).
    pub fn smtp(&self) -> Smtp<'_> {
        Smtp::new(self, self.open(Direction::Incoming))
    }

    /// A new outgoing delivery connection, for `smtp_out_data` and
    /// `smtp_out_sent`.
    pub fn delivery(&self) -> Delivery<'_> {
        Delivery::new(self, self.open(Direction::Outgoing))
    }

    fn open(&self, direction: Direction) -> mq_host::Session<'_> {
        self.host()
            .open(direction)
            .unwrap_or_else(|e| panic!("mq-plugin-test: cannot open a connection: {e}"))
    }

    /// Lets `by` of time pass on the host's clock, firing the plugins' own
    /// timers in order — how a test reaches what happens later (a window
    /// that ends, a cache entry that expires, a sweeper's next tick).
    ///
    /// On the virtual clock (the default) time passes only during a step
    /// and here, so it takes microseconds, not `by`; between steps the
    /// clock stands still. On the real clock it waits `by`.
    ///
    /// ```no_run
    /// # use mq_plugin_test::TestHost;
    /// # use std::time::Duration;
    /// let host = TestHost::new();
    /// host.advance(Duration::from_secs(3600)); // an hour later
    /// ```
    pub fn advance(&self, by: Duration) {
        self.host()
            .advance(by)
            .unwrap_or_else(|e| panic!("mq-plugin-test: cannot advance the clock: {e}"));
    }

    /// The host's counters: hook calls, and every guard (`double_resumes`,
    /// `late_resumes`, `hold_reports`, `api_misuse`, `plugin_panics`, ...).
    pub fn counters(&self) -> CounterSnapshot {
        self.host().counters()
    }

    /// The whole log so far, plugins' and host's records.
    pub fn log(&self) -> Vec<LogRecord> {
        self.host().log()
    }

    /// The texts of what plugins logged so far (`MQ_log`, `log::info!`, ...).
    pub fn plugin_log(&self) -> Vec<String> {
        self.texts(Source::Plugin)
    }

    /// The texts of the host's own records so far: loading, guard reports
    /// (a double resume, a misuse, a long hold), ...
    pub fn host_log(&self) -> Vec<String> {
        self.texts(Source::Host)
    }

    fn texts(&self, source: Source) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|r| r.source == source)
            .map(|r| r.text)
            .collect()
    }

    /// mq-host's [`Host`], for anything this crate does not wrap.
    pub fn host(&self) -> &Host {
        self.host.as_ref().expect("the host runs until dropped")
    }

    pub(crate) fn step_limit(&self) -> Duration {
        self.step_limit
    }

    /// Stops the workers (`mq_context_cleanup`) and runs `mq_cleanup`;
    /// returns the final counters (after the cleanup hooks).
    pub fn shutdown(mut self) -> CounterSnapshot {
        let host = self.host.take().expect("the host runs until dropped");
        host.shutdown().counters
    }
}

impl Default for TestHost {
    fn default() -> Self {
        TestHost::new()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let Some(host) = self.host.take() else {
            return;
        };
        if std::thread::panicking() {
            eprintln!("{}", crate::report::log_dump(&host.log()));
        }
        drop(host);
    }
}

/// A directory of the test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mq-plugin-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("mq-plugin-test: cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

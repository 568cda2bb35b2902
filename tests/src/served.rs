//! `mq-host serve` as a child process, watched the way the session tests
//! need: its log read all along, its counters on demand (SIGUSR1), a
//! graceful stop (SIGTERM); and a small deterministic random source for
//! generated clients.

use crate::host_binary;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The exit code `serve` has under [`Served::start_under_valgrind`] when
/// valgrind found errors.
pub const VALGRIND_ERRORS: i32 = 97;

/// `mq-host serve --counters`, its stderr read all along (a full pipe would
/// block the host's log, and with it its workers); killed on drop.
pub struct Served {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    /// Reads stderr into `log` until serve exits.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    pub fn start(env: &[(&str, &str)], args: &[&OsStr]) -> Served {
        Served::spawn(Command::new(host_binary()), env, args)
    }

    /// `serve` under valgrind memcheck with a leak check; its report goes to
    /// `log_file`, and errors make the exit code [`VALGRIND_ERRORS`].
    pub fn start_under_valgrind(log_file: &Path, env: &[(&str, &str)], args: &[&OsStr]) -> Served {
        let mut valgrind = Command::new("valgrind");
        valgrind
            .args([
                "--error-exitcode=97",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite",
                "--num-callers=30",
            ])
            .arg(format!("--log-file={}", log_file.display()))
            .arg(host_binary());
        Served::spawn(valgrind, env, args)
    }

    /// Starts `command` as serve on a free port, with `env` and `args`.
    pub fn spawn(mut command: Command, env: &[(&str, &str)], args: &[&OsStr]) -> Served {
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0", "--grace", "2"])
            .arg("--counters")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mq-host serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            let mut stderr = BufReader::new(stderr);
            let mut line = Vec::new();
            while stderr.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&line);
                if let Some(rest) = text.strip_prefix("mq-host: serving SMTP on ") {
                    let _ = addr_tx.send(rest.split_whitespace().next().map(str::to_owned));
                }
                sink.lock().unwrap().push_str(&text);
                line.clear();
            }
        });
        let mut served = Served {
            child,
            addr: ([127, 0, 0, 1], 0).into(),
            log,
            reader: Some(reader),
        };
        match addr_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(addr)) => served.addr = addr.parse().expect("the listening address"),
            _ => panic!("serve did not start:\n{}", served.log()),
        }
        served
    }

    /// The process id of `serve` (of valgrind, under valgrind).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far (stderr).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends signal `name` (e.g. `USR1`) to serve.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name}");
    }

    /// Waits (10 s at most) until `ready` holds for the log.
    pub fn wait_for_log(&self, what: &str, mut ready: impl FnMut(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready(&self.log()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The counters now (SIGUSR1 prints them).
    pub fn counters_now(&self) -> Counters {
        let printed = |log: &str| log.matches("counters:\n").count();
        let before = printed(&self.log());
        self.signal("USR1");
        let mut counters = None;
        self.wait_for_log("the counters (SIGUSR1)", |log| {
            counters = (printed(log) > before)
                .then(|| Counters::last(log))
                .flatten();
            counters.is_some()
        });
        counters.expect("printed")
    }

    /// Polls the counters until `ready` (or `limit` passed: the last ones).
    pub fn try_wait_for_counters(
        &self,
        limit: Duration,
        ready: impl Fn(&Counters) -> bool,
    ) -> Result<(), Counters> {
        let deadline = Instant::now() + limit;
        loop {
            let counters = self.counters_now();
            if ready(&counters) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(counters);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Like [`Served::try_wait_for_counters`] for 10 s; panics on timeout.
    pub fn wait_for_counters(&self, what: &str, ready: impl Fn(&Counters) -> bool) {
        if let Err(last) = self.try_wait_for_counters(Duration::from_secs(10), ready) {
            panic!("timed out waiting for {what}: {last}\n{}", self.log());
        }
    }

    /// SIGTERM: serve stops gracefully; its exit status and whole log.
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for serve") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "serve did not stop within 60 s of SIGTERM\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the stderr reader");
        }
        (status, self.log())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One `--counters` printout: counters and per-hook calls by name.
#[derive(Debug)]
pub struct Counters(HashMap<String, u64>);

impl Counters {
    /// The last complete printout in `log` (it ends with an empty line).
    pub fn last(log: &str) -> Option<Counters> {
        let start = log.rfind("counters:\n")? + "counters:\n".len();
        let block = &log[start..];
        let end = block.find("\n\n")?;
        let values = block[..end]
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let (Some(name), Some(value), None) = (words.next(), words.next(), words.next())
                else {
                    return None;
                };
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect();
        Some(Counters(values))
    }

    /// A counter or hook; a hook never called is not printed: 0.
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Closes of a session in a plugin: `smtp_in_close` calls plus those
    /// the host left out because the (Rust) plugin had nothing to close
    /// (`smtp_in_close_skipped`). Each session closes exactly once in
    /// every plugin that exports `smtp_in_close`, one way or the other.
    pub fn closes(&self) -> u64 {
        self.get("smtp_in_close") + self.get("smtp_in_close_skipped")
    }
}

impl std::fmt::Display for Counters {
    /// The non-zero ones, by name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut values: Vec<_> = self.0.iter().filter(|(_, v)| **v > 0).collect();
        values.sort();
        let values: Vec<String> = values.iter().map(|(k, v)| format!("{k} {v}")).collect();
        write!(f, "{}", values.join(", "))
    }
}

/// How many of `plugins` define `smtp_in_close` (by `mq-host inspect`).
pub fn defining_smtp_in_close(plugins: &[&Path]) -> u64 {
    let out = Command::new(host_binary())
        .arg("inspect")
        .args(plugins)
        .output()
        .expect("run mq-host inspect");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .matches(" mq_smtp_in_close ")
        .count() as u64
}

/// The lines of `log` that only a host bug writes ([`BUG_MARKS`]).
pub fn bug_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| BUG_MARKS.iter().any(|m| l.contains(m)))
        .collect()
}

/// Log text that only a host bug writes.
pub const BUG_MARKS: [&str; 3] = ["panicked", "host bug", "session failed"];

/// splitmix64: small, deterministic, good enough to pick test cases.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A number in `low..=high`.
    pub fn range(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    /// True `p` times in a hundred.
    pub fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// `n` random bytes, all values.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// `n` printable bytes, no line ends.
    pub fn text(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| b' ' + self.below(95) as u8).collect()
    }
}

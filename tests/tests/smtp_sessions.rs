//! However an SMTP session ends — QUIT, a hang-up (also during a plugin's
//! hold), the idle timeout, a failed TLS handshake, an error, shutdown —
//! `mq-host serve` runs `smtp_in_close` exactly once in every plugin that
//! defines it, and only after the step a plugin holds is over.
//!
//! The first test is the reproduction of the bug (hanging up during a
//! tarpit's hold panicked the session and skipped `smtp_in_close`); the
//! second is a session fuzzer, deterministic per seed:
//!
//! - `MQ_FUZZ_SEED` (decimal or `0x` hex; default [`DEFAULT_SEED`]),
//! - `MQ_FUZZ_SESSIONS` (default 400), `MQ_FUZZ_THREADS` (default 8),
//! - `MQ_FUZZ_ONLY=I`: replay session I alone. A session's bytes depend
//!   only on the seed and its number, so one session can be replayed and
//!   printed (`MQ_FUZZ_PRINT=1`).

use mq_e2e::served::{bug_lines, defining_smtp_in_close, Counters, Rng, Served, VALGRIND_ERRORS};
use mq_e2e::{plugin_so, PluginDir};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The fuzzer's seed without `MQ_FUZZ_SEED`.
const DEFAULT_SEED: u64 = 0x6d71_2d68_6f73_7431;

#[test]
fn hanging_up_during_a_hold_still_closes_every_plugin() {
    hang_up_during_holds(&Run::Plain);
}

/// The same under valgrind memcheck (errors and definite leaks fail), in
/// the table mode and in the global-symbols-only mode: the held chain's
/// arguments stay alive for the plugin until its step is over.
#[test]
fn hanging_up_during_a_hold_is_clean_under_valgrind() {
    for global_symbols in [false, true] {
        hang_up_during_holds(&Run::Valgrind { global_symbols });
    }
}

/// How the host runs.
enum Run {
    Plain,
    Valgrind { global_symbols: bool },
}

impl Run {
    /// The tarpit's step: long enough under valgrind to hang up within it.
    fn step(&self) -> Duration {
        match self {
            Run::Plain => Duration::from_millis(1500),
            Run::Valgrind { .. } => Duration::from_millis(6000),
        }
    }
}

fn hang_up_during_holds(run: &Run) {
    const SESSIONS: u64 = 4;
    let dir = PluginDir::new("sessions-hangup");
    let tarpit = dir.add("10-tarpit.so", &plugin_so("mq-example-tarpit"), "");
    let stamp = dir.add("20-stamp.so", &plugin_so("mq-example-stamp"), "");
    let closing_plugins = defining_smtp_in_close(&[&tarpit, &stamp]);
    assert_eq!(closing_plugins, 2, "both define it through the framework");
    let data = dir.path().join("data");
    let step = run.step();
    let step_ms = step.as_millis().to_string();
    let mut args: Vec<&OsStr> = vec![
        "--workers".as_ref(),
        "2".as_ref(),
        "--plugin".as_ref(),
        tarpit.as_os_str(),
        "--plugin".as_ref(),
        stamp.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ];
    if let Run::Valgrind {
        global_symbols: true,
    } = run
    {
        args.push("--global-symbols-only".as_ref());
    }
    let valgrind_log = dir.path().join("valgrind.log");
    let served = match run {
        Run::Plain => Served::start(&[("MQ_TARPIT_STEP_MS", &step_ms)], &args),
        Run::Valgrind { .. } => {
            Served::start_under_valgrind(&valgrind_log, &[("MQ_TARPIT_STEP_MS", &step_ms)], &args)
        }
    };
    let started = Instant::now();
    let clients: Vec<TcpStream> = (0..SESSIONS)
        .map(|_| {
            let mut client = TcpStream::connect(served.addr).expect("connect");
            client
                .write_all(
                    b"EHLO client\r\nMAIL FROM:<a@shop.example>\r\nRCPT TO:<x1@example.org>\r\n\
                      RCPT TO:<x2@example.org>\r\nRCPT TO:<x3@example.org>\r\n",
                )
                .expect("pipelined commands");
            client
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The tarpit holds every session's 2nd RCPT for one step: hang up in
    // it (replies unread, so the host sees a reset).
    served.wait_for_log("every 2nd RCPT held", |log| {
        log.matches("(recipient #2)").count() == SESSIONS as usize
    });
    drop(clients);
    assert!(
        started.elapsed() < step,
        "too slow to hang up during the holds ({:?} after connecting)",
        started.elapsed()
    );

    // No hold ends before one step after the connects, so a snapshot
    // taken before then must show no close yet.
    let early = served.counters_now();
    if started.elapsed() < step - Duration::from_millis(100) {
        assert_eq!(
            early.closes(),
            0,
            "smtp_in_close ran while the RCPT step was held\n{}",
            served.log()
        );
    }
    // The sessions end by themselves once the holds are over.
    served.wait_for_counters("every session to close", |c| {
        c.closes() >= SESSIONS * closing_plugins
    });

    let (status, log) = served.stop();
    let counters = Counters::last(&log).expect("--counters printed when serve stops");
    assert_eq!(counters.get("smtp_sessions"), SESSIONS, "{log}");
    assert_eq!(
        counters.closes(),
        SESSIONS * closing_plugins,
        "exactly once per session and plugin\n{log}"
    );
    assert_eq!(counters.get("host_panics"), 0, "{log}");
    assert!(bug_lines(&log).is_empty(), "{log}");
    assert_ne!(
        status.code(),
        Some(VALGRIND_ERRORS),
        "valgrind found errors:\n{}",
        std::fs::read_to_string(&valgrind_log).unwrap_or_default()
    );
    assert!(status.success(), "{status}\n{log}");
}

/// valgrind's exit code when it found errors.

#[test]
fn random_sessions_end_with_exactly_one_close_per_plugin() {
    let fuzz = Fuzz::from_env();
    eprintln!("smtp_sessions fuzzer: {fuzz}");
    if std::env::var_os("MQ_FUZZ_PRINT").is_some() {
        for &i in &fuzz.sessions {
            eprintln!("session {i}: {:#?}", script(fuzz.seed, i));
        }
    }
    let dir = PluginDir::new("sessions-fuzz");
    let plugins = [
        dir.add("10-allowlist.so", &plugin_so("mq-example-allowlist"), ""),
        dir.add("20-tarpit.so", &plugin_so("mq-example-tarpit"), ""),
        dir.add("30-stamp.so", &plugin_so("mq-example-stamp"), ""),
        dir.add("40-body-hash.so", &plugin_so("mq-example-body-hash"), ""),
    ];
    let plugin_paths: Vec<&Path> = plugins.iter().map(|p| p.as_path()).collect();
    let closing_plugins = defining_smtp_in_close(&plugin_paths);
    assert_eq!(
        closing_plugins, 4,
        "every Rust plugin defines smtp_in_close through the framework"
    );
    let data = dir.path().join("data");
    let mut args: Vec<&OsStr> = vec![
        "--workers".as_ref(),
        "2".as_ref(),
        "--idle-timeout".as_ref(),
        "2".as_ref(),
        "--hold-deadline".as_ref(),
        "5".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        // The scripts' AUTH exchanges come over plain connections.
        "--auth-insecure".as_ref(),
    ];
    for p in &plugins {
        args.extend(["--plugin".as_ref(), p.as_os_str()]);
    }
    // The allow-list is the built-in one: example.com, example.org,
    // postmaster@localhost.
    let served = Served::start(&[("MQ_TARPIT_STEP_MS", "50")], &args);

    let clock = Instant::now();
    let (mut sessions, mut findings) = fuzz.run_clients(served.addr);
    let clients_took = clock.elapsed();
    if let Err(e) = still_serves(served.addr) {
        findings.push(format!("after the fuzz: {e}"));
    }
    sessions += 1; // the check's
                   // Every session ends by itself: a hang-up at once, a stall by the idle
                   // timeout, a hold by its end or the hold deadline.
    let settled = served.try_wait_for_counters(Duration::from_secs(20), |c| {
        c.get("smtp_sessions") == sessions && c.closes() >= sessions * closing_plugins
    });
    if let Err(c) = settled {
        findings.push(format!(
            "20 s after the last client, {} session(s) and {} smtp_in_close call(s)",
            c.get("smtp_sessions"),
            c.closes()
        ));
    }
    // A few sessions are still open when serve is told to stop.
    let lingering = linger(served.addr);
    sessions += lingering.len() as u64;
    let (status, log) = served.stop();
    drop(lingering);
    let counters = Counters::last(&log).expect("--counters printed when serve stops");
    let host_said: Vec<&str> = log.lines().filter(|l| l.starts_with("mq-host: ")).collect();
    eprintln!(
        "smtp_sessions fuzzer: clients {clients_took:.1?}, all {:.1?}; {counters}\n{}",
        clock.elapsed(),
        host_said.join("\n")
    );
    for (name, got, want) in [
        ("smtp_sessions", counters.get("smtp_sessions"), sessions),
        (
            "closes (smtp_in_close and smtp_in_close_skipped)",
            counters.closes(),
            sessions * closing_plugins,
        ),
        ("host_panics", counters.get("host_panics"), 0),
    ] {
        if got != want {
            findings.push(format!("{name} {got}, expected {want}"));
        }
    }
    findings.extend(bug_lines(&log).into_iter().map(str::to_owned));
    if !status.success() {
        findings.push(format!("serve exited with {status}"));
    }
    if !findings.is_empty() {
        let path = std::env::temp_dir().join(format!("mq-smtp-sessions-{:#x}.log", fuzz.seed));
        let _ = std::fs::write(&path, &log);
        panic!(
            "{fuzz}: {sessions} session(s) in all (the check's and the lingering ones \
             included), {closing_plugins} plugin(s) with smtp_in_close\n{}\nthe host's log: {}\n\
             (MQ_FUZZ_ONLY=I replays session I alone; MQ_FUZZ_PRINT=1 prints it)",
            findings.join("\n"),
            path.display()
        );
    }
}

/// The fuzzer's settings, from the environment.
struct Fuzz {
    seed: u64,
    sessions: Vec<usize>,
    threads: usize,
}

impl Fuzz {
    fn from_env() -> Fuzz {
        let seed = env_u64("MQ_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
        let sessions: Vec<usize> = match env_u64("MQ_FUZZ_ONLY") {
            Some(only) => vec![only as usize],
            None => (0..env_u64("MQ_FUZZ_SESSIONS").unwrap_or(400) as usize).collect(),
        };
        Fuzz {
            seed,
            sessions,
            threads: env_u64("MQ_FUZZ_THREADS").unwrap_or(8).max(1) as usize,
        }
    }

    /// Runs the sessions from `threads` clients at once; how many
    /// connected, and what went wrong.
    fn run_clients(&self, addr: SocketAddr) -> (u64, Vec<String>) {
        let next = AtomicUsize::new(0);
        let connected = AtomicUsize::new(0);
        let findings = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..self.threads {
                scope.spawn(|| {
                    while let Some(&i) = self.sessions.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let ops = script(self.seed, i);
                        let outcome = match TcpStream::connect(addr) {
                            Ok(stream) => {
                                connected.fetch_add(1, Ordering::Relaxed);
                                run(stream, &ops)
                            }
                            Err(e) => Err(format!("cannot connect: {e}")),
                        };
                        if let Err(e) = outcome {
                            let finding = format!("session {i}: {e}\n  script: {ops:?}");
                            findings.lock().unwrap().push(finding);
                        }
                    }
                });
            }
        });
        let findings = findings.into_inner().unwrap();
        (connected.into_inner() as u64, findings)
    }
}

impl std::fmt::Display for Fuzz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MQ_FUZZ_SEED={:#x}, {} session(s), {} client thread(s)",
            self.seed,
            self.sessions.len(),
            self.threads
        )
    }
}

/// Sessions left open for the shutdown to end: idle after EHLO, in DATA,
/// in AUTH, and one whose 30 RCPTs the tarpit holds one after the other.
fn linger(addr: SocketAddr) -> Vec<Conn> {
    let rcpts: String = (0..30)
        .map(|n| format!("RCPT TO:<l{n}@example.com>\r\n"))
        .collect();
    let sessions = [
        ("EHLO idle.example\r\n".to_owned(), 2),
        (
            "EHLO d.example\r\nMAIL FROM:<a@shop.example>\r\nRCPT TO:<b@example.com>\r\n\
             DATA\r\nSubject: unfinished\r\n"
                .to_owned(),
            5,
        ),
        ("EHLO a.example\r\nAUTH PLAIN\r\n".to_owned(), 3),
        (
            format!("EHLO t.example\r\nMAIL FROM:<a@shop.example>\r\n{rcpts}"),
            5,
        ),
    ];
    sessions
        .into_iter()
        .map(|(bytes, replies)| {
            let mut c = Conn::new(TcpStream::connect(addr).expect("connect"));
            c.send(bytes.as_bytes()).expect("send");
            // Where it should be before the shutdown begins.
            let deadline = Instant::now() + Duration::from_secs(10);
            assert!(
                c.read_until(deadline, |c| c.finals >= replies),
                "{bytes:?}: {} of {replies} replies, the last {:?}",
                c.finals,
                String::from_utf8_lossy(&c.last_final)
            );
            c
        })
        .collect()
}

/// A fresh session gets 250 to EHLO.
fn still_serves(addr: SocketAddr) -> Result<(), String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("cannot connect: {e}"))?;
    let mut check = Conn::new(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    let _ = check.send(b"EHLO check.example\r\n");
    if !check.read_until(deadline, |c| c.finals >= 2) || !check.last_final.starts_with(b"250 ") {
        return Err(format!(
            "no 250 for a fresh EHLO: {:?}",
            String::from_utf8_lossy(&check.last_final)
        ));
    }
    let _ = check.send(b"QUIT\r\n");
    let _ = check.read_until(deadline, |c| c.eof);
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value:?} is not a number")))
}

// ---------------------------------------------------------------------------
// The fuzzer's clients.

/// What a client does, in order; after the last op it drops the socket.
enum Op {
    /// One write.
    Send(Vec<u8>),
    /// Read until the session's n-th reply (the greeting is the first).
    Await(usize),
    /// Read what comes within a few milliseconds.
    Drain,
    Pause(Duration),
    /// `shutdown(Write)`: the host sees the end of the input.
    HalfClose,
    /// Read until the host closes the connection (by the idle timeout if
    /// nothing else).
    ReadToEnd,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Send(bytes) => write!(f, "Send(\"{}\")", Escaped(bytes)),
            Op::Await(n) => write!(f, "Await(reply #{n})"),
            Op::Drain => write!(f, "Drain"),
            Op::Pause(d) => write!(f, "Pause({d:?})"),
            Op::HalfClose => write!(f, "HalfClose"),
            Op::ReadToEnd => write!(f, "ReadToEnd"),
        }
    }
}

/// Bytes as escaped ASCII, exact but short: a run of one byte 16 times or
/// more is written `{x * N}`.
struct Escaped<'a>(&'a [u8]);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for run in self.0.chunk_by(|a, b| a == b) {
            let byte = std::slice::from_ref(&run[0]).escape_ascii();
            if run.len() >= 16 {
                write!(f, "{{{byte} * {}}}", run.len())?;
            } else {
                for _ in run {
                    write!(f, "{byte}")?;
                }
            }
        }
        Ok(())
    }
}

/// A client socket and what it has read.
struct Conn {
    stream: TcpStream,
    /// Final reply lines (`NNN text`) read so far.
    finals: usize,
    last_final: Vec<u8>,
    line: Vec<u8>,
    eof: bool,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
        Conn {
            stream,
            finals: 0,
            last_final: Vec::new(),
            line: Vec::new(),
            eof: false,
        }
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads until `done` or the end of the connection or `deadline`;
    /// whether `done`.
    fn read_until(&mut self, deadline: Instant, done: impl Fn(&Conn) -> bool) -> bool {
        let mut buf = [0u8; 16 * 1024];
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.eof || left.is_zero() {
                return false;
            }
            let _ = self
                .stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.stream.read(&mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.take(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                // A reset ends the connection too.
                Err(_) => self.eof = true,
            }
        }
        true
    }

    fn take(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b != b'\n' {
                // Replies are short; only a line's start matters.
                if self.line.len() < 512 {
                    self.line.push(b);
                }
                continue;
            }
            let l = &self.line;
            if l.len() >= 3
                && l[..3].iter().all(u8::is_ascii_digit)
                && matches!(l.get(3), None | Some(b' ' | b'\r'))
            {
                self.finals += 1;
                self.last_final = std::mem::take(&mut self.line);
            }
            self.line.clear();
        }
    }
}

/// Runs one session's ops; what went wrong on the host's side, if anything.
fn run(stream: TcpStream, ops: &[Op]) -> Result<(), String> {
    // Replies to commands arrive within the tarpit's cap (2 s) for each held
    // recipient; a session ends within the idle timeout plus the hold
    // deadline.
    const REPLY_WAIT: Duration = Duration::from_secs(10);
    const END_WAIT: Duration = Duration::from_secs(15);
    let mut c = Conn::new(stream);
    for (n, op) in ops.iter().enumerate() {
        match op {
            Op::Send(bytes) => {
                if c.send(bytes).is_err() {
                    // The host hung up (a TLS failure, the idle timeout):
                    // nothing more to do; the counters tell the rest.
                    return Ok(());
                }
            }
            Op::Await(reply) => {
                if !c.read_until(Instant::now() + REPLY_WAIT, |c| c.finals >= *reply) {
                    return Err(format!(
                        "op #{n}: waited for reply #{reply}; got {} (closed: {}), the last {:?}",
                        c.finals,
                        c.eof,
                        String::from_utf8_lossy(&c.last_final)
                    ));
                }
            }
            Op::Drain => {
                c.read_until(Instant::now() + Duration::from_millis(10), |_| false);
            }
            Op::Pause(d) => std::thread::sleep(*d),
            Op::HalfClose => {
                let _ = c.stream.shutdown(Shutdown::Write);
            }
            Op::ReadToEnd => {
                if !c.read_until(Instant::now() + END_WAIT, |c| c.eof) {
                    return Err(format!(
                        "op #{n}: the host kept the session open for {END_WAIT:?}"
                    ));
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The fuzzer's sessions.

/// The ops of session `index` under `seed`.
fn script(seed: u64, index: usize) -> Vec<Op> {
    let mut rng = Rng(seed ^ (index as u64).wrapping_mul(0xd605_bbb5_8c8a_bbb5));
    rng.next_u64();
    Script::new(rng).generate()
}

/// How a session ends.
#[derive(Clone, Copy)]
enum End {
    /// `QUIT`, then read until the host closes.
    Quit,
    /// Drop the socket right after the last write.
    Drop,
    /// Read what came, then drop.
    DrainDrop,
    /// Half-close; the host serves what is buffered, then closes.
    HalfClose,
    /// Wait: the idle timeout ends the session.
    Stall,
}

/// Builds one session's ops, tracking the SMTP state so that it knows how
/// many replies the host owes — until the input is something whose reply
/// count it does not predict (random bytes, odd line ends, long lines).
struct Script {
    rng: Rng,
    ops: Vec<Op>,
    /// Bytes of the commands not yet written (pipelining).
    batch: Vec<u8>,
    /// Replies owed once the batch is written (greeting included); `None`
    /// once they cannot be predicted.
    owed: Option<usize>,
    helo: bool,
    mail: bool,
    /// Recipients the allow-list accepted in this transaction.
    recipients: usize,
    /// A mail address counter, so that messages differ.
    serial: usize,
}

impl Script {
    fn new(rng: Rng) -> Script {
        Script {
            rng,
            ops: Vec::new(),
            batch: Vec::new(),
            owed: Some(1),
            helo: false,
            mail: false,
            recipients: 0,
            serial: 0,
        }
    }

    fn generate(mut self) -> Vec<Op> {
        if self.rng.percent(85) {
            self.ops.push(Op::Await(1));
        }
        if self.rng.percent(75) {
            // Most clients begin well: their commands get further.
            self.greet();
        }
        for _ in 0..self.rng.range(1, 6) {
            let ended = match self.rng.below(100) {
                0..=14 => self.greet(),
                15..=39 => self.transaction(),
                40..=49 => self.bdat(),
                50..=59 => self.simple(),
                60..=67 => self.broken(),
                68..=72 => self.random_bytes(),
                73..=75 => self.long_line(),
                76..=81 => self.odd_line_end(),
                82..=88 => self.auth(),
                _ => self.starttls(),
            };
            if ended {
                return self.ops;
            }
            if self.rng.percent(50) {
                self.write();
            }
        }
        let end = match self.rng.below(100) {
            0..=34 => End::Quit,
            35..=54 => End::Drop,
            55..=69 => End::DrainDrop,
            70..=94 => End::HalfClose,
            _ => End::Stall,
        };
        self.end(end);
        self.ops
    }

    /// A command line owing `replies` replies.
    fn command(&mut self, line: &str, replies: usize) {
        self.batch.extend_from_slice(line.as_bytes());
        self.batch.extend_from_slice(b"\r\n");
        self.owe(replies);
    }

    fn owe(&mut self, replies: usize) {
        if let Some(owed) = &mut self.owed {
            *owed += replies;
        }
    }

    /// Writes the batch, in pieces at random points; then maybe waits for
    /// the replies or reads what came.
    fn write(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        while batch.len() > 1 && self.rng.percent(30) {
            let rest = batch.split_off(self.rng.range(1, batch.len() - 1));
            self.ops.push(Op::Send(batch));
            self.ops
                .push(Op::Pause(Duration::from_millis(self.rng.below(4) as u64)));
            batch = rest;
        }
        if !batch.is_empty() {
            self.ops.push(Op::Send(batch));
        }
        match (self.owed, self.rng.below(10)) {
            (Some(owed), 0..=6) => self.ops.push(Op::Await(owed)),
            (_, 7..=8) => self.ops.push(Op::Drain),
            _ => {}
        }
    }

    fn end(&mut self, end: End) {
        if let End::Quit = end {
            if self.owed.is_none() {
                // After input of unknown shape: QUIT on a line of its own.
                self.batch.extend_from_slice(b"\r\n");
            }
            self.command("QUIT", 1);
        }
        self.write();
        match end {
            End::Quit | End::Stall => self.ops.push(Op::ReadToEnd),
            End::Drop => {}
            End::DrainDrop => self.ops.push(Op::Drain),
            End::HalfClose => self.ops.extend([Op::HalfClose, Op::ReadToEnd]),
        }
    }

    /// Ends the session in the middle of something (no QUIT possible).
    fn cut(&mut self) -> bool {
        let end = *self.rng.pick(&[
            End::Drop,
            End::Drop,
            End::DrainDrop,
            End::HalfClose,
            End::HalfClose,
            End::Stall,
        ]);
        self.end(end);
        true
    }

    fn desync(&mut self) {
        self.owed = None;
    }

    fn reset(&mut self) {
        self.mail = false;
        self.recipients = 0;
    }

    fn greet(&mut self) -> bool {
        let line = *self.rng.pick(&[
            "EHLO client.example",
            "HELO client.example",
            "ehlo x",
            "LHLO lmtp.example",
        ]);
        self.command(line, 1);
        self.helo = true;
        self.reset();
        false
    }

    /// MAIL and 0–3 RCPTs, as the host will answer them.
    fn envelope(&mut self) {
        let from = *self
            .rng
            .pick(&["<sender@shop.example>", "<>", "<a.b+c@example.net>"]);
        self.command(&format!("MAIL FROM:{from}"), 1);
        if self.helo && !self.mail {
            self.mail = true;
        }
        for _ in 0..self.rng.range(0, 3) {
            self.serial += 1;
            let allowed = self.rng.percent(60);
            let to = if allowed {
                let domain = *self
                    .rng
                    .pick(&["example.com", "example.org", "EXAMPLE.COM"]);
                format!("<r{}@{domain}>", self.serial)
            } else {
                format!("<r{}@example.net>", self.serial)
            };
            self.command(&format!("RCPT TO:{to}"), 1);
            if self.mail && allowed {
                self.recipients += 1;
            }
        }
    }

    fn transaction(&mut self) -> bool {
        self.envelope();
        if self.rng.percent(15) {
            return false;
        }
        self.command("DATA", 1);
        if !self.mail || self.recipients == 0 {
            // 554: a body sent anyway is read as commands.
            if self.rng.percent(30) {
                let body = self.body();
                self.batch.extend(body);
                self.desync();
            }
            return false;
        }
        if self.rng.percent(40) {
            // As most clients do: wait for the 354.
            self.write();
        }
        let body = self.body();
        if self.rng.percent(15) {
            // Hang up mid-DATA.
            let cut = self.rng.range(0, body.len());
            self.batch.extend_from_slice(&body[..cut]);
            return self.cut();
        }
        self.batch.extend(body);
        self.batch.extend_from_slice(b".\r\n");
        self.owe(1);
        self.reset();
        false
    }

    /// A message body, dot-stuffed, ending in CRLF (not yet the final dot).
    fn body(&mut self) -> Vec<u8> {
        self.serial += 1;
        let mut body = format!("Subject: fuzz {}\r\n\r\n", self.serial).into_bytes();
        for _ in 0..self.rng.range(0, 8) {
            let mut line = match self.rng.below(10) {
                0 => b".".to_vec(),
                1 => b".leading dot".to_vec(),
                2 => Vec::new(),
                3 if self.rng.percent(10) => vec![b'x'; 70_000],
                _ => {
                    let n = self.rng.range(1, 80);
                    self.rng.text(n)
                }
            };
            if line.first() == Some(&b'.') {
                line.insert(0, b'.');
            }
            body.extend(line);
            let ends: [&[u8]; 5] = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"];
            let end = *self.rng.pick(&ends);
            body.extend_from_slice(end);
        }
        if !body.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        body
    }

    fn bdat(&mut self) -> bool {
        self.envelope();
        for n in (0..self.rng.range(1, 3)).rev() {
            let last = n == 0 && self.rng.percent(80);
            let size = self.rng.range(0, 200);
            let chunk = self.rng.bytes(size);
            let line = format!("BDAT {size}{}\r\n", if last { " LAST" } else { "" });
            self.batch.extend_from_slice(line.as_bytes());
            if self.rng.percent(10) {
                // Hang up mid-chunk.
                let cut = self.rng.range(0, size);
                self.batch.extend_from_slice(&chunk[..cut]);
                return self.cut();
            }
            self.batch.extend(chunk);
            self.owe(1);
            if last && self.recipients > 0 {
                self.reset();
            }
        }
        false
    }

    fn simple(&mut self) -> bool {
        let line = *self.rng.pick(&[
            "RSET",
            "NOOP",
            "NOOP hello",
            "VRFY postmaster",
            "HELP",
            "EXPN list",
        ]);
        self.command(line, 1);
        if line == "RSET" {
            self.reset();
        }
        false
    }

    /// Lines the host refuses without changing the session's state.
    fn broken(&mut self) -> bool {
        let line = *self.rng.pick(&[
            "FROBNICATE",
            "EHLO",
            "HELO",
            "MAIL FROM:<not an address",
            "MAIL TO:<x@example.com>",
            "RCPT FROM:<x@example.com>",
            "BDAT",
            "BDAT abc",
            "AUTH",
            "",
            "\0\0\u{7f}",
            "DATA\u{1b}[2J",
        ]);
        self.command(line, 1);
        false
    }

    fn random_bytes(&mut self) -> bool {
        let n = self.rng.range(1, 300);
        let bytes = self.rng.bytes(n);
        self.batch.extend(bytes);
        self.desync();
        false
    }

    fn long_line(&mut self) -> bool {
        let prefix = *self.rng.pick(&["", "MAIL FROM:<", "RCPT TO:<", "EHLO "]);
        self.batch.extend_from_slice(prefix.as_bytes());
        self.batch.extend(vec![b'a'; 70_000]);
        self.batch.extend_from_slice(b"\r\n");
        self.desync();
        false
    }

    fn odd_line_end(&mut self) -> bool {
        let line = *self.rng.pick(&[
            "NOOP",
            "EHLO bare.example",
            "RSET",
            "MAIL FROM:<lf@shop.example>",
        ]);
        let ends: [&[u8]; 4] = [b"\n", b"\r", b"\r\r\n", b"\n\r"];
        let end = *self.rng.pick(&ends);
        self.batch.extend_from_slice(line.as_bytes());
        self.batch.extend_from_slice(end);
        self.desync();
        false
    }

    /// AUTH PLAIN or LOGIN, finished or not (no plugin authenticates:
    /// finished means 535).
    fn auth(&mut self) -> bool {
        if !self.helo {
            self.command("AUTH PLAIN", 1);
            return false;
        }
        let steps: &[(&str, usize)] = match self.rng.below(4) {
            0 => &[("AUTH PLAIN AGJvYgBwdw==", 1)],
            1 => &[("AUTH PLAIN", 1), ("AGJvYgBwdw==", 1)],
            2 => &[("AUTH LOGIN", 1), ("Ym9i", 1), ("cHc=", 1)],
            _ => &[("AUTH LOGIN Ym9i", 1), ("cHc=", 1)],
        };
        let give_up = self.rng.below(steps.len() + 2);
        for (i, (line, replies)) in steps.iter().enumerate() {
            if i > 0 && i == give_up {
                return match self.rng.below(3) {
                    0 => {
                        self.command("*", 1);
                        false
                    }
                    1 => {
                        self.command("!!! not base64", 1);
                        false
                    }
                    _ => self.cut(),
                };
            }
            self.command(line, *replies);
            if self.rng.percent(50) {
                self.write();
            }
        }
        false
    }

    /// STARTTLS, never followed through: nothing, garbage, or the start of
    /// a ClientHello; the session ends in TLS or by the idle timeout.
    fn starttls(&mut self) -> bool {
        self.command("STARTTLS", 1);
        self.write();
        if let Some(owed) = self.owed {
            if !matches!(self.ops.last(), Some(Op::Await(_))) {
                self.ops.push(Op::Await(owed));
            }
        }
        self.desync();
        match self.rng.below(3) {
            0 => {}
            1 => {
                let n = self.rng.range(1, 100);
                let garbage = self.rng.bytes(n);
                self.batch.extend(garbage);
            }
            _ => {
                let hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03";
                let n = self.rng.range(1, hello.len());
                self.batch.extend_from_slice(&hello[..n]);
            }
        }
        self.cut()
    }
}

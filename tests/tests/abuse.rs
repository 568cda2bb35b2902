//! The load-and-abuse run: thousands of sessions against `mq-host serve`
//! with the example plugins, mixing valid mail (8-bit and NUL bytes
//! included) with the attacks of `hostile_clients.rs` — pipelined floods,
//! clients that read nothing, trickling clients, endless AUTH lines, too
//! many recipients, hang-ups in DATA and during a plugin's hold, garbage,
//! injection in addresses. Afterwards:
//!
//! - the host still answers, and stops gracefully;
//! - its peak resident memory stays under [`PEAK_RSS_BOUND`];
//! - every message that got a `250` is stored, its MIME byte for byte (the
//!   stamp plugin's two header lines in front), and nothing else is;
//! - `smtp_in_close` ran exactly once per session in every plugin that
//!   defines it, and no host bug was logged.
//!
//! `MQ_ABUSE_SESSIONS` (default 2000), `MQ_ABUSE_THREADS` (default 24) and
//! `MQ_ABUSE_SEED` change the run.

use mq_e2e::served::{bug_lines, defining_smtp_in_close, Rng, Served};
use mq_e2e::{json_files, plugin_so, PluginDir};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The bound on `serve`'s peak resident memory over the whole run.
const PEAK_RSS_BOUND: u64 = 128 * 1024 * 1024;

/// A wait for one reply that no limit of this run comes near.
const PATIENCE: Duration = Duration::from_secs(60);

/// What one session does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A whole transaction with 8-bit and NUL bytes; must be stored.
    Valid,
    /// 20 000 pipelined NOOPs, replies read as they come.
    PipelinedFlood,
    /// 1 MB of NOOPs to a session whose replies are never read; hang up.
    NonReader,
    /// A command trickled a byte at a time: cut at the command deadline.
    Trickle,
    /// An AUTH line that never ends.
    EndlessAuth,
    /// More recipients than allowed; the allowed ones get the message.
    TooManyRecipients,
    /// Hang-up in the middle of the data.
    HangUpInData,
    /// Hang-up while the tarpit holds an RCPT.
    HangUpInHold,
    /// Random bytes, then a hang-up.
    Garbage,
    /// Control characters and line breaks in addresses.
    Injection,
    /// Connects and leaves without a word.
    Silent,
}

const MIX: [(Kind, usize); 11] = [
    (Kind::Valid, 40),
    (Kind::PipelinedFlood, 4),
    (Kind::NonReader, 3),
    (Kind::Trickle, 3),
    (Kind::EndlessAuth, 5),
    (Kind::TooManyRecipients, 5),
    (Kind::HangUpInData, 8),
    (Kind::HangUpInHold, 8),
    (Kind::Garbage, 8),
    (Kind::Injection, 8),
    (Kind::Silent, 8),
];

fn kind(rng: &mut Rng) -> Kind {
    let total: usize = MIX.iter().map(|(_, w)| w).sum();
    let mut pick = rng.below(total);
    for (kind, weight) in MIX {
        if pick < weight {
            return kind;
        }
        pick -= weight;
    }
    unreachable!("weights add up")
}

/// A message the host accepted: its token (in the subject) → its MIME
/// and how many recipients got it.
type Accepted = HashMap<String, (Vec<u8>, usize)>;

#[test]
fn thousands_of_hostile_and_valid_sessions() {
    let sessions = env_usize("MQ_ABUSE_SESSIONS", 2000);
    let threads = env_usize("MQ_ABUSE_THREADS", 24);
    let seed = env_usize("MQ_ABUSE_SEED", 0x5eed) as u64;
    let dir = PluginDir::new("abuse");
    let plugins = [
        dir.add(
            "10-c-allowlist.so",
            &plugin_so("mq-example-c-allowlist"),
            "",
        ),
        dir.add("20-allowlist.so", &plugin_so("mq-example-allowlist"), ""),
        dir.add("30-tarpit.so", &plugin_so("mq-example-tarpit"), ""),
        dir.add("40-stamp.so", &plugin_so("mq-example-stamp"), ""),
        dir.add("50-out-trace.so", &plugin_so("mq-example-out-trace"), ""),
    ];
    let paths: Vec<&Path> = plugins.iter().map(|p| p.as_path()).collect();
    let closing = defining_smtp_in_close(&paths);
    let data = dir.path().join("data");
    let mut args: Vec<&OsStr> = vec![
        "--workers".as_ref(),
        "2".as_ref(),
        "--quiet".as_ref(),
        "--plugins".as_ref(),
        dir.path().as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ];
    args.extend(
        [
            "--command-timeout",
            "2",
            "--data-timeout",
            "4",
            "--max-recipients",
            "5",
            "--max-connections-per-ip",
            "1000",
            // The endless AUTH lines come over plain connections.
            "--auth-insecure",
        ]
        .map(OsStr::new),
    );
    let served = Served::start(&[("MQ_TARPIT_STEP_MS", "100")], &args);
    let addr = served.addr;

    let clock = Instant::now();
    let next = AtomicUsize::new(0);
    let accepted = Mutex::new(Accepted::new());
    let findings = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= sessions {
                    return;
                }
                let mut rng = Rng(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                rng.next_u64();
                let kind = kind(&mut rng);
                match session(addr, kind, i, &mut rng) {
                    Ok(Some((token, mime, recipients))) => {
                        accepted.lock().unwrap().insert(token, (mime, recipients));
                    }
                    Ok(None) => {}
                    Err(e) => findings
                        .lock()
                        .unwrap()
                        .push(format!("session {i} ({kind:?}): {e}")),
                }
            });
        }
    });
    let clients_took = clock.elapsed();
    let mut findings = findings.into_inner().unwrap();

    // The host still answers: one more valid message.
    let mut rng = Rng(seed);
    match session(addr, Kind::Valid, sessions, &mut rng) {
        Ok(Some((token, mime, n))) => {
            accepted.lock().unwrap().insert(token, (mime, n));
        }
        other => findings.push(format!("after the run, a valid session: {other:?}")),
    }
    let all_sessions = sessions as u64 + 1;
    let settled = served.try_wait_for_counters(Duration::from_secs(30), |c| {
        c.get("smtp_sessions") == all_sessions && c.closes() >= all_sessions * closing
    });
    if let Err(c) = settled {
        findings.push(format!("the sessions did not all end: {c}"));
    }
    let peak = peak_rss(&served);
    if peak > PEAK_RSS_BOUND {
        findings.push(format!("peak resident memory {peak} bytes"));
    }

    let (status, log) = served.stop();
    let counters = mq_e2e::served::Counters::last(&log).expect("the counters at the end");
    eprintln!(
        "abuse run: {sessions} sessions from {threads} clients in {clients_took:.1?}; \
         peak RSS {} MB; {counters}",
        peak / (1024 * 1024)
    );
    if !status.success() {
        findings.push(format!("serve exited with {status}"));
    }
    for (name, got, want) in [
        ("smtp_sessions", counters.get("smtp_sessions"), all_sessions),
        (
            "closes (smtp_in_close and smtp_in_close_skipped)",
            counters.closes(),
            all_sessions * closing,
        ),
        ("host_panics", counters.get("host_panics"), 0),
    ] {
        if got != want {
            findings.push(format!("{name} {got}, expected {want}"));
        }
    }
    findings.extend(bug_lines(&log).into_iter().map(str::to_owned));
    findings.extend(check_stored(&data, &accepted.into_inner().unwrap()));
    if !findings.is_empty() {
        let path = std::env::temp_dir().join(format!("mq-abuse-{seed:#x}.log"));
        let _ = std::fs::write(&path, &log);
        panic!(
            "{} finding(s):\n{}\nthe host's log: {}",
            findings.len(),
            findings.join("\n"),
            path.display()
        );
    }
}

/// Every accepted message stored once per recipient, byte for byte behind
/// the stamp's two lines; nothing else stored.
fn check_stored(data: &Path, accepted: &Accepted) -> Vec<String> {
    let mut findings = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for message in json_files(&data.join("inbox")) {
        let mime = match (&message["mime"], &message["key"]) {
            (serde_json::Value::String(s), _) => s.clone().into_bytes(),
            (_, serde_json::Value::String(key)) => {
                std::fs::read(data.join("mime").join(key)).unwrap_or_default()
            }
            _ => {
                findings.push(format!("stored without MIME: {message}"));
                continue;
            }
        };
        let Some(token) = token_of(&mime) else {
            findings.push(format!("stored, never accepted: {message}"));
            continue;
        };
        *seen.entry(token.clone()).or_default() += 1;
        match accepted.get(&token) {
            Some((sent, _)) if stamped(&mime, sent) => {}
            Some(_) => findings.push(format!("{token}: stored bytes differ from the sent ones")),
            None => findings.push(format!("{token}: stored, never accepted")),
        }
    }
    for (token, (_, recipients)) in accepted {
        let stored = seen.get(token).copied().unwrap_or(0);
        if stored != *recipients {
            findings.push(format!(
                "{token}: {stored} stored for {recipients} recipient(s)"
            ));
        }
    }
    findings
}

/// `mime` is `sent` behind the stamp plugin's two header lines.
fn stamped(mime: &[u8], sent: &[u8]) -> bool {
    let Some(rest) = mime.strip_prefix(b"X-Stamped-By: ") else {
        return false;
    };
    let mut lines = rest.splitn(3, |b| *b == b'\n');
    let (Some(_), Some(sequence), Some(body)) = (lines.next(), lines.next(), lines.next()) else {
        return false;
    };
    sequence.starts_with(b"X-Stamp-Sequence: ") && body == sent
}

fn token_of(mime: &[u8]) -> Option<String> {
    let at = mime.windows(6).position(|w| w == b"token-")?;
    let token: Vec<u8> = mime[at..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'-')
        .copied()
        .collect();
    String::from_utf8(token).ok()
}

/// Peak resident memory of the served process.
fn peak_rss(served: &Served) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", served.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// A client connection with a reply reader.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Result<Client, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Ok(Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.writer
            .write_all(bytes)
            .map_err(|e| format!("send: {e}"))
    }

    /// The last line of the next reply; empty at EOF.
    fn reply(&mut self) -> Result<String, String> {
        loop {
            let mut line = Vec::new();
            self.reader
                .read_until(b'\n', &mut line)
                .map_err(|e| format!("no reply: {e}"))?;
            let line = String::from_utf8_lossy(&line).trim_end().to_owned();
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(line);
            }
        }
    }

    fn expect(&mut self, code: &str) -> Result<String, String> {
        let reply = self.reply()?;
        if reply.starts_with(code) {
            Ok(reply)
        } else {
            Err(format!("wanted {code}, got {reply:?}"))
        }
    }

    fn command(&mut self, line: &[u8], code: &str) -> Result<String, String> {
        self.send(&[line, b"\r\n"].concat())?;
        self.expect(code)
    }

    /// Reads until the server closes the connection.
    fn until_closed(&mut self) {
        let mut sink = Vec::new();
        let _ = self.reader.read_to_end(&mut sink);
    }
}

/// A body with 8-bit and NUL bytes, its lines never starting with a dot
/// (so the data sent is the data stored).
fn body(token: &str, rng: &mut Rng) -> Vec<u8> {
    let mut body =
        format!("Subject: {token}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n").into_bytes();
    for _ in 0..rng.range(1, 40) {
        let len = rng.range(0, 200);
        let mut line: Vec<u8> = rng
            .bytes(len)
            .into_iter()
            .filter(|b| !matches!(b, b'\r' | b'\n'))
            .collect();
        if line.first() == Some(&b'.') {
            line[0] = b'x';
        }
        body.extend_from_slice(&line);
        body.extend_from_slice(b"\r\n");
    }
    body
}

/// DATA with a fresh [`body`], accepted, then QUIT; the body sent.
fn data(c: &mut Client, token: &str, rng: &mut Rng) -> Result<Vec<u8>, String> {
    c.command(b"DATA", "354")?;
    let mime = body(token, rng);
    c.send(&mime)?;
    c.send(b".\r\n")?;
    c.expect("250")?;
    c.command(b"QUIT", "221")?;
    Ok(mime)
}

/// Runs one session; a valid one returns its token, MIME and recipients.
fn session(
    addr: SocketAddr,
    kind: Kind,
    index: usize,
    rng: &mut Rng,
) -> Result<Option<(String, Vec<u8>, usize)>, String> {
    let mut c = Client::connect(addr)?;
    if kind == Kind::Silent {
        return Ok(None);
    }
    if kind == Kind::Garbage {
        let len = rng.range(1, 10_000);
        let _ = c.send(&rng.bytes(len));
        return Ok(None);
    }
    c.expect("220")?;
    c.command(b"EHLO client.example", "250")?;
    match kind {
        Kind::Valid => {
            let token = format!("token-{index}-{}", rng.next_u64() % 1_000_000);
            let recipients = rng.range(1, 3);
            c.command(b"MAIL FROM:<sender@shop.example> BODY=8BITMIME", "250")?;
            for n in 0..recipients {
                c.command(
                    format!("RCPT TO:<r{n}.{index}@example.com>").as_bytes(),
                    "250",
                )?;
            }
            let mime = data(&mut c, &token, rng)?;
            Ok(Some((token, mime, recipients)))
        }
        Kind::PipelinedFlood => {
            const NOOPS: usize = 20_000;
            let mut writer = c.writer.try_clone().unwrap();
            let writing = std::thread::spawn(move || {
                let _ = writer.write_all(&b"NOOP\r\n".repeat(NOOPS));
            });
            for _ in 0..NOOPS {
                c.expect("250")?;
            }
            writing.join().unwrap();
            c.command(b"QUIT", "221").map(|_| None)
        }
        Kind::NonReader => {
            c.writer
                .set_write_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let _ = c.writer.write_all(&b"NOOP\r\n".repeat(170_000));
            Ok(None)
        }
        Kind::Trickle => {
            let mut writer = c.writer.try_clone().unwrap();
            let trickling = std::thread::spawn(move || {
                for b in b"MAIL FROM:<slow@shop.example>".iter().cycle() {
                    if writer.write_all(&[*b]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            });
            let reply = c.expect("421 4.4.2");
            c.until_closed();
            trickling.join().unwrap();
            reply.map(|_| None)
        }
        Kind::EndlessAuth => {
            c.command(b"AUTH PLAIN", "334")?;
            c.send(&vec![b'A'; 100_000])?;
            c.expect("500 5.5.6")?;
            c.send(b"\r\n")?;
            c.command(b"QUIT", "221").map(|_| None)
        }
        Kind::TooManyRecipients => {
            let token = format!("token-{index}-{}", rng.next_u64() % 1_000_000);
            c.command(b"MAIL FROM:<many@shop.example>", "250")?;
            for n in 0..5 {
                c.command(
                    format!("RCPT TO:<m{n}.{index}@example.org>").as_bytes(),
                    "250",
                )?;
            }
            for n in 5..8 {
                c.command(
                    format!("RCPT TO:<m{n}.{index}@example.org>").as_bytes(),
                    "452",
                )?;
            }
            let mime = data(&mut c, &token, rng)?;
            Ok(Some((token, mime, 5)))
        }
        Kind::HangUpInData => {
            c.command(b"MAIL FROM:<a@shop.example>", "250")?;
            c.command(format!("RCPT TO:<h.{index}@example.com>").as_bytes(), "250")?;
            c.command(b"DATA", "354")?;
            c.send(b"Subject: token-never\r\n\r\nhalf a mess")?;
            Ok(None)
        }
        Kind::HangUpInHold => {
            c.command(b"MAIL FROM:<a@shop.example>", "250")?;
            // The tarpit holds each RCPT longer than the one before.
            let rcpts: String = (0..4)
                .map(|n| format!("RCPT TO:<t{n}.{index}@example.com>\r\n"))
                .collect();
            c.send(rcpts.as_bytes())?;
            c.expect("250")?;
            Ok(None)
        }
        Kind::Injection => {
            c.command(b"MAIL FROM:<a@shop.example>", "250")?;
            for rcpt in [
                &b"RCPT TO:<\"a\x1b[31mRED\"@example.com>"[..],
                b"RCPT TO:<victim@evil.net>",
                b"RCPT TO:<victim@evil.net\x1b[2K@example.com>",
            ] {
                c.send(&[rcpt, b"\r\n"].concat())?;
                let reply = c.reply()?;
                let evil = rcpt.windows(9).any(|w| w == b"@evil.net");
                if reply.starts_with('2') && evil {
                    return Err(format!(
                        "{:?} accepted: {reply}",
                        String::from_utf8_lossy(rcpt)
                    ));
                }
            }
            c.command(b"QUIT", "221")?;
            c.until_closed();
            Ok(None)
        }
        Kind::Silent | Kind::Garbage => unreachable!("handled above"),
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

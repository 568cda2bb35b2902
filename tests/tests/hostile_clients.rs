//! `mq-host serve` against hostile clients and a plugin that floods them:
//! each test is an attack that once cost unbounded memory or time, and
//! now meets a limit (docs/security.md). No test asserts a duration: a
//! broken limit shows as a read that times out far past any limit here, a
//! byte count that is not bounded, or a counter that did not move.

use mq_e2e::served::{Counters, Served};
use mq_e2e::{c_probe, host_binary, json_files, plugin_so, PluginDir};
use mq_host::smtp_in::{Listener, ServeConfig};
use mq_host::Host;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// A generous bound on any single wait for a reply (a hang detector, not
/// a speed target).
const PATIENCE: Duration = Duration::from_secs(30);

fn serve(host: &Host, data: &Path, limits: impl FnOnce(&mut ServeConfig)) -> Listener {
    let mut config = ServeConfig {
        data_dir: data.to_owned(),
        ..Default::default()
    };
    limits(&mut config);
    host.serve(TcpListener::bind("127.0.0.1:0").unwrap(), config)
        .unwrap()
}

/// A raw SMTP client.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// Connects and reads the greeting.
    fn greeted(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        c.expect("220");
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// One reply line (without its line end); empty at EOF.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("no reply within {PATIENCE:?}: {e}"));
        line.trim_end().to_owned()
    }

    /// The last line of a (multi-line) reply.
    fn reply(&mut self) -> String {
        loop {
            let line = self.line();
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line;
            }
        }
    }

    fn expect(&mut self, code: &str) -> String {
        let reply = self.reply();
        assert!(reply.starts_with(code), "wanted {code}, got {reply:?}");
        reply
    }

    fn command(&mut self, line: &str, code: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.expect(code)
    }
}

/// A whole transaction, as a well-behaved client does it.
fn transaction(addr: SocketAddr, body: &str) {
    let mut c = Client::greeted(addr);
    c.command("EHLO good.example", "250");
    c.command("MAIL FROM:<a@good.example>", "250");
    c.command("RCPT TO:<b@good.example>", "250");
    c.command("DATA", "354");
    c.send(format!("Subject: fine\r\n\r\n{body}\r\n.\r\n").as_bytes());
    c.expect("250");
    c.command("QUIT", "221");
}

/// A client that pipelines 4 MB of NOOPs and reads nothing does not stall
/// the worker: another client on the same worker is served meanwhile, and
/// every NOOP is answered once the first client reads. (Before, parsing the
/// batch was quadratic: the second client waited 35 s for its greeting.)
#[test]
fn a_pipelined_flood_does_not_stall_the_worker() {
    let dir = PluginDir::new("hostile-pipelining");
    let host = dir.start();
    let data = dir.path().join("data");
    let server = serve(&host, &data, |_| {});
    let addr = server.local_addr();

    const NOOPS: usize = 700_000;
    let mut flooder = Client::greeted(addr);
    let mut writer = flooder.writer.try_clone().unwrap();
    let writing = std::thread::spawn(move || {
        let batch = b"NOOP\r\n".repeat(NOOPS);
        writer.write_all(&batch).unwrap();
    });
    // Let the batch arrive and the session stop on unread replies.
    std::thread::sleep(Duration::from_millis(500));
    transaction(addr, "served while another client floods");
    assert_eq!(json_files(&data.join("inbox")).len(), 1);

    let mut answered = 0;
    while answered < NOOPS {
        assert!(flooder.line().starts_with("250"), "a NOOP's reply");
        answered += 1;
    }
    writing.join().unwrap();
    flooder.command("QUIT", "221");
    assert!(
        host.counters().input_paused > 0,
        "the session paused reading"
    );
}

/// Input sent while a plugin holds the session is not buffered without
/// bound: the host stops reading, and the client's writes stall once the
/// socket buffers are full. (Before, 300 MB arrived in half a second.)
#[test]
fn input_while_a_hook_holds_is_bounded() {
    let dir = PluginDir::new("hostile-held-input");
    dir.add("10-probe.so", &c_probe(), "smtp_in_rcptto delay 8\n");
    let host = dir.start();
    let server = serve(&host, &dir.path().join("data"), |_| {});
    let mut c = Client::greeted(server.local_addr());
    c.command("EHLO flood.example", "250");
    c.command("MAIL FROM:<a@flood.example>", "250");
    c.send(b"RCPT TO:<b@flood.example>\r\n");
    // The rcptto hook holds for 8 s: push as much as the host will take.
    c.writer
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let chunk = b"NOOP\r\n".repeat(10_000);
    let attempted = 64 * 1024 * 1024;
    let mut written = 0;
    while written < attempted {
        match c.writer.write(&chunk) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    // The kernel's socket buffers (a few MB each way on loopback) and the
    // session's 256 KiB; nothing near 64 MB.
    assert!(
        written < 32 * 1024 * 1024,
        "the host took {written} bytes while a hook held the session"
    );
    assert!(host.counters().input_paused > 0);
}

/// A line after `AUTH PLAIN` that never ends is cut at the AUTH line limit
/// with a `500`; the rest of it is skipped, and the session goes on.
/// (Before, the line grew to 300 MB in 8 s.)
#[test]
fn an_endless_auth_line_is_cut() {
    let dir = PluginDir::new("hostile-auth-line");
    let host = dir.start();
    // AUTH on a plain connection, as the option allows.
    let server = serve(&host, &dir.path().join("data"), |c| c.auth_insecure = true);
    let mut c = Client::greeted(server.local_addr());
    c.command("EHLO auth.example", "250");
    c.command("AUTH PLAIN", "334");
    c.send(&vec![b'A'; 1024 * 1024]);
    c.expect("500 5.5.6");
    c.send(&vec![b'A'; 1024 * 1024]);
    c.send(b"\r\n");
    c.command("NOOP", "250");
    c.command("QUIT", "221");
    assert_eq!(host.counters().auth_lines_too_long, 1);
}

/// Recipients beyond `max_recipients` get `452 4.5.3`; the message goes to
/// the others.
#[test]
fn recipients_beyond_the_limit_get_452() {
    let dir = PluginDir::new("hostile-recipients");
    let host = dir.start();
    let data = dir.path().join("data");
    let server = serve(&host, &data, |c| c.max_recipients = 3);
    let mut c = Client::greeted(server.local_addr());
    c.command("EHLO many.example", "250");
    c.command("MAIL FROM:<a@many.example>", "250");
    for n in 0..3 {
        c.command(&format!("RCPT TO:<r{n}@many.example>"), "250");
    }
    for n in 3..5 {
        c.command(&format!("RCPT TO:<r{n}@many.example>"), "452 4.5.3");
    }
    c.command("DATA", "354");
    c.send(b"Subject: many\r\n\r\nx\r\n.\r\n");
    c.expect("250");
    assert_eq!(json_files(&data.join("inbox")).len(), 3);
    assert_eq!(host.counters().recipients_over_limit, 2);
}

/// Sends `bytes` one at a time, a byte every 300 ms, until the server
/// closes the connection.
fn trickle(mut writer: TcpStream, bytes: &'static [u8]) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for b in bytes.iter().cycle() {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    })
}

/// A client that trickles a command (a byte every 300 ms keeps the idle
/// timer from firing) is cut at the command deadline with a `421`; one
/// that trickles its message data, at the data deadline.
#[test]
fn trickling_clients_are_cut_at_their_deadline() {
    let dir = PluginDir::new("hostile-slowloris");
    let host = dir.start();
    let data = dir.path().join("data");
    let server = serve(&host, &data, |c| {
        c.idle_timeout = Duration::from_secs(120);
        c.command_timeout = Duration::from_secs(2);
        c.data_timeout = Duration::from_secs(3);
    });
    let addr = server.local_addr();

    let mut c = Client::greeted(addr);
    let trickler = trickle(c.writer.try_clone().unwrap(), b"NOOPNOOPNOOP");
    c.expect("421 4.4.2");
    assert_eq!(c.line(), "", "the session is closed");
    trickler.join().unwrap();

    let mut c = Client::greeted(addr);
    c.command("EHLO slow.example", "250");
    c.command("MAIL FROM:<a@slow.example>", "250");
    c.command("RCPT TO:<b@slow.example>", "250");
    c.command("DATA", "354");
    let trickler = trickle(c.writer.try_clone().unwrap(), b"Subject: slow\r\n");
    c.expect("421 4.4.2");
    trickler.join().unwrap();
    assert_eq!(host.counters().sessions_too_slow, 2);
    assert!(json_files(&data.join("inbox")).is_empty());
    assert_eq!(
        host.counters().sessions_idle,
        0,
        "never idle: cut by the deadlines"
    );
}

/// A client that sends nothing is closed at the idle timeout, and counted.
#[test]
fn an_idle_client_is_closed_and_counted() {
    let dir = PluginDir::new("hostile-idle");
    let host = dir.start();
    let server = serve(&host, &dir.path().join("data"), |c| {
        c.idle_timeout = Duration::from_secs(1);
    });
    let mut c = Client::greeted(server.local_addr());
    c.expect("421 4.4.2 idle");
    assert_eq!(c.line(), "", "the session is closed");
    assert_eq!(host.counters().sessions_idle, 1);
}

/// Connects until a greeting comes (a session that just ended may still
/// count for a moment).
fn greeted_eventually(addr: SocketAddr) -> Client {
    let start = Instant::now();
    loop {
        let mut c = Client::connect(addr);
        let reply = c.reply();
        if reply.starts_with("220") {
            return c;
        }
        assert!(start.elapsed() < PATIENCE, "never greeted: {reply}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sessions over the per-address and the total limit get `421 4.7.0` at
/// once, and a slot that frees up admits a client again.
#[test]
fn connection_limits_refuse_with_421() {
    let dir = PluginDir::new("hostile-connections");
    let host = dir.start();
    let data = dir.path().join("data");

    let per_address = serve(&host, &data.join("a"), |c| c.max_connections_per_ip = 3);
    let addr = per_address.local_addr();
    let mut open: Vec<Client> = (0..3).map(|_| Client::greeted(addr)).collect();
    let mut refused = Client::connect(addr);
    assert!(refused.line().starts_with("421 4.7.0"));
    assert_eq!(refused.line(), "", "closed after the 421");
    open.pop().unwrap().command("QUIT", "221");
    open.push(greeted_eventually(addr));

    let total = serve(&host, &data.join("b"), |c| c.max_connections = 2);
    let addr = total.local_addr();
    let _a = Client::greeted(addr);
    let _b = Client::greeted(addr);
    let mut refused = Client::connect(addr);
    assert!(refused.line().starts_with("421 4.7.0"));
    assert!(host.counters().connections_refused >= 2);
}

/// Resident memory of this process, in bytes.
fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// A plugin that `send`s 20 MB per RCPT to a client that reads nothing:
/// its output is cut at the session's output limit, and the session stops
/// handling the client's pipelined RCPTs while its replies wait. (Before,
/// 30 RCPTs buffered 640 MB.)
#[test]
fn a_plugin_flooding_a_client_that_does_not_read_is_cut() {
    let dir = PluginDir::new("hostile-send-flood");
    dir.add(
        "10-hostile.so",
        &plugin_so("mq-test-hostile"),
        "send-flood\n",
    );
    let host = dir.start();
    let server = serve(&host, &dir.path().join("data"), |_| {});
    let before = resident_bytes();
    let mut c = Client::greeted(server.local_addr());
    c.command("EHLO flood.example", "250");
    c.command("MAIL FROM:<a@flood.example>", "250");
    let rcpts: String = (0..100)
        .map(|n| format!("RCPT TO:<r{n}@flood.example>\r\n"))
        .collect();
    c.send(rcpts.as_bytes());
    let start = Instant::now();
    while host.counters().plugin_output_cut == 0 {
        assert!(start.elapsed() < PATIENCE, "no MQ_send was cut");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    // The socket buffers take a few MB of replies; then the next RCPT
    // waits for the client to read.
    let rcptto = mq_hook_table::HookId::SmtpInRcptto.hook().index();
    let calls = host.counters().per_hook[rcptto];
    assert!(
        calls < 50,
        "{calls} of 100 RCPTs handled for a client that reads nothing"
    );
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown < 64 * 1024 * 1024,
        "resident memory grew {grown} bytes"
    );
    let log: Vec<String> = host.log().iter().map(|r| r.text.clone()).collect();
    assert!(
        log.iter()
            .any(|l| l.starts_with("plugin 10-hostile: MQ_send cut")),
        "{log:#?}"
    );
}

/// With too few file descriptors, the acceptor says so once, backs off
/// instead of spinning, accepts again once descriptors are free, and still
/// stops on SIGTERM with none to spare. (Before, it spun at 100% CPU with
/// nothing logged, and its stop needed a descriptor of its own.)
#[test]
fn running_out_of_descriptors_backs_off_and_recovers() {
    use std::os::unix::process::CommandExt;
    let dir = PluginDir::new("hostile-fds");
    let mut command = std::process::Command::new(host_binary());
    // SAFETY: close_range and setrlimit are async-signal-safe system calls;
    // the closure touches nothing else between fork and exec.
    unsafe {
        command.pre_exec(|| {
            // Descriptors the test process (or whatever started it) left
            // open would count against the limit: serve gets none of them.
            libc::close_range(
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            );
            let limit = libc::rlimit {
                rlim_cur: 48,
                rlim_max: 48,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let data = dir.path().join("data");
    let served = Served::spawn(
        command,
        &[],
        &[
            "--workers".as_ref(),
            "1".as_ref(),
            "--plugins".as_ref(),
            dir.path().as_os_str(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ],
    );
    let addr = served.addr;

    // More clients than descriptors: the kernel completes the handshakes
    // (the listen backlog), the host cannot accept them all.
    let clients: Vec<TcpStream> = (0..80).map(|_| TcpStream::connect(addr).unwrap()).collect();
    served.wait_for_log("the out-of-descriptors report", |log| {
        log.contains("cannot accept clients")
    });
    std::thread::sleep(Duration::from_secs(3));
    let said = served.log().matches("cannot accept clients").count();
    assert_eq!(said, 1, "said once while it lasts:\n{}", served.log());
    drop(clients);
    let mut c = greeted_eventually(addr);
    c.command("QUIT", "221");

    // A stop while the acceptor waits in accept with descriptors scarce.
    let (status, log) = served.stop();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("accepting clients again"), "{log}");
    let errors = Counters::last(&log)
        .expect("the counters are printed")
        .get("accept_errors");
    // Backing off: a few attempts a second, not a spinning loop.
    assert!((1..200).contains(&errors), "{errors} failed accepts");
}

/// The message files of `dir`, parsed, with their MIME: the `mime` string,
/// or the bytes under their `key` in `data/mime/`.
fn stored_with_mime(data: &Path, queue: &str) -> Vec<(serde_json::Value, Vec<u8>)> {
    json_files(&data.join(queue))
        .into_iter()
        .map(|m| {
            let mime = match (&m["mime"], &m["key"]) {
                (serde_json::Value::String(s), _) => s.clone().into_bytes(),
                (_, serde_json::Value::String(key)) => {
                    std::fs::read(data.join("mime").join(key)).unwrap()
                }
                _ => panic!("no MIME in {m}"),
            };
            (m, mime)
        })
        .collect()
}

/// 8-bit bytes that are not UTF-8 and a NUL byte arrive in the stored
/// message exactly as sent (before: U+FFFD, and a cut at the NUL once a
/// plugin rewrote the MIME); UTF-8 for one recipient stays inline.
#[test]
fn accepted_bytes_are_stored_byte_for_byte() {
    let dir = PluginDir::new("hostile-bytes");
    let host = dir.start();
    let data = dir.path().join("data");
    let server = serve(&host, &data, |_| {});
    let body: &[u8] =
        b"Subject: caf\xe9\r\nX-Nul: a\x00b\r\n\r\n\xff\xfe 8-bit \xe9t\xe9\r\n..dot\r\n";
    let mut c = Client::greeted(server.local_addr());
    c.command("EHLO bytes.example", "250");
    c.command("MAIL FROM:<a@bytes.example> BODY=8BITMIME", "250");
    c.command("RCPT TO:<b@bytes.example>", "250");
    c.command("DATA", "354");
    c.send(body);
    c.send(b".\r\n");
    c.expect("250");
    c.command("MAIL FROM:<a@bytes.example>", "250");
    c.command("RCPT TO:<c@bytes.example>", "250");
    c.command("DATA", "354");
    c.send("Subject: plain\r\n\r\nütf-8\r\n.\r\n".as_bytes());
    c.expect("250");
    c.command("QUIT", "221");

    let stored = stored_with_mime(&data, "inbox");
    assert_eq!(stored.len(), 2);
    let (eight_bit, plain): (Vec<_>, Vec<_>) = stored
        .into_iter()
        .partition(|(m, _)| m["recipient"] == "b@bytes.example");
    // Dot-stuffing undone, every other byte kept.
    let expected = [&body[..body.len() - 7], b".dot\r\n"].concat();
    assert_eq!(eight_bit[0].1, expected);
    assert!(eight_bit[0].0.get("mime").is_none(), "kept apart, by key");
    assert_eq!(plain[0].0["mime"], "Subject: plain\r\n\r\nütf-8\r\n");
}

/// One DATA for many recipients is one copy of the MIME, in memory and on
/// disk (before: 2,000 recipients × 2 MB took 3.9 GB of memory).
#[test]
fn one_copy_of_the_mime_for_many_recipients() {
    use std::os::unix::fs::MetadataExt;
    let dir = PluginDir::new("hostile-many-copies");
    let host = dir.start();
    let data = dir.path().join("data");
    let server = serve(&host, &data, |_| {});
    const RECIPIENTS: usize = 400;
    let body = format!(
        "Subject: big\r\n\r\n{}\r\n",
        "0123456789abcdef".repeat(128 * 1024)
    );
    let before = resident_bytes();
    let mut c = Client::greeted(server.local_addr());
    c.command("EHLO big.example", "250");
    c.command("MAIL FROM:<a@big.example>", "250");
    for n in 0..RECIPIENTS {
        c.command(&format!("RCPT TO:<r{n}@big.example>"), "250");
    }
    c.command("DATA", "354");
    c.send(body.as_bytes());
    c.send(b".\r\n");
    c.expect("250");
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown < 128 * 1024 * 1024,
        "resident memory grew {grown} bytes for {RECIPIENTS} recipients of 2 MB"
    );
    let stored = stored_with_mime(&data, "inbox");
    assert_eq!(stored.len(), RECIPIENTS);
    assert!(stored.iter().all(|(_, mime)| mime == body.as_bytes()));
    let inodes: std::collections::HashSet<u64> = std::fs::read_dir(data.join("mime"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().ino())
        .collect();
    assert_eq!(inodes.len(), 1, "one file on disk, one name per message");
}

/// What `serve` accepted goes to the relay byte for byte — 8-bit bytes, a
/// NUL, one DATA for three recipients — and the MIME kept apart for them
/// goes with their final results.
#[test]
fn accepted_bytes_are_delivered_byte_for_byte() {
    use mq_e2e::{spawn_serve, Sink};
    let dir = PluginDir::new("hostile-bytes-delivered");
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    let data = dir.path().join("data");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let relay = sink.relay();
    let (mut child, _stderr, addr) = spawn_serve(&[
        "--relay".as_ref(),
        relay.as_ref(),
        "--plugins".as_ref(),
        plugins.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--quiet".as_ref(),
    ]);
    let body: &[u8] = b"Subject: caf\xe9\r\nX-Nul: a\x00b\r\n\r\n\xff\xfe 8-bit \xe9t\xe9\r\n";
    let mut c = Client::greeted(addr);
    c.command("EHLO bytes.example", "250");
    c.command("MAIL FROM:<a@bytes.example> BODY=8BITMIME", "250");
    for n in 0..3 {
        c.command(&format!("RCPT TO:<r{n}@bytes.example>"), "250");
    }
    c.command("DATA", "354");
    c.send(body);
    c.send(b".\r\n");
    c.expect("250");
    c.command("QUIT", "221");

    let start = Instant::now();
    while json_files(&data.join("success")).len() < 3 {
        assert!(start.elapsed() < PATIENCE, "not delivered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let received = sink.received();
    assert_eq!(received.len(), 3);
    assert!(received.iter().all(|r| r.data == body), "{received:?}");
    for result in json_files(&data.join("success")) {
        assert!(result.get("key").is_none() && result.get("mime").is_none());
    }
    let kept = std::fs::read_dir(data.join("mime")).unwrap().count();
    assert_eq!(kept, 0, "the MIME went with the results");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    mq_e2e::wait_bounded(&mut child, "serve after SIGTERM");
}

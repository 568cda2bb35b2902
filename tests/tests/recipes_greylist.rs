//! The greylisting recipe (`examples/greylist`) in `mq-host serve`, with
//! real SMTP sessions and a real redis-server: a first attempt gets
//! `451 4.7.1` and leaves a Redis key with a TTL, a retry within the grey
//! period is still refused, one after it passes (and the triplet is kept
//! for longer); when Redis is down, stopped or silent, recipients are
//! accepted ungreylisted with a log line (fail open), and greylisting
//! resumes when it is back. A bad setting stops `serve`, naming it.

use mq_e2e::redis::Redis;
use mq_e2e::served::Served;
use mq_e2e::*;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const WINDOW: u64 = 3600;
const PASS_TTL: u64 = 86_400;

/// `serve` with only the greylist plugin, on one worker (so the "Redis is
/// down" state the plugin keeps per worker is the one every session sees).
fn serve(dir: &PluginDir, redis: &str, timeout_ms: &str) -> Served {
    let so = dir.add("10-greylist.so", &plugin_so("mq-example-greylist"), "");
    let data = dir.path().join("data");
    let args = [
        OsStr::new("--workers"),
        OsStr::new("1"),
        OsStr::new("--data-dir"),
        data.as_os_str(),
        OsStr::new("--plugin"),
        so.as_os_str(),
    ];
    let served = Served::start(
        &[
            ("MQ_GREYLIST_REDIS", redis),
            ("MQ_GREYLIST_DELAY", "300"),
            ("MQ_GREYLIST_WINDOW", &WINDOW.to_string()),
            ("MQ_GREYLIST_PASS_TTL", &PASS_TTL.to_string()),
            ("MQ_GREYLIST_TIMEOUT_MS", timeout_ms),
        ],
        &args,
    );
    served.wait_for_log("the plugin's start line", |log| {
        log.contains(&format!(
            "greylisting with Redis at {redis}: a retry passes after 300 s"
        ))
    });
    served
}

/// One SMTP client session, command by command.
struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    /// Connects, reads the greeting and says EHLO.
    fn open(addr: SocketAddr) -> Smtp {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut smtp = Smtp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        assert!(smtp.reply().starts_with("220"));
        assert!(smtp.command("EHLO client.test").starts_with("250"));
        smtp
    }

    /// The last line of the next reply.
    fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            assert!(!line.is_empty(), "the server closed the connection");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_owned();
            }
        }
    }

    fn command(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.reply()
    }

    /// A transaction from `from` to each of `to`: the RCPT replies.
    fn rcpts(&mut self, from: &str, to: &[&str]) -> Vec<String> {
        assert!(self.command("RSET").starts_with("250"));
        assert!(self
            .command(&format!("MAIL FROM:<{from}>"))
            .starts_with("250"));
        to.iter()
            .map(|rcpt| self.command(&format!("RCPT TO:<{rcpt}>")))
            .collect()
    }
}

fn greylisted(rcpt: &str) -> String {
    format!("451 4.7.1 <{rcpt}>: greylisted, please try again later")
}

fn accepted(reply: &str) -> bool {
    reply.starts_with("250")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A RESP integer reply, e.g. from TTL.
fn integer(reply: &str) -> i64 {
    reply
        .strip_prefix(':')
        .and_then(|r| r.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("not an integer reply: {reply:?}"))
}

/// A RESP bulk string reply's value.
fn bulk(reply: &str) -> String {
    let (_, value) = reply
        .split_once("\r\n")
        .unwrap_or_else(|| panic!("{reply:?}"));
    value.trim_end().to_owned()
}

#[test]
fn a_first_attempt_is_greylisted_and_a_retry_after_the_grey_period_passes() {
    let redis = Redis::start();
    let dir = PluginDir::new("greylist-pass");
    let served = serve(&dir, &redis.addr(), "2000");
    let key = "mq:greylist:127.0.0.0/24|orders@shop.example|b@example.net";

    let before = unix_now();
    let mut smtp = Smtp::open(served.addr);
    // The sender is compared parsed and in lower case.
    let replies = smtp.rcpts("Orders@Shop.Example", &["b@example.net", "c@example.net"]);
    assert_eq!(
        replies,
        [greylisted("b@example.net"), greylisted("c@example.net")]
    );
    let ttl = integer(&redis.command(&["TTL", key]));
    assert!(ttl > 0 && ttl <= WINDOW as i64, "TTL {ttl}");
    let first: u64 = bulk(&redis.command(&["GET", key])).parse().unwrap();
    assert!((before..=unix_now()).contains(&first), "{first}");

    // A retry within the grey period is refused again, and does not move
    // the first attempt.
    let replies = smtp.rcpts("orders@shop.example", &["b@example.net"]);
    assert_eq!(replies, [greylisted("b@example.net")]);
    assert_eq!(bulk(&redis.command(&["GET", key])), first.to_string());

    // The grey period passes: the first attempt is moved 300 s back.
    let earlier = (first - 300).to_string();
    assert_eq!(redis.command(&["SET", key, &earlier, "KEEPTTL"]), "+OK\r\n");
    let replies = smtp.rcpts("orders@shop.example", &["b@example.net", "c@example.net"]);
    assert!(accepted(&replies[0]), "{replies:?}\n{}", served.log());
    assert_eq!(replies[1], greylisted("c@example.net"), "another triplet");
    assert!(smtp.command("DATA").starts_with("354"));
    let stored = smtp.command("Subject: passed\r\n\r\nhello\r\n.");
    assert!(stored.contains("for b@example.net"), "{stored}");
    // A triplet that passed is kept for PASS_TTL, and keeps passing.
    let ttl = integer(&redis.command(&["TTL", key]));
    assert!(ttl > WINDOW as i64 && ttl <= PASS_TTL as i64, "TTL {ttl}");
    let replies = smtp.rcpts("orders@shop.example", &["b@example.net"]);
    assert!(accepted(&replies[0]), "{replies:?}");

    // Another sender to the same recipient, and the null sender, are
    // triplets of their own.
    assert_eq!(
        smtp.rcpts("someone@else.example", &["b@example.net"]),
        [greylisted("b@example.net")]
    );
    assert_eq!(
        smtp.rcpts("", &["b@example.net"]),
        [greylisted("b@example.net")]
    );
    assert_eq!(
        integer(&redis.command(&["EXISTS", "mq:greylist:127.0.0.0/24||b@example.net"])),
        1
    );
    assert_eq!(smtp.command("QUIT").get(..3), Some("221"));

    let (status, log) = served.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("Redis unavailable"), "{log}");
    let counters = served_counters(&log);
    assert_eq!(counters.get("messages_stored"), 1, "{counters}");
}

fn served_counters(log: &str) -> mq_e2e::served::Counters {
    mq_e2e::served::Counters::last(log).unwrap_or_else(|| panic!("no counters in\n{log}"))
}

#[test]
fn when_redis_is_down_recipients_pass_ungreylisted_with_a_log_line() {
    let redis = Redis::start();
    let port = redis.port();
    let dir = PluginDir::new("greylist-down");
    let served = serve(&dir, &redis.addr(), "2000");
    let mut smtp = Smtp::open(served.addr);
    assert_eq!(
        smtp.rcpts("a@shop.example", &["b@example.net"]),
        [greylisted("b@example.net")]
    );

    // Redis stops: the pooled connection breaks, new ones are refused.
    redis.stop();
    for _ in 0..2 {
        let replies = smtp.rcpts("a@shop.example", &["new@example.net"]);
        assert!(
            accepted(&replies[0]),
            "fails open: {replies:?}\n{}",
            served.log()
        );
    }
    served.wait_for_log("the outage's log line", |log| {
        log.contains("Redis unavailable (")
            && log.contains("accepting without greylisting until it answers")
    });
    assert_eq!(
        served.log().matches("Redis unavailable").count(),
        1,
        "once per outage:\n{}",
        served.log()
    );

    // Redis is back (empty): greylisting resumes, with a line saying so.
    let redis = Redis::start_on(port);
    assert_eq!(
        smtp.rcpts("a@shop.example", &["new@example.net"]),
        [greylisted("new@example.net")]
    );
    served.wait_for_log("the recovery's log line", |log| {
        log.contains("Redis answers again; greylisting resumed")
    });
    assert_eq!(integer(&redis.command(&["DBSIZE"])), 1);
    drop(smtp);
    let (status, log) = served.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn a_redis_that_does_not_answer_is_down_after_the_timeout() {
    // Accepts connections and reads, but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (stream, _) = silent.accept().unwrap();
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut &stream, &mut sink);
    });
    let dir = PluginDir::new("greylist-silent");
    let served = serve(&dir, &addr, "200");
    let mut smtp = Smtp::open(served.addr);
    let replies = smtp.rcpts("a@shop.example", &["b@example.net"]);
    assert!(accepted(&replies[0]), "{replies:?}\n{}", served.log());
    served.wait_for_log("the timeout's log line", |log| {
        log.contains("Redis unavailable (no answer: timed out after 200ms)")
    });
    drop(smtp);
    let (status, log) = served.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn a_bad_setting_stops_serve_with_its_name() {
    let dir = PluginDir::new("greylist-bad-setting");
    let so = dir.add("10-greylist.so", &plugin_so("mq-example-greylist"), "");
    let mut child = std::process::Command::new(host_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--plugin")
        .arg(&so)
        .env("MQ_GREYLIST_DELAY", "5m")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mq-host serve");
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
        stderr
    });
    // A serve that started anyway is killed after 60 s and fails the test.
    let status = wait_bounded(&mut child, "mq-host serve with a bad setting");
    let stderr = reader.join().unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("mq_initialize failed, so the host does not start"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`MQ_GREYLIST_DELAY` is `5m`, not a number"),
        "{stderr}"
    );
}

//! The Redis allow-list against a real redis-server, on the test host's
//! virtual clock: while the plugin's socket is watched the clock runs at
//! the real rate, so a slow server still answers before the plugin's
//! 500 ms timeout; a server that never answers runs into it (451).
//!
//! Needs `redis-server` (`scripts/test-deps.sh` installs it). The plugin
//! reads `MQ_REDIS_ADDR` once per loaded copy, so one test sets it before
//! each host it starts.

use mq_plugin_test::{Flow, TestHost};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server on a free loopback port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "this test needs redis-server ({e}): install it with `apt-get install \
                     redis-server` or run scripts/test-deps.sh"
                )
            });
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    fn sadd(&self, set: &str, member: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let args = ["SADD", set, member];
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request += &format!("${}\r\n{a}\r\n", a.len());
        }
        s.write_all(request.as_bytes()).unwrap();
        let mut reply = [0u8; 16];
        let n = s.read(&mut reply).unwrap();
        assert!(reply[..n].starts_with(b":"), "{:?}", &reply[..n]);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn members_go_on_strangers_are_refused_and_a_silent_redis_defers() {
    let redis = Redis::start();
    redis.sadd("mq:allowed-recipients", "@example.com");
    redis.sadd("mq:allowed-recipients", "boss@partner.example");
    std::env::set_var("MQ_REDIS_ADDR", format!("127.0.0.1:{}", redis.port));

    let host = TestHost::new();
    let mut smtp = host.smtp();
    for member in ["alice@example.com", "Boss@Partner.Example"] {
        let step = smtp.rcpt_to(member);
        step.assert_accepted()
            .assert_flow("mq-example-redis-allowlist", Flow::Continue);
    }
    smtp.rcpt_to("victim@evil.example")
        .assert_reply(550, "<victim@evil.example>: recipient not allowed");
    // Refused by its parsed form, without asking Redis.
    smtp.rcpt_to("victim@evil.net\n@example.com")
        .assert_reply(553, "recipient is not a valid mailbox");
    drop(smtp);
    drop(host);

    // A slow "Redis" that answers 50 ms (real time) after the request:
    // while the plugin's socket is watched the virtual clock does not jump
    // to the 500 ms timeout, so the answer arrives in time.
    let slow = TcpListener::bind("127.0.0.1:0").unwrap();
    std::env::set_var("MQ_REDIS_ADDR", slow.local_addr().unwrap().to_string());
    let server = std::thread::spawn(move || {
        let (mut peer, _) = slow.accept().unwrap();
        let mut request = Vec::new();
        let mut chunk = [0u8; 512];
        while request.windows(9).filter(|w| w == b"SISMEMBER").count() < 2 {
            let n = peer.read(&mut chunk).unwrap();
            assert!(n > 0, "the plugin closed the connection");
            request.extend_from_slice(&chunk[..n]);
        }
        std::thread::sleep(Duration::from_millis(50));
        peer.write_all(b":0\r\n:1\r\n").unwrap();
        peer
    });
    let host = TestHost::new();
    let step = host.smtp().rcpt_to("carol@example.net");
    step.assert_accepted()
        .assert_flow("mq-example-redis-allowlist", Flow::Continue);
    assert!(
        step.took_control("mq-example-redis-allowlist"),
        "it waited for the answer"
    );
    drop(server.join().unwrap());
    drop(host);

    // A "Redis" that accepts the connection and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    std::env::set_var("MQ_REDIS_ADDR", silent.local_addr().unwrap().to_string());
    let host = TestHost::new();
    let step = host.smtp().rcpt_to("alice@example.com");
    step.assert_reply(451, "try again later");
    assert!(
        step.plugin_log()
            .iter()
            .any(|l| l.contains("Redis did not answer for alice@example.com")),
        "{:?}",
        step.plugin_log()
    );
    assert!(
        step.elapsed() >= Duration::from_millis(500),
        "{:?}",
        step.elapsed()
    );
}

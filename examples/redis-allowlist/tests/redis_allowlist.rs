//! The Redis allow-list against a real redis-server, on the test host's
//! virtual clock: while the plugin's socket is watched the clock runs at
//! the real rate, so a slow server still answers before the plugin's
//! 500 ms timeout; a server that never answers runs into it (451).
//!
//! Needs `redis-server` (`scripts/test-deps.sh` installs it). The plugin
//! reads `MQ_REDIS_ADDR` once per loaded copy, so one test sets it before
//! each host it starts.

use mq_plugin_test::redis::RedisServer as Redis;
use mq_plugin_test::{Flow, TestHost};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

#[test]
fn members_go_on_strangers_are_refused_and_a_silent_redis_defers() {
    let redis = Redis::start();
    assert_eq!(
        redis.command(&["SADD", "mq:allowed-recipients", "@example.com"]),
        ":1\r\n"
    );
    assert_eq!(
        redis.command(&["SADD", "mq:allowed-recipients", "boss@partner.example"]),
        ":1\r\n"
    );
    std::env::set_var("MQ_REDIS_ADDR", format!("127.0.0.1:{}", redis.port()));

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

//! Greylisting against a real redis-server, in the test host: a first
//! attempt and a retry within the grey period get 451, a retry after it
//! passes (and its key gets the pass TTL), and with Redis down the plugin
//! fails open. The test host's connections have no socket: their network
//! in the key is `unknown` (the e2e test `recipes_greylist` covers real
//! client addresses).
//!
//! Needs `redis-server` (`scripts/test-deps.sh` installs it). The grey
//! period is measured in Unix seconds kept in Redis: rather than wait
//! five minutes, a test writes an earlier first attempt into the key.
//! The plugin reads its settings in `initialize`, when a host starts;
//! tests in one process share the environment, so each test holds `ENV`
//! while it sets them and starts its host.

use mq_plugin_test::redis::RedisServer;
use mq_plugin_test::{Flow, TestHost};
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

static ENV: Mutex<()> = Mutex::new(());

/// A test host whose plugin uses the Redis at `port`.
fn host(port: u16) -> TestHost {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("MQ_GREYLIST_REDIS", format!("127.0.0.1:{port}"));
    std::env::set_var("MQ_GREYLIST_DELAY", "300");
    std::env::set_var("MQ_GREYLIST_PASS_TTL", "86400");
    TestHost::new()
}

/// The greylisting keys `redis` holds.
fn greylist_keys(redis: &RedisServer) -> Vec<String> {
    redis
        .command(&["KEYS", "mq:greylist:*"])
        .lines()
        .filter(|l| l.starts_with("mq:"))
        .map(str::to_owned)
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const GREYLISTED: &str = "4.7.1 <alice@example.org>: greylisted, please try again later";

#[test]
fn first_attempts_wait_and_retries_after_the_grey_period_pass() {
    let redis = RedisServer::start();
    let host = host(redis.port());
    let mut smtp = host.smtp();
    smtp.connect().assert_accepted();
    smtp.mail_from("Shop@Example.com").assert_accepted();
    smtp.rcpt_to("alice@example.org")
        .assert_reply(451, GREYLISTED)
        .assert_flow("mq-example-greylist", Flow::Complete);
    let keys = greylist_keys(&redis);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = &keys[0];
    // The test host's connections have no socket, so no client network.
    assert_eq!(
        key,
        "mq:greylist:unknown|shop@example.com|alice@example.org"
    );
    // A retry within the grey period: still greylisted.
    smtp.rcpt_to("alice@example.org")
        .assert_reply(451, GREYLISTED);
    // Another sender to the same recipient is another triplet.
    smtp.mail_from("news@example.com").assert_accepted();
    smtp.rcpt_to("alice@example.org").assert_refused(451);
    assert_eq!(greylist_keys(&redis).len(), 2);

    // The first attempt of the first triplet was 301 s ago: the retry passes.
    let earlier = (unix_now() - 301).to_string();
    assert!(redis.command(&["SET", key, &earlier]).starts_with("+OK"));
    smtp.mail_from("shop@example.com").assert_accepted();
    smtp.rcpt_to("ALICE@example.org")
        .assert_accepted()
        .assert_flow("mq-example-greylist", Flow::Continue);
    // Now it is known for the pass TTL.
    let ttl: u64 = redis.command(&["TTL", key]).trim()[1..].parse().unwrap();
    assert!(ttl > 86_000 && ttl <= 86_400, "{ttl}");
    let log = host.plugin_log();
    assert!(log.iter().any(|l| l.contains("(FirstSeen)")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("(TooEarly")), "{log:?}");
}

#[test]
fn with_redis_down_mail_goes_on_ungreylisted_and_it_says_so_once() {
    let host = host(free_port());
    let mut smtp = host.smtp();
    smtp.mail_from("shop@example.com").assert_accepted();
    for rcpt in ["alice@example.org", "bob@example.org"] {
        smtp.rcpt_to(rcpt)
            .assert_accepted()
            .assert_flow("mq-example-greylist", Flow::Continue);
    }
    let warnings: Vec<String> = host
        .plugin_log()
        .into_iter()
        .filter(|l| l.contains("Redis unavailable"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("accepting without greylisting"));
}

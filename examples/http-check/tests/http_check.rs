//! The HTTP check against a local HTTP server thread (std's TcpListener):
//! the service's verdicts, the request it gets, and the 451 fallback when
//! the service is down, answers nonsense, or does not answer in time.
//!
//! The plugin reads `MQ_HTTP_CHECK_ADDR` and `MQ_HTTP_CHECK_TIMEOUT_MS`
//! once per loaded copy, at its first hook; tests in one process share the
//! environment, so each test holds `ENV` while it sets them and starts its
//! host.
//!
//! While a request is in flight the plugin's socket is watched, so the
//! test host's virtual clock runs at the real rate (it cannot know when
//! the server will answer): the timeout case waits its 200 ms for real.

use mq_plugin_test::{Flow, TestHost};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};

static ENV: Mutex<()> = Mutex::new(());

/// Sets the plugin's settings for the hosts started while the guard lives.
fn settings(addr: SocketAddr, timeout_ms: u64) -> MutexGuard<'static, ()> {
    let guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("MQ_HTTP_CHECK_ADDR", addr.to_string());
    std::env::set_var("MQ_HTTP_CHECK_TIMEOUT_MS", timeout_ms.to_string());
    guard
}

/// A policy service: `allowed` recipients get 200, `blocked` ones 403,
/// `broken` ones 500, `garbage` ones an answer that is not HTTP; every
/// request line is kept.
fn service() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let line = head.lines().next().unwrap_or_default().to_owned();
            let answer: &[u8] = if line.contains("allowed") {
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
            } else if line.contains("blocked") {
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
            } else if line.contains("broken") {
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
            } else {
                b"-ERR not http\r\n"
            };
            seen.lock().unwrap().push(head);
            let _ = stream.write_all(answer);
        }
    });
    (addr, requests)
}

#[test]
fn the_services_verdict_decides() {
    let (addr, requests) = service();
    let guard = settings(addr, 5000);
    let host = TestHost::new();
    let mut smtp = host.smtp();
    smtp.rcpt_to("allowed+1@example.com")
        .assert_accepted()
        .assert_flow("mq-example-http-check", Flow::Continue);
    drop(guard);
    smtp.rcpt_to("blocked@example.com")
        .assert_reply(
            550,
            "5.7.1 <blocked@example.com>: recipient refused by policy",
        )
        .assert_flow("mq-example-http-check", Flow::Complete);
    for odd in ["broken@example.com", "garbage@example.com"] {
        smtp.rcpt_to(odd)
            .assert_reply(451, "4.3.0 recipient check unavailable, try again later");
    }
    let requests = requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 4, "{requests:?}");
    assert!(
        requests[0].starts_with("GET /check?rcpt=allowed%2B1%40example.com HTTP/1.1\r\n"),
        "{}",
        requests[0]
    );
    assert!(
        requests[0].contains(&format!("\r\nHost: {addr}\r\n")),
        "{}",
        requests[0]
    );
    let log = host.plugin_log();
    assert!(
        log.iter().any(|l| l.contains("the service answered 500")),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l.contains("not HTTP")), "{log:?}");
}

#[test]
fn a_recipient_that_is_no_mailbox_gets_553_without_a_request() {
    let (addr, requests) = service();
    let _guard = settings(addr, 5000);
    let host = TestHost::new();
    host.smtp().rcpt_to("not a mailbox").assert_refused(553);
    assert!(requests.lock().unwrap().is_empty());
}

#[test]
fn a_service_that_is_down_defers_the_recipient() {
    // A port nobody listens on any more.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _guard = settings(addr, 5000);
    let host = TestHost::new();
    host.smtp()
        .rcpt_to("allowed@example.com")
        .assert_reply(451, "4.3.0 recipient check unavailable, try again later")
        .assert_flow("mq-example-http-check", Flow::Complete);
    let log = host.plugin_log();
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("connecting to {addr}"))),
        "{log:?}"
    );
}

#[test]
fn a_service_that_does_not_answer_in_time_defers_the_recipient() {
    // Accepts connections and reads, but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut open: Vec<TcpStream> = Vec::new();
        for stream in listener.incoming().flatten() {
            open.push(stream);
        }
    });
    let _guard = settings(addr, 200);
    let host = TestHost::new();
    host.smtp()
        .rcpt_to("allowed@example.com")
        .assert_reply(451, "4.3.0 recipient check unavailable, try again later");
    let log = host.plugin_log();
    assert!(
        log.iter()
            .any(|l| l.contains("no answer about allowed@example.com within 200ms")),
        "{log:?}"
    );
}

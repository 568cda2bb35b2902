//! The HTTP recipe (`examples/http-check`) in the real host against a real
//! HTTP server on loopback (a std listener in this test): allow, deny, a
//! service that answers an error, one that does not answer in time, and
//! one that is down — the last three get the documented `451` fallback.

use mq_e2e::*;
use mq_host::{ChainEnd, Direction, Event, EventResult, Host};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

const TEMPFAIL: &str = "451 4.3.0 recipient check unavailable, try again later";

/// A small HTTP service: `GET /check?rcpt=...` answered by the recipient's
/// local part (`allowed` 200, `denied` 403, `broken` 500, `slow`: no
/// answer until the test releases it). Records each request line.
struct Service {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    /// Dropping it releases the slow answers.
    release: Option<mpsc::Sender<()>>,
    listener: Option<TcpListener>,
}

impl Service {
    fn start() -> Service {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (release, released) = mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let accepting = listener.try_clone().unwrap();
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            for client in accepting.incoming() {
                let Ok(client) = client else { return };
                let seen = Arc::clone(&seen);
                let released = Arc::clone(&released);
                std::thread::spawn(move || answer(client, &seen, &released));
            }
        });
        Service {
            port,
            requests,
            release: Some(release),
            listener: Some(listener),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Stops accepting: the port refuses connections from now on.
    fn shut_down(&mut self) {
        let listener = self.listener.take().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        // SAFETY: `fd` is the listener's open socket; shutdown only ends
        // its accepting (the clone in the thread sees an error and returns).
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        drop(listener);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        drop(self.release.take());
    }
}

fn answer(mut client: TcpStream, seen: &Mutex<Vec<String>>, released: &Mutex<mpsc::Receiver<()>>) {
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request).into_owned();
    let line = text.lines().next().unwrap_or("").to_owned();
    seen.lock().unwrap().push(line.clone());
    let rcpt = line
        .split("rcpt=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or("");
    let status = match rcpt.split("%40").next().unwrap_or("") {
        "allowed" | "a%2Bb" => "200 OK",
        "denied" => "403 Forbidden",
        "slow" => {
            // Holds the answer until the test is done with it.
            let _ = released.lock().unwrap().recv();
            "200 OK"
        }
        _ => "500 Internal Server Error",
    };
    let _ = write!(
        client,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

fn rcpt(host: &Host, email: &str) -> EventResult {
    host.run_event(Direction::Incoming, Event::RcptTo(email.into()))
        .expect("run smtp_in_rcptto")
}

#[test]
fn recipients_are_checked_by_an_http_service() {
    let mut service = Service::start();
    std::env::set_var("MQ_HTTP_CHECK_ADDR", format!("127.0.0.1:{}", service.port));
    // Generous, so a loaded machine's answers come in time; the slow case
    // never answers, so only this timeout ends it.
    std::env::set_var("MQ_HTTP_CHECK_TIMEOUT_MS", "5000");
    let dir = PluginDir::new("http-check");
    dir.add("10-http-check.so", &plugin_so("mq-example-http-check"), "");
    dir.add("20-probe.so", &c_probe(), "");
    let host = dir.builder().workers(2).start().unwrap();

    // Allowed: the hook took control (the request is asynchronous) and
    // the chain went on.
    for ok in ["allowed@example.com", "a+b@example.com"] {
        let r = rcpt(&host, ok);
        assert_eq!(r.end, ChainEnd::Finished, "{ok}: {:#?}", r.log);
        assert!(r.calls[0].took_control, "the check is asynchronous");
        assert_eq!(called(&r), ["10-http-check", "20-probe"]);
    }
    // Denied by the service.
    let r = rcpt(&host, "denied@example.com");
    assert_eq!(
        r.reply().as_deref(),
        Some("550 5.7.1 <denied@example.com>: recipient refused by policy")
    );
    assert_eq!(
        r.end,
        ChainEnd::Completed {
            plugin: "10-http-check".into()
        }
    );
    // The service fails: the fallback.
    let r = rcpt(&host, "broken@example.com");
    assert_eq!(r.reply().as_deref(), Some(TEMPFAIL));
    assert!(
        r.log
            .iter()
            .any(|l| l.text.contains("the service answered 500")),
        "{:#?}",
        r.log
    );
    // The service does not answer: the timeout ends the wait, the fallback.
    let r = rcpt(&host, "slow@example.com");
    assert_eq!(r.reply().as_deref(), Some(TEMPFAIL));
    assert!(
        r.log.iter().any(|l| l
            .text
            .contains("no answer about slow@example.com within 5s")),
        "{:#?}",
        r.log
    );
    // Not a mailbox: refused without a request.
    let r = rcpt(&host, "victim@evil.net\n@example.com");
    assert!(
        r.reply().unwrap().starts_with("553 5.1.3 "),
        "{:?}",
        r.reply()
    );

    // What the service saw: one request each, the recipient percent-encoded.
    let mut seen = service.requests();
    seen.sort();
    assert_eq!(
        seen,
        [
            "GET /check?rcpt=a%2Bb%40example.com HTTP/1.1",
            "GET /check?rcpt=allowed%40example.com HTTP/1.1",
            "GET /check?rcpt=broken%40example.com HTTP/1.1",
            "GET /check?rcpt=denied%40example.com HTTP/1.1",
            "GET /check?rcpt=slow%40example.com HTTP/1.1",
        ]
    );

    // The service is down: the fallback, with the cause in the log.
    service.shut_down();
    let r = rcpt(&host, "allowed@example.com");
    assert_eq!(r.reply().as_deref(), Some(TEMPFAIL));
    assert!(
        r.log.iter().any(|l| l
            .text
            .contains("cannot check allowed@example.com: connecting to")),
        "{:#?}",
        r.log
    );
    drop(host);
}

//! Example plugin: asks an HTTP service about each recipient, from an
//! async `smtp_in_rcptto` hook.
//!
//! For `RCPT TO:<user@domain>` it sends
//!
//! ```text
//! GET /check?rcpt=user%40domain HTTP/1.1
//! ```
//!
//! to the service at `MQ_HTTP_CHECK_ADDR` (default `127.0.0.1:8080`) and
//! decides by the status of the answer:
//!
//! | the service answers          | the client gets                                   |
//! |------------------------------|---------------------------------------------------|
//! | `200` or `204`               | the chain goes on (`250` unless a later plugin objects) |
//! | `403` or `404`               | `550 5.7.1 <user@domain>: recipient refused by policy` |
//! | anything else, no answer within `MQ_HTTP_CHECK_TIMEOUT_MS` (default 1000), no connection, an answer that is not HTTP | `451 4.3.0 recipient check unavailable, try again later` |
//!
//! The fallback is a temporary failure, not "fail open": while the service
//! is down or slow, mail waits in the senders' queues and comes back with
//! their retries, instead of reaching recipients the policy would refuse.
//! A recipient that is no mailbox gets `553 5.1.3` without a request.
//!
//! The request runs on the worker's event loop over
//! `mq_plugin::net::TcpStream`, so the worker serves its other sessions
//! meanwhile, and `mq_plugin::time::timeout` bounds the whole exchange
//! (connecting, writing, reading). The answer is parsed with `httparse`,
//! a small sans-io parser. A complete client stack such as reqwest (on
//! hyper and tokio) cannot be used here: it needs its own tokio runtime,
//! whose reactor is not MailerQ's loop — it would block the worker or run
//! threads beside it. One connection per check (`Connection: close`)
//! keeps the example short; pool them per context as the
//! `redis-allowlist` example does if the rate is high.

#![forbid(unsafe_code)]

use futures_util::{AsyncReadExt, AsyncWriteExt};
use mq_plugin::net::TcpStream;
use mq_plugin::prelude::*;
use mq_plugin::time::timeout;
use mq_plugin::Mailbox;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

mq_plugin::declare_plugin!();

/// The largest answer head (status line and headers) read.
pub const MAX_HEAD: usize = 16 * 1024;

struct Config {
    addr: Result<SocketAddr, String>,
    timeout: Duration,
}

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let addr = std::env::var("MQ_HTTP_CHECK_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
        let ms = std::env::var("MQ_HTTP_CHECK_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        Config {
            addr: addr
                .parse()
                .map_err(|e| format!("MQ_HTTP_CHECK_ADDR `{addr}` is not an address: {e}")),
            timeout: Duration::from_millis(ms),
        }
    })
}

/// What the service said about a recipient.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `200` or `204`.
    Allow,
    /// `403` or `404`.
    Deny,
}

/// `text` percent-encoded for a query value (RFC 3986: everything but the
/// unreserved characters).
pub fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The request for `mailbox`.
pub fn request(host: &SocketAddr, mailbox: &Mailbox) -> Vec<u8> {
    format!(
        "GET /check?rcpt={} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mq-example-http-check\r\nConnection: close\r\n\r\n",
        query_value(mailbox.as_str())
    )
    .into_bytes()
}

/// The verdict in an answer's head, `Ok(None)` if more bytes are needed,
/// `Err` for a status that is no verdict or bytes that are not HTTP.
pub fn verdict(head: &[u8]) -> Result<Option<Verdict>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => match response.code {
            Some(200 | 204) => Ok(Some(Verdict::Allow)),
            Some(403 | 404) => Ok(Some(Verdict::Deny)),
            code => Err(format!("the service answered {}", code.unwrap_or(0))),
        },
        Err(e) => Err(format!("the answer is not HTTP: {e}")),
    }
}

async fn ask(mailbox: &Mailbox) -> Result<Verdict, String> {
    let addr = config().addr.clone()?;
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .write_all(&request(&addr, mailbox))
        .await
        .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading from {addr}: {e}"))?;
        if n == 0 {
            return Err(format!("{addr} closed the connection before its answer"));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(verdict) = verdict(&head)? {
            return Ok(verdict);
        }
        if head.len() > MAX_HEAD {
            return Err(format!("the answer's head is over {MAX_HEAD} bytes"));
        }
    }
}

/// The fallback: a temporary failure; the sender retries later.
fn tempfail(conn: &Connection) -> Flow {
    conn.send(b"451 4.3.0 recipient check unavailable, try again later\r\n");
    Flow::Complete
}

#[mq_hook(smtp_in_rcptto)]
async fn check(conn: &Connection, rcpt: &Address) -> Flow {
    let mailbox = match rcpt.mailbox() {
        Ok(mailbox) => mailbox,
        Err(why) => {
            conn.send(format!("553 5.1.3 recipient is not a valid mailbox: {why}\r\n").as_bytes());
            return Flow::Complete;
        }
    };
    let limit = config().timeout;
    match timeout(limit, ask(&mailbox)).await {
        Ok(Ok(Verdict::Allow)) => Flow::Continue,
        Ok(Ok(Verdict::Deny)) => {
            log::info!("the service refused {mailbox}");
            conn.send(format!("550 5.7.1 <{mailbox}>: recipient refused by policy\r\n").as_bytes());
            Flow::Complete
        }
        Ok(Err(why)) => {
            log::warn!("cannot check {mailbox}: {why}; deferring it");
            tempfail(conn)
        }
        Err(_) => {
            log::warn!("no answer about {mailbox} within {limit:?}; deferring it");
            tempfail(conn)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_percent_encoded() {
        assert_eq!(query_value("a+b@example.com"), "a%2Bb%40example.com");
        assert_eq!(query_value("\"x y\"@ex.org"), "%22x%20y%22%40ex.org");
    }

    #[test]
    fn verdicts() {
        assert_eq!(
            verdict(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            Ok(Some(Verdict::Allow))
        );
        assert_eq!(
            verdict(b"HTTP/1.0 403 Forbidden\r\n\r\n"),
            Ok(Some(Verdict::Deny))
        );
        assert_eq!(verdict(b"HTTP/1.1 200 OK\r\nContent-"), Ok(None));
        assert!(verdict(b"HTTP/1.1 500 Oops\r\n\r\n")
            .unwrap_err()
            .contains("500"));
        assert!(verdict(b"-ERR redis\r\n").is_err());
    }
}

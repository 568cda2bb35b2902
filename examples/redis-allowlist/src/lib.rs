//! Example plugin: a recipient allow-list kept in Redis, checked
//! asynchronously (`smtp_in_rcptto`).
//!
//! For each `RCPT TO <user@domain>` it parses the address
//! ([`Address::mailbox`], RFC 5321's grammar) and asks Redis, in one
//! pipelined round trip, whether the set holds the address or `@` and its
//! parsed domain (lower case):
//!
//! ```text
//! SISMEMBER mq:allowed-recipients user@domain
//! SISMEMBER mq:allowed-recipients @domain
//! ```
//!
//! A member goes on; anyone else gets `550 5.7.1 <address>: recipient not
//! allowed` and the plugin completes the step. An address that does not
//! parse (`victim@evil.net\n@example.com`, a control character, a second
//! unquoted `@`, ...) gets `553 5.1.3 recipient is not a valid mailbox:
//! <cause>` without asking Redis. If Redis cannot answer within 500 ms the
//! recipient gets `451 4.3.0` (try again later) — the message is deferred,
//! never silently accepted.
//!
//! The lookup runs on the worker's event loop over
//! `mq_plugin::net::TcpStream` (`AsyncRead`/`AsyncWrite`), with the small
//! RESP client the Redis examples share (`examples/redis-resp`), so the
//! worker serves its other connections meanwhile. Each worker keeps idle Redis
//! connections in its context data for reuse.
//!
//! `MQ_REDIS_ADDR` (default `127.0.0.1:6379`) and `MQ_REDIS_SET` (default
//! `mq:allowed-recipients`) configure it.

#![forbid(unsafe_code)]

use mq_example_redis_resp::{pipeline, Reply};
use mq_plugin::net::TcpStream;
use mq_plugin::prelude::*;
use mq_plugin::time::timeout;
use mq_plugin::Mailbox;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

mq_plugin::declare_plugin!();

struct Config {
    addr: Result<SocketAddr, String>,
    set: String,
}

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let addr = std::env::var("MQ_REDIS_ADDR").unwrap_or_else(|_| "127.0.0.1:6379".into());
        Config {
            addr: addr
                .parse()
                .map_err(|e| format!("MQ_REDIS_ADDR `{addr}` is not an address: {e}")),
            set: std::env::var("MQ_REDIS_SET").unwrap_or_else(|_| "mq:allowed-recipients".into()),
        }
    })
}

/// Idle Redis connections of this worker.
#[derive(Default)]
struct Pool(RefCell<Vec<TcpStream>>);

/// The two set members that allow `mailbox`: the address and `@domain`,
/// in lower case.
pub fn members(mailbox: &Mailbox) -> [String; 2] {
    [
        mailbox.as_str().to_ascii_lowercase(),
        format!("@{}", mailbox.domain().to_ascii_lowercase()),
    ]
}

async fn is_allowed(stream: &mut TcpStream, set: &str, mailbox: &Mailbox) -> Result<bool, String> {
    let [email, domain] = members(mailbox);
    let replies = pipeline(
        stream,
        &[
            &[b"SISMEMBER", set.as_bytes(), email.as_bytes()],
            &[b"SISMEMBER", set.as_bytes(), domain.as_bytes()],
        ],
    )
    .await?;
    let mut allowed = false;
    for reply in replies {
        match reply {
            Reply::Integer(n) => allowed |= n == 1,
            other => return Err(format!("an unexpected reply {other:?}")),
        }
    }
    Ok(allowed)
}

async fn lookup(ctx: &Context, mailbox: &Mailbox) -> Result<bool, String> {
    let config = config();
    let pool = ctx.data_or_insert_with(Pool::default);
    let idle = pool.0.borrow_mut().pop();
    let mut stream = match idle {
        Some(stream) => stream,
        None => TcpStream::connect(config.addr.clone()?)
            .await
            .map_err(|e| format!("connecting to Redis: {e}"))?,
    };
    let allowed = is_allowed(&mut stream, &config.set, mailbox).await?;
    // Only a connection that answered cleanly goes back to the pool.
    pool.0.borrow_mut().push(stream);
    Ok(allowed)
}

#[mq_hook(smtp_in_rcptto)]
async fn check(ctx: &Context, conn: &Connection, rcpt: &Address) -> Flow {
    let mailbox = match rcpt.mailbox() {
        Ok(mailbox) => mailbox,
        Err(why) => {
            // The cause never quotes the address; the log gets it escaped.
            conn.send(format!("553 5.1.3 recipient is not a valid mailbox: {why}\r\n").as_bytes());
            let raw = String::from_utf8_lossy(rcpt.email_bytes().unwrap_or_default());
            log::info!("rejected {raw:?}: {why}");
            return Flow::Complete;
        }
    };
    match timeout(Duration::from_millis(500), lookup(ctx, &mailbox)).await {
        Ok(Ok(true)) => Flow::Continue,
        Ok(Ok(false)) => {
            conn.send(format!("550 5.7.1 <{mailbox}>: recipient not allowed\r\n").as_bytes());
            Flow::Complete
        }
        Ok(Err(why)) => {
            log::warn!("cannot check {mailbox} in Redis: {why}; deferring it");
            conn.send(b"451 4.3.0 recipient check unavailable, try again later\r\n");
            Flow::Complete
        }
        Err(elapsed) => {
            log::warn!("Redis did not answer for {mailbox}: {elapsed}; deferring it");
            conn.send(b"451 4.3.0 recipient check unavailable, try again later\r\n");
            Flow::Complete
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_the_address_and_its_parsed_domain() {
        let mailbox = Mailbox::parse("Boss@Partner.Example").unwrap();
        assert_eq!(
            members(&mailbox),
            ["boss@partner.example", "@partner.example"]
        );
        let mailbox = Mailbox::parse("\"victim@evil.net\"@Example.COM").unwrap();
        assert_eq!(members(&mailbox)[1], "@example.com");
    }
}

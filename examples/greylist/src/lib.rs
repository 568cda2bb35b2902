//! Example plugin: greylisting with Redis (`smtp_in_mailfrom`,
//! `smtp_in_rcptto`).
//!
//! The first time a (client network, sender, recipient) triplet is seen,
//! the recipient gets `451 4.7.1` — try again later. A real mail server
//! retries after some minutes; much spam software never does. A retry once
//! the grey period (`MQ_GREYLIST_DELAY`) has passed goes on to the next
//! plugin, and so does every later message of that triplet for as long as
//! it keeps coming (`MQ_GREYLIST_PASS_TTL` after the last one).
//!
//! Each triplet is one Redis key, `mq:greylist:<network>|<sender>|<recipient>`,
//! whose value is the Unix time (seconds) of the first attempt. Per
//! recipient, one pipelined round trip asks
//!
//! ```text
//! SET <key> <now> NX EX <window>     first attempt: remembered for <window>
//! GET <key>                          the time of the first attempt
//! ```
//!
//! and a triplet that passes gets `EXPIRE <key> <pass-ttl>`. The network is
//! the client's IPv4 /24 or IPv6 /64, as senders retry from another address
//! of their pool; sender and recipient are the parsed addresses in lower
//! case (the sender is empty for `<>`); a connection without a socket (the
//! in-process test host's) has the network [`NO_ADDRESS`]. A recipient
//! that does not parse is left to the other plugins (and the host) to
//! refuse.
//!
//! **When Redis is down** the plugin *fails open*: the recipient goes on,
//! ungreylisted, and the worker logs a warning once per outage ("Redis
//! unavailable ... accepting without greylisting") and a line when Redis
//! answers again. Greylisting only delays spam; refusing all mail because
//! its helper is down would turn a Redis outage into a mail outage. A
//! lookup that takes longer than `MQ_GREYLIST_TIMEOUT_MS` counts as down.
//!
//! The lookups run on the worker's event loop over
//! `mq_plugin::net::TcpStream`, so the worker serves its other connections
//! meanwhile; each worker keeps its idle Redis connections in its context
//! data. The sender of the transaction is kept in the connection's data.
//!
//! Settings, read from the environment in `initialize` (a bad value fails
//! it, and `mq-host` refuses to start):
//!
//! | variable                  | default          | meaning |
//! |---------------------------|------------------|---------|
//! | `MQ_GREYLIST_REDIS`       | `127.0.0.1:6379` | Redis' address |
//! | `MQ_GREYLIST_DELAY`       | `300`            | seconds before a retry passes |
//! | `MQ_GREYLIST_WINDOW`      | `14400`          | seconds a first attempt waits for its retry |
//! | `MQ_GREYLIST_PASS_TTL`    | `3110400` (36 d) | seconds a passed triplet stays known |
//! | `MQ_GREYLIST_TIMEOUT_MS`  | `500`            | how long a lookup may take |

#![forbid(unsafe_code)]

use mq_example_redis_resp::{self as resp, Reply};
use mq_plugin::net::TcpStream;
use mq_plugin::prelude::*;
use mq_plugin::time::timeout;
use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mq_plugin::declare_plugin!();

/// The plugin's settings (see the crate docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Redis' address.
    pub redis: SocketAddr,
    /// Seconds before a retry passes.
    pub delay: u64,
    /// Seconds a first attempt is remembered.
    pub window: u64,
    /// Seconds a passed triplet stays known.
    pub pass_ttl: u64,
    /// How long one lookup may take.
    pub timeout: Duration,
}

impl Config {
    /// Reads the settings through `var` (the environment in the plugin).
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        fn number(
            var: &impl Fn(&str) -> Option<String>,
            name: &str,
            default: u64,
        ) -> Result<u64, String> {
            match var(name) {
                None => Ok(default),
                Some(text) => text
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{name}` is `{text}`, not a number")),
            }
        }
        let redis = var("MQ_GREYLIST_REDIS").unwrap_or_else(|| "127.0.0.1:6379".into());
        let config = Config {
            redis: redis
                .parse()
                .map_err(|e| format!("`MQ_GREYLIST_REDIS` is `{redis}`, not an address: {e}"))?,
            delay: number(&var, "MQ_GREYLIST_DELAY", 300)?,
            window: number(&var, "MQ_GREYLIST_WINDOW", 14_400)?,
            pass_ttl: number(&var, "MQ_GREYLIST_PASS_TTL", 36 * 86_400)?,
            timeout: Duration::from_millis(number(&var, "MQ_GREYLIST_TIMEOUT_MS", 500)?),
        };
        if config.window <= config.delay || config.pass_ttl == 0 {
            return Err(format!(
                "`MQ_GREYLIST_WINDOW` ({}) must be longer than `MQ_GREYLIST_DELAY` ({}), \
                 and `MQ_GREYLIST_PASS_TTL` more than 0",
                config.window, config.delay
            ));
        }
        Ok(config)
    }
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// What a lookup decided for a triplet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Seen for the first time now: greylisted.
    FirstSeen,
    /// Seen before, but the grey period has `wait` seconds to go.
    TooEarly {
        /// Seconds until a retry passes.
        wait: u64,
    },
    /// Seen at least the grey period ago: passes.
    Passed,
}

/// The verdict from the replies to `SET .. NX` and `GET`, at `now`.
pub fn verdict(set: &Reply, get: &Reply, now: u64, delay: u64) -> Result<Verdict, String> {
    match (set, get) {
        (Reply::Simple(ok), _) if ok == "OK" => Ok(Verdict::FirstSeen),
        (Reply::Nil, Reply::Bulk(first)) => {
            let first: u64 = std::str::from_utf8(first)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| {
                    format!(
                        "the key holds {:?}, not a time",
                        String::from_utf8_lossy(first)
                    )
                })?;
            match first.saturating_add(delay).checked_sub(now) {
                Some(wait) if wait > 0 => Ok(Verdict::TooEarly { wait }),
                _ => Ok(Verdict::Passed),
            }
        }
        // The key expired between SET and GET: as good as new.
        (Reply::Nil, Reply::Nil) => Ok(Verdict::FirstSeen),
        other => Err(format!("unexpected replies {other:?}")),
    }
}

/// The client's network as it goes into a key: IPv4 /24, IPv6 /64.
pub fn network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => network(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The network of a client without an address (a connection that has no
/// socket, as in the in-process test host).
pub const NO_ADDRESS: &str = "unknown";

/// The Redis key of a triplet.
pub fn key(network: &str, sender: &str, recipient: &str) -> String {
    format!("mq:greylist:{network}|{sender}|{recipient}")
}

/// This transaction's sender, set at `MAIL FROM` (per-connection data).
#[derive(Default)]
struct Sender(RefCell<String>);

/// This worker's idle Redis connections and whether Redis is down
/// (per-context data).
#[derive(Default)]
struct Worker {
    idle: RefCell<Vec<TcpStream>>,
    down: Cell<bool>,
}

async fn lookup(worker: &Worker, config: &Config, key: &str) -> Result<Verdict, String> {
    let idle = worker.idle.borrow_mut().pop();
    let mut stream = match idle {
        Some(stream) => stream,
        None => TcpStream::connect(config.redis)
            .await
            .map_err(|e| format!("connecting to {}: {e}", config.redis))?,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (now_text, window) = (now.to_string(), config.window.to_string());
    let replies = resp::pipeline(
        &mut stream,
        &[
            &[
                b"SET",
                key.as_bytes(),
                now_text.as_bytes(),
                b"NX",
                b"EX",
                window.as_bytes(),
            ],
            &[b"GET", key.as_bytes()],
        ],
    )
    .await?;
    let verdict = verdict(&replies[0], &replies[1], now, config.delay)?;
    if verdict == Verdict::Passed {
        let ttl = config.pass_ttl.to_string();
        resp::pipeline(&mut stream, &[&[b"EXPIRE", key.as_bytes(), ttl.as_bytes()]]).await?;
    }
    // Only a connection that answered cleanly goes back to the pool.
    worker.idle.borrow_mut().push(stream);
    Ok(verdict)
}

#[mq_hook(initialize)]
fn load() -> Result<(), String> {
    let config = Config::read(|name| std::env::var(name).ok())?;
    log::info!(
        "greylisting with Redis at {}: a retry passes after {} s",
        config.redis,
        config.delay
    );
    let _ = CONFIG.set(config);
    Ok(())
}

#[mq_hook(smtp_in_mailfrom)]
fn remember_sender(conn: &Connection, from: &Address) -> Flow {
    let sender = match from.mailbox() {
        Ok(mailbox) => mailbox.as_str().to_ascii_lowercase(),
        // `<>` and anything unparsable: greylisted as the null sender.
        Err(_) => String::new(),
    };
    *conn.data_or_insert_with(Sender::default).0.borrow_mut() = sender;
    Flow::Continue
}

#[mq_hook(smtp_in_rcptto)]
async fn greylist(ctx: &Context, conn: &Connection, rcpt: &Address) -> Flow {
    let Some(config) = CONFIG.get() else {
        return Flow::Continue;
    };
    let Ok(mailbox) = rcpt.mailbox() else {
        return Flow::Continue;
    };
    let recipient = mailbox.as_str().to_ascii_lowercase();
    // A connection without a socket (mq-plugin-test's in-process
    // sessions) has no client address: all such clients are one network.
    let network = conn
        .peer_addr()
        .map_or_else(|_| NO_ADDRESS.to_owned(), |peer| network(peer.ip()));
    let sender = conn
        .data::<Sender>()
        .map(|s| s.0.borrow().clone())
        .unwrap_or_default();
    let key = key(&network, &sender, &recipient);
    let worker = ctx.data_or_insert_with(Worker::default);
    let outcome = match timeout(config.timeout, lookup(worker, config, &key)).await {
        Ok(outcome) => outcome,
        Err(elapsed) => Err(format!("no answer: {elapsed}")),
    };
    match outcome {
        Ok(verdict) => {
            if worker.down.replace(false) {
                log::info!("Redis answers again; greylisting resumed");
            }
            match verdict {
                Verdict::Passed => Flow::Continue,
                Verdict::FirstSeen | Verdict::TooEarly { .. } => {
                    log::info!("greylisted {key} ({verdict:?})");
                    conn.send(
                        format!("451 4.7.1 <{mailbox}>: greylisted, please try again later\r\n")
                            .as_bytes(),
                    );
                    Flow::Complete
                }
            }
        }
        Err(why) => {
            if !worker.down.replace(true) {
                log::warn!(
                    "Redis unavailable ({why}): accepting without greylisting until it answers"
                );
            }
            Flow::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(t: &str) -> Reply {
        Reply::Bulk(t.as_bytes().to_vec())
    }

    #[test]
    fn first_attempt_retry_too_early_and_passed() {
        let ok = Reply::Simple("OK".into());
        assert_eq!(
            verdict(&ok, &bulk("1000"), 1000, 300),
            Ok(Verdict::FirstSeen)
        );
        assert_eq!(
            verdict(&Reply::Nil, &bulk("1000"), 1100, 300),
            Ok(Verdict::TooEarly { wait: 200 })
        );
        assert_eq!(
            verdict(&Reply::Nil, &bulk("1000"), 1300, 300),
            Ok(Verdict::Passed)
        );
        assert_eq!(
            verdict(&Reply::Nil, &bulk("1000"), 9999, 300),
            Ok(Verdict::Passed)
        );
        assert_eq!(
            verdict(&Reply::Nil, &Reply::Nil, 1, 300),
            Ok(Verdict::FirstSeen)
        );
        assert!(verdict(&Reply::Nil, &bulk("soon"), 1, 300).is_err());
        assert!(verdict(&Reply::Integer(1), &Reply::Nil, 1, 300).is_err());
    }

    #[test]
    fn networks_group_a_senders_pool() {
        assert_eq!(network("192.0.2.77".parse().unwrap()), "192.0.2.0/24");
        assert_eq!(
            network("2001:db8:1:2:3::4".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(network("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.0/24");
    }

    #[test]
    fn settings_have_defaults_and_bad_ones_are_named() {
        let none = |_: &str| None;
        let config = Config::read(none).unwrap();
        assert_eq!(config.delay, 300);
        assert_eq!(config.redis, "127.0.0.1:6379".parse().unwrap());
        let bad = |name: &str| (name == "MQ_GREYLIST_DELAY").then(|| "5m".to_owned());
        assert_eq!(
            Config::read(bad).unwrap_err(),
            "`MQ_GREYLIST_DELAY` is `5m`, not a number"
        );
        let short = |name: &str| (name == "MQ_GREYLIST_WINDOW").then(|| "60".to_owned());
        assert!(Config::read(short).unwrap_err().contains("longer than"));
    }
}

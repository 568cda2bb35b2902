//! Delivery: messages from the outbox go over SMTP to a relay, with the
//! `smtp_out_data` and `smtp_out_sent` hooks at their MailerQ moments.
//!
//! The outbox is the `inbox/` directory under the data directory, next to
//! `local/` and `refused/` (written by [`serve`](crate::Host::serve)) and
//! the results: `success/`, `failures/` and `retry/`. An [`Outbox`] picks up every message
//! file in it when it opens, so nothing accepted before a crash or a restart
//! is lost, and takes new ones as `serve` stores them. [`run`] delivers them
//! with a few delivery threads, each one plain SMTP connection at a time:
//!
//! 1. connect, greeting, `EHLO` (`HELO` if the relay refuses it),
//!    `MAIL FROM:<envelope>`, `RCPT TO:<recipient>`, `DATA`;
//! 2. after the relay's `354` the connection is in the DATA state: the
//!    `smtp_out_data` chain runs on a worker (a plugin may hold control, or
//!    replace the MIME with `MQ_setMime`);
//! 3. the MIME is sent (line ends made CRLF, dot-stuffed, ended with
//!    `.`), then the `smtp_out_sent` chain runs, before the relay's reply is
//!    read;
//! 4. the reply decides: 2xx success, 4xx (or a network error, or a
//!    timeout) retry, 5xx failure.
//!
//! # Time limits
//!
//! No relay can hold a delivery thread for long, however it spreads its
//! bytes: connecting (to every address of the relay together) is bounded
//! by [`DeliveryConfig::connect_timeout`]; each reply, all its lines, and
//! the writing of each command by [`DeliveryConfig::reply_timeout`]; the
//! whole of the message's data by [`DeliveryConfig::send_timeout`]. The
//! socket's timeout is set to what is left of the step's deadline before
//! every read and write, so a relay that answers (or reads) one byte at a
//! time gains nothing. A step that runs out of time ends the attempt as a
//! retry whose `description` names the step and the limit, e.g. "the
//! relay's reply to EHLO timed out after 300 s (the reply timeout); 7
//! byte(s) of it had come"; the host counts it in `relay_timeouts`.
//! (Resolving the relay's name is left to the system resolver's own
//! timeouts; the `smtp_out_*` hooks are waited for as long as a plugin
//! holds them, as in MailerQ, unless a hold deadline is set.)
//!
//! The hooks run on the workers' event loops like every chain; the delivery
//! threads only wait for them, so a plugin that holds control never blocks
//! a worker.
//!
//! # Results
//!
//! A result is the message's MailerQ JSON with the attempt added to its
//! `results` array, and `mime` removed unless the message sets `keepmime`:
//!
//! ```json
//! {"envelope": "a@example.org", "recipient": "b@example.net",
//!  "results": [{"time": "2026-11-30T09:12:01Z", "relay": "127.0.0.1:2526",
//!               "attempt": 1, "status": "success", "state": "data",
//!               "code": 250, "extended": "2.0.0", "description": "OK queued"}]}
//! ```
//!
//! `status` is `success`, `failure` or `retry`; `state` names the step the
//! reply answered (`connect`, `greeting`, `ehlo`, `mailfrom`, `rcptto`,
//! `data`, `sent`); `code`, `extended` and `description` are the relay's
//! reply, or for an error without one, `description` says what happened.
//! Results are written durably to `success/`, `failures/` or `retry/` under
//! the data directory, and handed to the caller of [`run`].
//!
//! # Retries
//!
//! A temporary failure is retried after a delay that doubles from
//! [`DeliveryConfig::retry_delay`] up to [`DeliveryConfig::max_retry_delay`]
//! (or, if the message has a `retries` array, its entries in seconds, the
//! last one repeated), until `maxattempts` (the message's, or
//! [`DeliveryConfig::max_attempts`]) attempts were made; then it is a
//! failure. The message file stays in the outbox meanwhile, rewritten with
//! its `results` so far and its `nextattempt` (RFC 3339 UTC), which a
//! restart honours; other waiting messages are due at once.
//!
//! A message is delivered at least once: if the host dies after the relay
//! accepted a message but before its result was written, the message is
//! sent again after the restart (SMTP's at-least-once). A message whose
//! final result was written is never sent again: an outbox file whose
//! result exists is only removed. `DATA_DIR/.lock` keeps a second process
//! from delivering the same outbox.

//!
//! The files: this one the engine (delivery threads taking turns on the
//! outbox); `outbox` the queue of message files; `relay` the SMTP
//! conversation with the relay and the hooks at DATA; `timed` the relay's
//! socket with deadlines; `record` what an attempt leaves (results,
//! retries).

mod outbox;
mod record;
mod relay;
mod timed;

pub use outbox::{Outbox, Pickup, Until};
use outbox::{Tracked, LONGEST_DELAY};

use crate::api::Host;
use crate::clock;
use crate::observe::Counters;
use crate::observe::Priority;
use crate::store::{self, Queue};
use record::*;
use relay::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How messages are delivered.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// The relay, as `host:port`.
    pub relay: String,
    /// The name given in `EHLO`.
    pub helo: String,
    /// Delivery threads: how many messages are on their way at once.
    pub connections: usize,
    /// How long connecting to the relay may take, all its addresses
    /// together (default 30 s).
    pub connect_timeout: Duration,
    /// How long the relay may take for each reply, all its lines together
    /// (default 300 s); writing a command is bounded by it too.
    pub reply_timeout: Duration,
    /// How long sending the message's data (after the relay's `354` and
    /// the `smtp_out_data` hooks, up to the final `.`) may take in all
    /// (default 600 s: RFC 5321's wait for the end of the data). Protects
    /// against a relay that reads slowly; raise it for very large messages
    /// over slow links.
    pub send_timeout: Duration,
    /// The delay before the first retry; it doubles for each further one.
    pub retry_delay: Duration,
    /// The longest delay between retries.
    pub max_retry_delay: Duration,
    /// Attempts before a temporary failure becomes a failure, unless the
    /// message sets `maxattempts`.
    pub max_attempts: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            relay: "127.0.0.1:25".to_owned(),
            helo: "localhost".to_owned(),
            connections: 2,
            connect_timeout: Duration::from_secs(30),
            reply_timeout: Duration::from_secs(300),
            send_timeout: Duration::from_secs(600),
            retry_delay: Duration::from_secs(60),
            max_retry_delay: Duration::from_secs(3600),
            max_attempts: 5,
        }
    }
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The relay accepted the message.
    Success,
    /// The message cannot be delivered: a permanent error, or its attempts
    /// are used up.
    Failure,
    /// A temporary failure: the message will be tried again.
    Retry,
}

impl Status {
    /// `success`, `failure` or `retry`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Retry => "retry",
        }
    }

    fn queue(self) -> Queue {
        match self {
            Status::Success => Queue::Success,
            Status::Failure => Queue::Failures,
            Status::Retry => Queue::Retry,
        }
    }
}

/// A delivery result, as written under the data directory.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What became of the attempt.
    pub status: Status,
    /// The result JSON (the message with its `results`).
    pub result: Value,
    /// Where the result was written.
    pub file: PathBuf,
}

/// Delivers the outbox's messages with `config.connections` threads until
/// `until`; `on_result` gets every result (success, failure and retry) as
/// soon as it is written.
///
/// A message whose turn records nothing (its file cannot be read, its
/// result cannot be written, or the host is stopping) stays in the outbox:
/// with [`Until::Stopped`] it is due again after `config.retry_delay`; with
/// [`Until::Empty`] it waits for the next [`Outbox::open`].
pub fn run(
    host: &Host,
    outbox: &Outbox,
    config: &DeliveryConfig,
    until: Until,
    on_result: &(dyn Fn(&Outcome) + Sync),
) {
    std::thread::scope(|scope| {
        for n in 0..config.connections.max(1) {
            std::thread::Builder::new()
                .name(format!("mq-deliver-{n}"))
                .spawn_scoped(scope, || {
                    while let Some(file) = outbox.next(until) {
                        let _in_flight = InFlight(outbox);
                        take_turn(host, outbox, config, until, on_result, file);
                    }
                })
                .expect("a delivery thread starts");
        }
    });
}

/// Marks a message's turn as over, however it ends (a panic included).
pub(super) struct InFlight<'a>(&'a Outbox);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.done();
    }
}

fn take_turn(
    host: &Host,
    outbox: &Outbox,
    config: &DeliveryConfig,
    until: Until,
    on_result: &(dyn Fn(&Outcome) + Sync),
    file: PathBuf,
) {
    let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        deliver_file(host, outbox, config, &file)
    }))
    .unwrap_or_else(|_| {
        host.host_log(
            Priority::Critical,
            format!(
                "delivery: handling {} panicked (a host bug); it stays in the outbox",
                file.display()
            ),
        );
        Turn::Later
    });
    match turn {
        Turn::Recorded(outcome, again) => {
            let counters = host.counters_live();
            Counters::bump(match outcome.status {
                Status::Success => &counters.messages_delivered,
                Status::Failure => &counters.messages_failed,
                Status::Retry => &counters.messages_deferred,
            });
            if let Some(delay) = again {
                outbox.push_at(file, due_in(delay));
            }
            let reported =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_result(&outcome)));
            if reported.is_err() {
                host.host_log(
                    Priority::Critical,
                    "delivery: the result callback panicked".to_owned(),
                );
            }
        }
        Turn::Later if until == Until::Stopped && !outbox.is_stopping() => {
            outbox.push_at(file, due_in(config.retry_delay));
        }
        Turn::NotYet(wait) if !outbox.is_stopping() => outbox.push_at(file, due_in(wait)),
        Turn::Later | Turn::NotYet(_) | Turn::Over => {}
    }
}

/// `delay` from now, at most [`LONGEST_DELAY`].
pub(super) fn due_in(delay: Duration) -> Instant {
    Instant::now() + delay.min(LONGEST_DELAY)
}

/// What one turn of a message came to.
pub(super) enum Turn {
    /// A result was written; `Some(delay)`: a retry, due after it.
    Recorded(Outcome, Option<Duration>),
    /// Nothing was recorded; the message stays in the outbox as it is.
    Later,
    /// Its `nextattempt` is this far ahead: not tried now.
    NotYet(Duration),
    /// Nothing more to do now: the shutdown cut the attempt short (the
    /// message stays as it is), or its final result was already written.
    Over,
}

/// One attempt for the message in `file`, and its result recorded.
fn deliver_file(host: &Host, outbox: &Outbox, config: &DeliveryConfig, file: &Path) -> Turn {
    let name = match file.file_name() {
        Some(name) => name.to_string_lossy().into_owned(),
        None => return Turn::Later,
    };
    if outbox.has_final_result(file) {
        // Recorded before, but not removed from the outbox (a removal
        // failed): only the removal is due.
        if let Err(e) = store::remove(file) {
            host.host_log(
                Priority::Critical,
                format!(
                    "delivery: cannot remove the delivered {}: {e}",
                    file.display()
                ),
            );
        }
        return Turn::Over;
    }
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => {
            host.host_log(
                Priority::Critical,
                format!(
                    "delivery: cannot read {}: {e}; it stays in the outbox",
                    file.display()
                ),
            );
            return Turn::Later;
        }
    };
    let message = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return quarantine(host, outbox, file, &name, "not a JSON object"),
        Err(e) => return quarantine(host, outbox, file, &name, &e.to_string()),
    };
    if let Some(wait) = not_due(&message) {
        return Turn::NotYet(wait);
    }
    let (attempt, relay) = attempt(host, outbox, config, &message);
    if attempt.error.is_some() && outbox.was_cut() {
        host.host_log(
            Priority::Warning,
            format!("delivery: {name} was cut short by the shutdown; it stays in the outbox"),
        );
        return Turn::Over;
    }
    Counters::bump(&host.counters_live().delivery_attempts);
    if attempt.timed_out {
        Counters::bump(&host.counters_live().relay_timeouts);
    }
    let turn = match record(outbox, config, file, &name, message, attempt) {
        Ok((outcome, again)) => {
            host.host_log(
                Priority::Info,
                format!(
                    "delivery: {name} to {}: {} ({})",
                    outcome.result["recipient"].as_str().unwrap_or("?"),
                    outcome.status.as_str(),
                    last_description(&outcome.result)
                ),
            );
            Turn::Recorded(outcome, again)
        }
        Err(e) => {
            host.host_log(
                Priority::Critical,
                format!(
                    "delivery: cannot record the result of {name}: {e}; it stays in the outbox"
                ),
            );
            Turn::Later
        }
    };
    // The result is safe: now a polite end, if the conversation is in step.
    if let Some(mut relay) = relay {
        relay.quit();
    }
    turn
}

pub(super) fn last_description(result: &Value) -> String {
    let last = result["results"].as_array().and_then(|r| r.last());
    match last {
        Some(a) => match a["code"].as_u64() {
            Some(code) => format!("{} {}", code, a["description"].as_str().unwrap_or("")),
            None => a["description"].as_str().unwrap_or("").to_owned(),
        },
        None => String::new(),
    }
}

/// A message file that is not a MailerQ message moves to `failures/` in one
/// rename, unchanged but for `.invalid` added to its name, so it is
/// reported, never lost.
pub(super) fn quarantine(host: &Host, outbox: &Outbox, file: &Path, name: &str, why: &str) -> Turn {
    let failures = outbox.data_dir.queue(Queue::Failures);
    match store::move_as(file, &failures, &format!("{name}.invalid")) {
        Ok(path) => {
            host.host_log(
                Priority::Critical,
                format!(
                    "delivery: {} is not a MailerQ message ({why}); moved to {}",
                    file.display(),
                    path.display()
                ),
            );
            let result = json!({"file": file.display().to_string(), "results": [{
                "time": clock::now_rfc3339(), "status": "failure", "state": relay::Step::Message.as_str(),
                "description": format!("not a MailerQ message: {why}")}]});
            Turn::Recorded(
                Outcome {
                    status: Status::Failure,
                    result,
                    file: path,
                },
                None,
            )
        }
        Err(e) => {
            host.host_log(
                Priority::Critical,
                format!(
                    "delivery: {} is not a MailerQ message ({why}) and cannot be moved: {e}",
                    file.display()
                ),
            );
            Turn::Later
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;
    use std::io::Write;

    use std::time::SystemTime;

    #[test]
    fn reply_lines() {
        assert_eq!(
            parse_reply_line("250-PIPELINING"),
            Some((250, true, "PIPELINING"))
        );
        assert_eq!(
            parse_reply_line("250 2.0.0 Ok"),
            Some((250, false, "2.0.0 Ok"))
        );
        assert_eq!(parse_reply_line("354"), Some((354, false, "")));
        assert_eq!(parse_reply_line("25 x"), None);
        assert_eq!(parse_reply_line("250x"), None);
        assert_eq!(split_extended("2.1.5 Ok"), (Some("2.1.5".into()), "Ok"));
        assert_eq!(split_extended("5.7.1"), (Some("5.7.1".into()), ""));
        assert_eq!(split_extended("Ok then"), (None, "Ok then"));
        assert_eq!(split_extended("3.1.4 pi"), (None, "3.1.4 pi"));
    }

    #[test]
    fn retry_delays_double_up_to_the_cap_or_follow_the_message() {
        let config = DeliveryConfig {
            retry_delay: Duration::from_secs(10),
            max_retry_delay: Duration::from_secs(35),
            ..Default::default()
        };
        let plain = Map::new();
        let delays: Vec<_> = (1..=4)
            .map(|n| retry_delay(&plain, &config, n).as_secs())
            .collect();
        assert_eq!(delays, [10, 20, 35, 35]);
        let Value::Object(own) = json!({"retries": [1, 5]}) else {
            unreachable!()
        };
        let delays: Vec<_> = (1..=3)
            .map(|n| retry_delay(&own, &config, n).as_secs())
            .collect();
        assert_eq!(delays, [1, 5, 5]);
        let Value::Object(limited) = json!({"maxattempts": 2}) else {
            unreachable!()
        };
        assert_eq!(max_attempts(&limited, &config), 2);
        assert_eq!(max_attempts(&plain, &config), 5);
    }

    #[test]
    fn pickup_honours_nextattempt_and_skips_finished_messages() {
        let dir = std::env::temp_dir().join(format!("mq-pickup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let inbox = dir.join("inbox");
        let later = clock::rfc3339(SystemTime::now() + Duration::from_secs(3600));
        store::store_as(
            &inbox,
            "a.json",
            &json!({"recipient": "a@x", "nextattempt": later}),
        )
        .unwrap();
        store::store_as(&inbox, "b.json", &json!({"recipient": "b@x"})).unwrap();
        // c was delivered, but the host stopped before removing it.
        store::store_as(&inbox, "c.json", &json!({"recipient": "c@x"})).unwrap();
        store::store_as(&dir.join("success"), "c.json", &json!({"recipient": "c@x"})).unwrap();

        let (outbox, pickup) = Outbox::open(&dir).unwrap();
        assert_eq!(
            pickup,
            Pickup {
                waiting: 2,
                finished: 1
            }
        );
        assert!(!inbox.join("c.json").exists());
        // a's turn comes, but its nextattempt puts it an hour ahead; b is due.
        let read = |name: &str| -> Map<String, Value> {
            serde_json::from_slice(&std::fs::read(inbox.join(name)).unwrap()).unwrap()
        };
        let wait = not_due(&read("a.json")).expect("a is not due");
        assert!(wait > Duration::from_secs(3500));
        assert_eq!(not_due(&read("b.json")), None);
        drop(outbox);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn data_is_sent_with_crlf_line_ends_and_dot_stuffed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = DeliveryConfig {
            relay: listener.local_addr().unwrap().to_string(),
            ..Default::default()
        };
        let mut relay = Relay::connect(&config).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        relay.send_data(b".a\r\nb\nc\r.d\r\n\r\n..e\rf").unwrap();
        drop(relay);
        let mut sent = Vec::new();
        std::io::Read::read_to_end(&mut peer, &mut sent).unwrap();
        assert_eq!(
            String::from_utf8(sent).unwrap(),
            "..a\r\nb\r\nc\r\n..d\r\n\r\n...e\r\nf\r\n.\r\n"
        );
    }

    #[test]
    fn replies_are_read_whole_and_bounded() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = DeliveryConfig {
            relay: listener.local_addr().unwrap().to_string(),
            reply_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let mut relay = Relay::connect(&config).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        peer.write_all(b"250-first\r\n250-2.0.0 second \xe9\r\n250 2.1.0 third\r\n")
            .unwrap();
        let reply = relay.read_reply("the reply").unwrap();
        assert_eq!(reply.code, 250);
        assert_eq!(reply.extended.as_deref(), Some("2.0.0"));
        assert_eq!(reply.text, "first second \u{fffd} third");
        peer.write_all(&[b'x'; LONGEST_REPLY_LINE + 10]).unwrap();
        assert_eq!(
            relay.read_reply("the reply").unwrap_err(),
            "the relay sent a reply line that is too long".into()
        );
    }

    #[test]
    fn one_outbox_per_data_directory() {
        let dir = std::env::temp_dir().join(format!("mq-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (first, _) = Outbox::open(&dir).unwrap();
        let err = Outbox::open(&dir).unwrap_err().to_string();
        assert!(
            err.contains("another mq-host uses this data directory"),
            "{err}"
        );
        drop(first);
        Outbox::open(&dir).expect("free again once the first is gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keepmime_values() {
        for (value, keeps) in [
            (json!(true), true),
            (json!(1), true),
            (json!(false), false),
            (json!(0), false),
            (json!("yes"), true),
        ] {
            let Value::Object(m) = json!({"keepmime": value}) else {
                unreachable!()
            };
            assert_eq!(keeps_mime(&m), keeps, "{value}");
        }
        assert!(!keeps_mime(&Map::new()));
    }
}

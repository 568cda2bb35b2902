//! Delivery: messages from the outbox go over SMTP to a relay, with the
//! `smtp_out_data` and `smtp_out_sent` hooks at their MailerQ moments.
//!
//! The outbox is the `inbox/` directory under the data directory, next to
//! `local/` and `refused/` (written by [`serve`](crate::Host::serve)) and
//! the results: `results/`, `success/`, `failures/` and `retry/`. An [`Outbox`] picks up every message
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
//! A result is the message's JSON as MailerQ publishes it: the message
//! with the attempt added to its `results` array, and `mime` removed unless
//! the message sets `keepmime`:
//!
//! ```json
//! {"envelope": "a@example.org", "recipient": "b@example.net",
//!  "results": [{"state": "message", "result": "accepted",
//!               "time": "2026-11-30 09:12:01", "mta": "relay.example.net",
//!               "from": "127.0.0.1", "to": "127.0.0.1", "messages": 1,
//!               "sent": {"connection": 113, "data": 42},
//!               "code": 250, "status": "2.0.0", "dsn": false,
//!               "description": "OK queued"}]}
//! ```
//!
//! `state` is the step the attempt ended in, with MailerQ's names
//! (`process`, `storage`, `responsive`, `dns`, `connect`, `intro` for the
//! greeting, `ehlo` or `helo` as used, `mailfrom`, `rcptto`, `data`, and
//! `message` for the reply to the data); `result` what ended it
//! (`accepted`, `timeout`, `lost` when the connection broke, `invalid` for
//! an answer that is not SMTP, `error` for a refusal or an error of the
//! host's own). `time` is UTC, `YYYY-MM-DD HH:MM:SS`. Once connected, `mta`
//! is the first word of the relay's greeting, `from` and `to` the two IP
//! addresses, `messages` 1 (mq-host sends one message per connection) and
//! `sent` the bytes written in all and of the message's data; `dsn`, on a
//! delivered message, whether the relay announced DSN. The message gets an
//! `extracted` object too (see `extract.rs`). `code`, `status`
//! (the enhanced code) and `description` are the relay's reply; without
//! one, `description` says what happened. Final results are written
//! durably to `results/` and to `success/` or `failures/` under the data
//! directory; a result to be retried to `retry/` (MailerQ's four result
//! queues). Each is handed to the caller of [`run`] too.
//!
//! # Retries and expiry
//!
//! A temporary failure (4xx, a broken connection, a timeout) is retried
//! after the delays of the message's `retries` (seconds, the last one
//! repeated), else after a delay that doubles from
//! [`DeliveryConfig::retry_delay`] up to [`DeliveryConfig::max_retry_delay`]
//! (MailerQ's default is a fixed list; mq-host's is a setting of its own).
//! The message file stays in the outbox meanwhile, rewritten with its
//! `results` so far and `nextattempt` `{"time": "YYYY-MM-DD HH:MM:SS"}`,
//! which is honoured however the message got it. A message expires — a
//! failure whose last result has state `process` and result `timeout`, as
//! in MailerQ — once it made `maxattempts` attempts (the message's, else
//! [`DeliveryConfig::max_attempts`]; 0: no limit) or its `maxdelivertime`
//! (`YYYY-MM-DD HH:MM:SS`, UTC) has passed; without one, its delivery time
//! ends [`DeliveryConfig::max_deliver_time`] (MailerQ's 24 hours) after its
//! first attempt. A retry whose next attempt would come after that is not
//! waited for: the message expires at once.
//!
//! # Where mq-host differs from MailerQ
//!
//! - One message per connection: `messages` is always 1, and `sent`
//!   counts that one conversation.
//! - `mta` is the first word of the relay's greeting.
//! - No STARTTLS and no SMTP AUTH client: no `cipher`, `certificate` or
//!   `authentication` in a result; `security` `required`/`verified` fails
//!   the message (state `process`, result `error`).
//! - When the retry delays come from the host, they double (see above)
//!   instead of MailerQ's fixed list.
//! - The default delivery time counts from the message's first attempt
//!   (the `time` of its first result), not from when it was first read
//!   from the outbox; a retry whose next attempt would fall after the
//!   delivery time expires at once instead of when it is next due; an
//!   expiry after an attempt adds its own `process`/`timeout` result after
//!   the attempt's.
//! - A refusal of the greeting, `EHLO` or `HELO` (even a 5xx) is retried:
//!   it speaks of the connection, not the message. A 2xx where `354` was
//!   due is `invalid`, and retried.
//! - No response patterns: `fatal`, `individual` and the like are never
//!   added; the reply's class decides.
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

mod attempt;
mod extract;
mod outbox;
mod properties;
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
use attempt::{attempt, Kind, Step};
use record::*;
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
    /// message sets `maxattempts`; 0 (the default, as MailerQ's
    /// `max-attempts`): no limit but the delivery time.
    pub max_attempts: u32,
    /// How long after its first attempt a message without
    /// `maxdelivertime` may still be tried (default 24 hours: MailerQ's
    /// `max-delivertime` default of 86400 seconds).
    pub max_deliver_time: Duration,
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
            max_attempts: 0,
            max_deliver_time: Duration::from_secs(86_400),
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
    /// `success`, `failure` or `retry` (for logs; a result's JSON tells
    /// them apart by its queue, as MailerQ's does).
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
    let (deadline, unreadable) = deadline(&message, config);
    if let Some(text) = unreadable {
        host.host_log(
            Priority::Warning,
            format!(
                "delivery: {name}: `maxdelivertime` {text} is not YYYY-MM-DD HH:MM:SS (UTC); \
                 its delivery time ends {} after its first attempt instead",
                timed::seconds(config.max_deliver_time)
            ),
        );
    }
    if let Some(why) = expired(&message, config, deadline) {
        return expire(host, outbox, file, &name, message, &why);
    }
    let (mut attempt, relay) = match properties::plan(host, outbox, config, &message) {
        Ok(plan) => attempt(host, outbox, config, &message, &plan),
        Err(refused) => (refused, None),
    };
    if attempt.error.is_some() && outbox.was_cut() {
        host.host_log(
            Priority::Warning,
            format!("delivery: {name} was cut short by the shutdown; it stays in the outbox"),
        );
        return Turn::Over;
    }
    Counters::bump(&host.counters_live().delivery_attempts);
    if attempt.timed_out() {
        Counters::bump(&host.counters_live().relay_timeouts);
    }
    // The result carries the message as the out hooks left it.
    let message = match attempt.message.take() {
        Some(changed) => *changed,
        None => message,
    };
    let turn = match record(outbox, config, file, &name, message, &attempt) {
        Ok((outcome, again, expired)) => {
            if expired {
                Counters::bump(&host.counters_live().messages_expired);
            }
            log_result(host, &name, &outcome);
            Turn::Recorded(outcome, again)
        }
        Err(e) => cannot_record(host, &name, e),
    };
    // The result is safe: now a polite end, if the conversation is in step.
    if let Some(mut relay) = relay {
        relay.quit();
    }
    turn
}

/// A message that may have no further attempt ends: a failure whose
/// result has state `process`, result `timeout`.
fn expire(
    host: &Host,
    outbox: &Outbox,
    file: &Path,
    name: &str,
    mut message: serde_json::Map<String, Value>,
    why: &str,
) -> Turn {
    let attempts = push_result(&mut message, expiry_entry(why));
    match write_result(outbox, file, name, message, Status::Failure, attempts) {
        Ok(outcome) => {
            Counters::bump(&host.counters_live().messages_expired);
            log_result(host, name, &outcome);
            Turn::Recorded(outcome, None)
        }
        Err(e) => cannot_record(host, name, e),
    }
}

fn log_result(host: &Host, name: &str, outcome: &Outcome) {
    host.host_log(
        Priority::Info,
        format!(
            "delivery: {name} to {}: {} ({})",
            outcome.result["recipient"].as_str().unwrap_or("?"),
            outcome.status.as_str(),
            last_description(&outcome.result)
        ),
    );
}

fn cannot_record(host: &Host, name: &str, e: std::io::Error) -> Turn {
    host.host_log(
        Priority::Critical,
        format!("delivery: cannot record the result of {name}: {e}; it stays in the outbox"),
    );
    Turn::Later
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
                "state": Step::Process.as_str(), "result": Kind::Invalid.as_str(),
                "time": clock::now_mailerq(),
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
mod tests;

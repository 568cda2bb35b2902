//! What an attempt leaves: its entry in `results` (MailerQ's result
//! JSON), the result written to the documented queues under the data
//! directory, a retry's delay and `nextattempt`, and the end of a message
//! whose attempts or delivery time are used up.

use super::attempt::{Attempt, Kind, Step};
use super::*;
use crate::clock;
use crate::store::{self, Queue};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// How far ahead the message's `nextattempt` is — MailerQ's
/// `{"time": "YYYY-MM-DD HH:MM:SS"}` (UTC), or an RFC 3339 UTC text as
/// older mq-host retries wrote it; `None` if it is due (or has none that
/// can be read).
pub(super) fn not_due(message: &Map<String, Value>) -> Option<Duration> {
    let at = match message.get("nextattempt")? {
        Value::Object(next) => clock::parse_mailerq_time(next.get("time")?.as_str()?)?,
        Value::String(text) => clock::parse_rfc3339(text)?,
        _ => return None,
    };
    at.duration_since(SystemTime::now())
        .ok()
        .filter(|wait| !wait.is_zero())
}

/// The attempts a message may have: its `maxattempts`, else
/// [`DeliveryConfig::max_attempts`]; `None` (0 in either): no limit but
/// its delivery time.
pub(super) fn max_attempts(message: &Map<String, Value>, config: &DeliveryConfig) -> Option<u64> {
    let limit = match message.get("maxattempts").and_then(Value::as_u64) {
        Some(own) => own,
        None => u64::from(config.max_attempts),
    };
    (limit > 0).then_some(limit)
}

/// When the message's delivery time ends: its `maxdelivertime`
/// (`YYYY-MM-DD HH:MM:SS`, UTC), else its first attempt (the earliest
/// `time` of its results; now, if it has none) plus
/// [`DeliveryConfig::max_deliver_time`]. The text of a `maxdelivertime`
/// that cannot be read comes back too, for a warning.
pub(super) fn deadline(
    message: &Map<String, Value>,
    config: &DeliveryConfig,
) -> (SystemTime, Option<String>) {
    let mut unreadable = None;
    match message.get("maxdelivertime") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => match clock::parse_mailerq_time(text) {
            Some(at) => return (at, None),
            None => unreadable = Some(text.clone()),
        },
        Some(other) => unreadable = Some(other.to_string()),
    }
    // The earliest result time that can be read: stable from the first
    // attempt on, also when an entry from elsewhere has a time in another
    // form (mq-host's own entries always have one).
    let first = message
        .get("results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("time")?.as_str())
        .filter_map(|t| clock::parse_mailerq_time(t).or_else(|| clock::parse_rfc3339(t)))
        .min()
        .unwrap_or_else(SystemTime::now);
    let end = first
        .checked_add(config.max_deliver_time)
        .unwrap_or(first + LONGEST_DELAY);
    (end, unreadable)
}

/// Why the message may not have another attempt, if it may not: its
/// attempts are used up, or its delivery time (`deadline`) is over.
pub(super) fn expired(
    message: &Map<String, Value>,
    config: &DeliveryConfig,
    deadline: SystemTime,
) -> Option<String> {
    let made = message
        .get("results")
        .and_then(Value::as_array)
        .map_or(0, Vec::len) as u64;
    if let Some(limit) = max_attempts(message, config) {
        if made >= limit {
            return Some(format!(
                "expired: {made} attempt(s) made, maxattempts is {limit}"
            ));
        }
    }
    if SystemTime::now() >= deadline {
        return Some(format!(
            "expired: its delivery time ended at {} (maxdelivertime)",
            clock::mailerq_time(deadline)
        ));
    }
    None
}

/// The delay after the `attempts`-th attempt failed for now: the
/// message's `retries` (seconds; the first after the first attempt, the
/// last one repeated), else doubling from [`DeliveryConfig::retry_delay`]
/// up to [`DeliveryConfig::max_retry_delay`].
pub(super) fn retry_delay(
    message: &Map<String, Value>,
    config: &DeliveryConfig,
    attempts: usize,
) -> Duration {
    if let Some(retries) = message.get("retries").and_then(Value::as_array) {
        let secs: Vec<f64> = retries.iter().filter_map(Value::as_f64).collect();
        if let Some(&last) = secs.last() {
            let s = secs
                .get(attempts.saturating_sub(1))
                .copied()
                .unwrap_or(last);
            let longest = LONGEST_DELAY.as_secs_f64();
            return Duration::try_from_secs_f64(s.clamp(0.0, longest)).unwrap_or(LONGEST_DELAY);
        }
    }
    let doublings = attempts.saturating_sub(1).min(32) as u32;
    config
        .retry_delay
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(config.max_retry_delay)
        .min(LONGEST_DELAY)
}

pub(super) fn keeps_mime(message: &Map<String, Value>) -> bool {
    match message.get("keepmime") {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty() && s != "0" && s != "false",
        _ => false,
    }
}

/// Writes the attempt's result and moves the message on: to `results/`
/// and `success/` or `failures/` (out of the outbox), or to `retry/` and
/// back into the outbox for a retry. A retry the message may not have
/// (its attempts used up, or its next attempt past its delivery time)
/// ends it instead: a failure, with a second result of state `process`,
/// result `timeout` saying why (counted in `messages_expired`).
pub(super) fn record(
    outbox: &Outbox,
    config: &DeliveryConfig,
    file: &Path,
    name: &str,
    mut message: Map<String, Value>,
    attempt: &Attempt,
) -> std::io::Result<(Outcome, Option<Duration>, bool)> {
    let (deadline, _) = deadline(&message, config);
    let attempts = push_result(&mut message, entry(attempt));
    let address = |key: &str| message.get(key).and_then(Value::as_str).unwrap_or("");
    let extracted = extract::extracted(
        address("envelope"),
        address("recipient"),
        attempt.mime_head.as_deref(),
    );
    message.insert("extracted".into(), extracted);
    let mut status = attempt.status;
    let mut delay = None;
    let mut expired_now = false;
    if status == Status::Retry {
        let wait = retry_delay(&message, config, attempts);
        let next = SystemTime::now() + wait;
        let why = expired(&message, config, deadline).or_else(|| {
            (next > deadline).then(|| {
                format!(
                    "expired: its next attempt would come after its delivery time ends at {} \
                     (maxdelivertime)",
                    clock::mailerq_time(deadline)
                )
            })
        });
        match why {
            Some(why) => {
                push_result(&mut message, expiry_entry(&why));
                status = Status::Failure;
                expired_now = true;
            }
            None => {
                let next = json!({"time": clock::mailerq_time(next)});
                message.insert("nextattempt".into(), next);
                delay = Some(wait);
            }
        }
    }
    let outcome = write_result(outbox, file, name, message, status, attempts)?;
    Ok((outcome, delay, expired_now))
}

/// Writes a result: a final one to `results/` and to `success/` or
/// `failures/`, the message out of the outbox; a retry to `retry/`, the
/// message back into the outbox (with its `results` and `nextattempt`).
pub(super) fn write_result(
    outbox: &Outbox,
    file: &Path,
    name: &str,
    message: Map<String, Value>,
    status: Status,
    attempts: usize,
) -> std::io::Result<Outcome> {
    let keep_mime = keeps_mime(&message);
    let queue = outbox.data_dir.queue(status.queue());
    match status {
        Status::Success | Status::Failure => {
            let mut result = message;
            // MIME that `serve` kept apart for this message goes with it.
            let own_key = match keep_mime {
                true => None,
                false => store::mime::own_key(&outbox.data_dir, &result),
            };
            if !keep_mime {
                result.remove("mime");
            }
            if own_key.is_some() {
                result.remove("key");
            }
            let result = Value::Object(result);
            // `results/` first: the final queue's file marks the message
            // done (see `Outbox::has_final_result`).
            store::store_as(&outbox.data_dir.queue(Queue::Results), name, &result)?;
            let path = store::store_as(&queue, name, &result)?;
            store::remove(file)?;
            if let Some(key) = own_key {
                store::mime::MimeStore::new(&outbox.data_dir).remove(&key)?;
            }
            Ok(Outcome {
                status,
                result,
                file: path,
            })
        }
        Status::Retry => {
            // The result without the MIME, unless kept: not a full copy.
            let result: Map<String, Value> = message
                .iter()
                .filter(|(key, _)| keep_mime || key.as_str() != "mime")
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            // The result first: if the host stops in between, the attempt
            // is made again and its result written again under this name.
            let stem = name.strip_suffix(".json").unwrap_or(name);
            let result = Value::Object(result);
            let path = store::store_as(&queue, &format!("{stem}.{attempts}.json"), &result)?;
            let inbox = outbox.data_dir.queue(Queue::Inbox);
            store::store_as(&inbox, name, &Value::Object(message))?;
            Ok(Outcome {
                status,
                result,
                file: path,
            })
        }
    }
}

/// Appends `entry` to the message's `results` (made an array if it is
/// not one); returns how many it has now.
pub(super) fn push_result(message: &mut Map<String, Value>, entry: Value) -> usize {
    let results = message
        .entry("results")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !results.is_array() {
        *results = Value::Array(Vec::new());
    }
    let results = results.as_array_mut().expect("made an array");
    results.push(entry);
    results.len()
}

/// The result of the message's expiry: state `process`, result `timeout`,
/// as MailerQ reports an expired message; `description` says why.
pub(super) fn expiry_entry(why: &str) -> Value {
    json!({
        "state": Step::Process.as_str(),
        "result": Kind::Timeout.as_str(),
        "time": clock::now_mailerq(),
        "description": why,
    })
}

/// The attempt's entry in `results`, as MailerQ writes one: `state`,
/// `result`, `time`; once connected `mta`, `from`, `to`, `messages` and
/// `sent`; the relay's `code`, `status` (its enhanced code) and
/// `description`, or for an error without a reply, a `description` of
/// what happened; `dsn` for a delivered message.
pub(super) fn entry(attempt: &Attempt) -> Value {
    let mut entry = json!({
        "state": attempt.state.as_str(),
        "result": attempt.kind.as_str(),
        "time": clock::now_mailerq(),
    });
    if let Some(connected) = &attempt.connected {
        if let Some(mta) = &connected.mta {
            entry["mta"] = json!(mta);
        }
        if let Some(from) = &connected.from {
            entry["from"] = json!(from);
        }
        if let Some(to) = &connected.to {
            entry["to"] = json!(to);
        }
        // One message per connection.
        entry["messages"] = json!(1);
        entry["sent"] = json!({"connection": connected.sent, "data": connected.data});
        if attempt.kind == Kind::Accepted {
            entry["dsn"] = json!(connected.dsn);
        }
    }
    if let Some(reply) = &attempt.reply {
        entry["code"] = json!(reply.code);
        if let Some(ext) = &reply.extended {
            entry["status"] = json!(ext);
        }
        entry["description"] = json!(reply.text);
    }
    if let Some(error) = &attempt.error {
        entry["description"] = json!(error);
    }
    entry
}

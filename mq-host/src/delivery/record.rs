//! What an attempt leaves: the result written under the data directory, a
//! retry's delay and `nextattempt`, the message's own delivery properties.

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

/// The attempts a message may have.
pub(super) fn max_attempts(message: &Map<String, Value>, config: &DeliveryConfig) -> u64 {
    message
        .get("maxattempts")
        .and_then(Value::as_u64)
        .unwrap_or(u64::from(config.max_attempts))
        .max(1)
}

/// The delay after the `attempts`-th attempt failed for now.
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

/// Writes the attempt's result and moves the message on: to `success/` or
/// `failures/` (out of the outbox), or back into the outbox for a retry.
pub(super) fn record(
    outbox: &Outbox,
    config: &DeliveryConfig,
    file: &Path,
    name: &str,
    mut message: Map<String, Value>,
    attempt: Attempt,
) -> std::io::Result<(Outcome, Option<Duration>)> {
    let (status, attempts) = append_result(&mut message, config, &attempt);
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
            let path = store::store_as(&queue, name, &result)?;
            store::remove(file)?;
            if let Some(key) = own_key {
                store::mime::MimeStore::new(&outbox.data_dir).remove(&key)?;
            }
            let outcome = Outcome {
                status,
                result,
                file: path,
            };
            Ok((outcome, None))
        }
        Status::Retry => {
            let delay = retry_delay(&message, config, attempts);
            let next = clock::rfc3339(SystemTime::now() + delay);
            message.insert("nextattempt".into(), json!(next));
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
            let outcome = Outcome {
                status,
                result,
                file: path,
            };
            Ok((outcome, Some(delay)))
        }
    }
}

/// Appends the attempt's entry to the message's `results`; returns the
/// status it records (a retry past the allowed attempts is a failure) and
/// the number of attempts made.
fn append_result(
    message: &mut Map<String, Value>,
    config: &DeliveryConfig,
    attempt: &Attempt,
) -> (Status, usize) {
    let allowed = max_attempts(message, config);
    let results = message
        .entry("results")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !results.is_array() {
        *results = Value::Array(Vec::new());
    }
    let results = results.as_array_mut().expect("made an array");
    let attempts = results.len() + 1;
    let mut status = attempt.status;
    let mut entry = json!({
        "time": clock::now_rfc3339(),
        "relay": config.relay,
        "attempt": attempts,
        "state": attempt.state.as_str(),
    });
    if let Some(reply) = &attempt.reply {
        entry["code"] = json!(reply.code);
        if let Some(ext) = &reply.extended {
            entry["extended"] = json!(ext);
        }
        entry["description"] = json!(reply.text);
    }
    if let Some(error) = &attempt.error {
        entry["description"] = json!(error);
    }
    if status == Status::Retry && attempts as u64 >= allowed {
        status = Status::Failure;
        entry["gaveup"] = json!(format!("{attempts} attempt(s) made"));
    }
    entry["status"] = json!(status.as_str());
    results.push(entry);
    (status, attempts)
}

//! The end of DATA: `smtp_in_data`, then `smtp_in_message` once per
//! recipient, then durable storage of the transaction — all messages or
//! none — and only then the reply: MailerQ's `250` naming each stored
//! message's `message-id` and recipient, unless a plugin answered DATA
//! itself with `MQ_send` (see [`Done::reply`]).
//!
//! Each recipient's message is built as MailerQ's `json-incoming` says
//! ([`incoming_json`]). mq-host keeps none of its own properties there
//! (the client's HELO name is not recorded); `spool`, `cli` and `checks`
//! are not produced, as mq-host has no spool directory, no injecting
//! command line and runs no SPF/DKIM/DMARC checks.

use super::session::{go_on, reply, reply_raw, reset, step, step_with, Ending, Shared, SESSIONS};
use super::session::{Recipient, Session};
use crate::clock::now_mailerq;
use crate::inbound::refuses as refused;
use crate::observe::Priority;
use crate::runtime::message::{ChainArgs, Direction, MessageObj};
use crate::runtime::worker::{self, Worker};
use crate::store::commit::Job;
use crate::store::mime::Batch;
use crate::store::{DataDir, Queue};
use mq_hook_table::HookId;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One recipient's message after `smtp_in_message`.
pub(super) struct Decided {
    /// The message JSON as the plugins left it, without its MIME.
    json: Map<String, Value>,
    /// Its MIME, byte for byte (shared with the other recipients' unless a
    /// plugin replaced it).
    mime: Option<Rc<[u8]>>,
    /// For the local queue.
    local: bool,
    /// A plugin's 4xx/5xx reply that refused it.
    refusal: Option<String>,
}

/// The messages of a transaction decided so far, and the reply a plugin
/// gave instead of the host's.
struct Done {
    decided: Vec<Decided>,
    /// The bytes a plugin sent (`MQ_send`) at `smtp_in_data`, else the
    /// first sent at `smtp_in_message`, that do not refuse: they replace
    /// the host's `250` if a message is stored (one reply per command,
    /// however many recipients).
    reply: Option<Vec<u8>>,
}

/// The end of DATA: `smtp_in_data`, then `smtp_in_message` per recipient,
/// then durable storage, then the reply.
pub(super) fn end_of_data(w: &Worker, s: &Shared) {
    s.borrow_mut().finishing_data = true;
    if s.borrow().too_big {
        data_done(w, s);
        reset(s);
        let max = s.borrow().config.max_message_size;
        count(w, |c| &c.messages_too_big);
        return reply(w, s, &format!("552 5.3.4 message larger than {max} bytes"));
    }
    // One buffer for the data hook and every recipient's message.
    let mime: Rc<[u8]> = std::mem::take(&mut s.borrow_mut().data).into();
    step(
        w,
        s,
        HookId::SmtpInData,
        ChainArgs::Data(Rc::clone(&mime)),
        |w, s, sent| {
            if refused(&sent) {
                data_done(w, s);
                reset(s);
                return reply_raw(w, s, &sent);
            }
            let recipients = s.borrow().recipients.clone();
            let done = Done {
                decided: Vec::new(),
                reply: (!sent.is_empty()).then_some(sent),
            };
            message_for(w, s, mime, recipients, 0, done);
        },
    );
}

/// Runs `smtp_in_message` for recipient `i`, then the next; stores all.
fn message_for(
    w: &Worker,
    s: &Shared,
    mime: Rc<[u8]>,
    recipients: Vec<Recipient>,
    i: usize,
    mut done: Done,
) {
    if s.borrow().ending != Ending::No {
        // The client went away before the reply: nothing was accepted.
        return;
    }
    if i == recipients.len() {
        return store_all(w, s, done);
    }
    let map = incoming_json(&s.borrow(), &recipients[i].address);
    let message = MessageObj::with_mime(Direction::Incoming, map, Some(Rc::clone(&mime)));
    message.local.set(recipients[i].local);
    step_with(
        w,
        s,
        HookId::SmtpInMessage,
        ChainArgs::Message(message),
        move |w, s, sent, args| {
            if let ChainArgs::Message(m) = &args {
                let reason =
                    refused(&sent).then(|| String::from_utf8_lossy(&sent).trim_end().to_owned());
                if reason.is_none() && !sent.is_empty() && done.reply.is_none() {
                    done.reply = Some(sent);
                }
                let (json, mime) = m.parts();
                done.decided.push(Decided {
                    json,
                    mime,
                    local: m.local.get(),
                    refusal: reason,
                });
            }
            let s = Rc::clone(s);
            // Next recipient on a fresh turn (not inside this chain's end).
            w.defer(move |w| message_for(w, &s, mime, recipients, i + 1, done));
        },
    );
}

/// The end of DATA is answered: pipelined input may go on.
pub(super) fn data_done(w: &Worker, s: &Shared) {
    s.borrow_mut().finishing_data = false;
    let s = Rc::clone(s);
    w.defer(move |w| go_on(w, &s));
}

/// Stores a transaction's messages (one per recipient) all or none: they
/// are written under temporary names here, then made durable and given
/// their names by the listener's store thread in a group commit with
/// other sessions' ([`crate::store::commit`]); the reply waits for that
/// commit, the worker does not. If one cannot be stored, none is (the
/// others are removed again) and the client is told 451, so its retry
/// does not duplicate them. Only once committed are the outbox's ones
/// queued for delivery.
fn store_all(w: &Worker, s: &Shared, done: Done) {
    let Done {
        decided: done,
        reply: plugin_reply,
    } = done;
    let dir = DataDir::new(s.borrow().config.data_dir.clone());
    let mut batch = Batch::new(&dir, done.iter().filter_map(|d| d.mime.as_ref()));
    let mut inbox: Vec<PathBuf> = Vec::new();
    let mut stored = 0u64;
    let mut stored_ids: Vec<(String, String)> = Vec::new();
    let mut refusals = Vec::new();
    for decided in done {
        if let Some(reason) = &decided.refusal {
            refusals.push((reason.clone(), decided));
            continue;
        }
        let text = |key: &str| {
            decided
                .json
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        stored_ids.push((text("message-id"), text("recipient")));
        let queue = if decided.local {
            Queue::Local
        } else {
            Queue::Inbox
        };
        match batch.add(queue, decided.json, decided.mime.as_ref()) {
            Ok(path) => {
                stored += 1;
                if queue == Queue::Inbox {
                    inbox.push(path);
                }
            }
            Err(e) => {
                batch.undo();
                data_done(w, s);
                reset(s);
                return reply(w, s, &format!("451 4.3.0 cannot store the message: {e}"));
            }
        }
    }
    // Refusal reports: kept even if the accepted part is later retried.
    let refused_count = refusals.len() as u64;
    for (reason, report) in &mut refusals {
        report.json.insert(
            "result".to_owned(),
            crate::inbound::refused(HookId::SmtpInMessage.hook(), Some(reason)),
        );
        let json = std::mem::take(&mut report.json);
        if let Err(e) = batch.add(Queue::Refused, json, report.mime.as_ref()) {
            log_store_error(w, &format!("cannot store a refusal report: {e}"));
        }
    }
    reset(s);
    let answer = if stored == 0 {
        let reason = refusals
            .into_iter()
            .next()
            .map(|(reason, _)| reason)
            .unwrap_or_else(|| "554 5.7.1 refused".into());
        format!("{reason}\r\n").into_bytes()
    } else if let Some(sent) = plugin_reply {
        sent
    } else {
        format!("{}\r\n", queued_reply(&stored_ids)).into_bytes()
    };
    let outcome = Outcome {
        stored,
        refused: refused_count,
        answer,
    };
    let staged = batch.into_staged();
    if staged.files.is_empty() && staged.links.is_empty() {
        return committed(w, s, outcome, Ok(()));
    }
    let store = Arc::clone(&s.borrow().store);
    if store.inline() {
        // A data directory in memory: committed here (see
        // `Committer::start`).
        let result = store.commit_here(staged);
        if let (Ok(()), Some(outbox)) = (&result, &s.borrow().config.outbox) {
            for path in inbox {
                outbox.push(path);
            }
        }
        return committed(w, s, outcome, result.map_err(|e| e.to_string()));
    }
    let (remote, id, outbox) = {
        let sess = s.borrow();
        (w.ev.remote(), sess.conn.id, sess.config.outbox.clone())
    };
    store.submit(Job {
        staged,
        done: Box::new(move |result| {
            // On the store thread: the files are durable (or gone again).
            if let (Ok(()), Some(outbox)) = (&result, outbox) {
                for path in inbox {
                    outbox.push(path);
                }
            }
            let result = result.map_err(|e| e.to_string());
            worker::post(&remote, move |w| {
                let session = SESSIONS.with(|m| m.borrow().get(&id).cloned());
                if let Some(s) = session {
                    committed(w, &s, outcome, result);
                } else {
                    // The session is gone; its messages are stored all the
                    // same (its client never got the 250 and will retry).
                    outcome.count(w, &result);
                }
            });
        }),
    });
}

/// What a transaction's reply and counters need once its commit is over.
struct Outcome {
    stored: u64,
    refused: u64,
    /// The reply if the commit succeeds.
    answer: Vec<u8>,
}

impl Outcome {
    fn count(&self, w: &Worker, result: &Result<(), String>) {
        let counters = &w.shared.counters;
        if result.is_ok() {
            counters
                .messages_stored
                .fetch_add(self.stored, Ordering::Relaxed);
        }
        if result.is_ok() || self.stored == 0 {
            counters
                .messages_refused
                .fetch_add(self.refused, Ordering::Relaxed);
        }
    }
}

/// On the worker, once the transaction's commit is over: the reply (the
/// `250` only now, its files being durable), and pipelined input goes on.
fn committed(w: &Worker, s: &Shared, outcome: Outcome, result: Result<(), String>) {
    outcome.count(w, &result);
    data_done(w, s);
    if s.borrow().ending != Ending::No {
        // The client went away, or is sent away, meanwhile.
        return;
    }
    match result {
        Ok(()) => reply_raw(w, s, &outcome.answer),
        Err(e) if outcome.stored == 0 => {
            log_store_error(w, &format!("cannot store a refusal report: {e}"));
            reply_raw(w, s, &outcome.answer);
        }
        Err(e) => reply(w, s, &format!("451 4.3.0 cannot store the message: {e}")),
    }
}

/// The `250` after DATA: MailerQ's form, one line per stored message
/// with its `message-id` and recipient, so that the client can track each
/// (`<id> for <recipient>`); every line carries the enhanced status code,
/// as ENHANCEDSTATUSCODES (which the EHLO reply lists) requires.
/// Control characters a plugin may have put in a message's id or recipient
/// are shown as `?`, so that they cannot break the reply's lines.
fn queued_reply(ids: &[(String, String)]) -> String {
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    };
    let mut reply = String::from("250-2.0.0 queued with these identifiers:");
    for (n, (id, recipient)) in ids.iter().enumerate() {
        let sep = if n + 1 == ids.len() { ' ' } else { '-' };
        let (id, recipient) = (clean(id), clean(recipient));
        reply.push_str(&format!("\r\n250{sep}2.0.0 {id} for {recipient}"));
    }
    reply
}

fn log_store_error(w: &Worker, text: &str) {
    w.log(Priority::Critical, text.to_owned());
}

fn count(w: &Worker, counter: impl FnOnce(&crate::observe::Counters) -> &AtomicU64) {
    crate::observe::Counters::bump(counter(&w.shared.counters));
}

/// The JSON of an incoming message for `recipient`, as MailerQ's
/// `json-incoming` describes it: `envelope`, `recipient`, `hostname`,
/// `received` (`YYYY-MM-DD HH:MM:SS`, UTC), a `message-id` of its own, and
/// the `connection` it came in on. Its MIME is kept apart, byte for byte.
pub(super) fn incoming_json(sess: &Session, recipient: &str) -> Map<String, Value> {
    let json = json!({
        "envelope": sess.envelope.clone().unwrap_or_default(),
        "recipient": recipient,
        "hostname": sess.config.hostname,
        "received": now_mailerq(),
        "message-id": message_id(),
        "connection": connection_json(sess),
    });
    let Value::Object(map) = json else {
        unreachable!("an object")
    };
    map
}

/// The `connection` object: both ends' addresses and ports (ports as
/// numbers), `secure` (TLS, after STARTTLS), and `user`, the AUTH login,
/// only when the client authenticated (as MailerQ leaves it out).
fn connection_json(sess: &Session) -> Value {
    let (local, remote) = *sess
        .addresses
        .get_or_init(|| (sess.stream.local_addr().ok(), sess.stream.peer_addr().ok()));
    let mut connection = json!({
        "local-ip": local.map(|a| a.ip().to_string()),
        "local-port": local.map(|a| a.port()),
        "remote-ip": remote.map(|a| a.ip().to_string()),
        "remote-port": remote.map(|a| a.port()),
        "secure": sess.conn.secure.get(),
    });
    if let (Some(user), true) = (&sess.user, sess.conn.auth.get().authenticated) {
        connection["user"] = Value::String(user.clone());
    }
    connection
}

/// A new message id, unique per recipient: like MailerQ's, a short token
/// of lowercase letters and digits (the time in nanoseconds, the process
/// and a sequence number, each in base 36; the first two of fixed width,
/// so that no two ids run together).
fn message_id() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{}{}{}",
        base36(nanos, 13),
        base36(u128::from(crate::store::process_id()), 5),
        base36(u128::from(seq), 1)
    )
}

/// `n` in base 36 (digits, lowercase letters), zero-padded to `width`.
fn base36(mut n: u128, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    while n > 0 || out.is_empty() {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    while out.len() < width {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_distinct_tokens() {
        let ids: Vec<String> = (0..1000).map(|_| message_id()).collect();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "{id}"
            );
        }
        assert_eq!(base36(0, 3), "000");
        assert_eq!(base36(35, 1), "z");
        assert_eq!(base36(36, 1), "10");
    }

    #[test]
    fn the_reply_lists_each_id_with_its_recipient() {
        let ids = [
            ("aa1".to_owned(), "a@x.example".to_owned()),
            ("bb2".to_owned(), "b@x.example".to_owned()),
        ];
        assert_eq!(
            queued_reply(&ids),
            "250-2.0.0 queued with these identifiers:\r\n250-2.0.0 aa1 for a@x.example\r\n250 2.0.0 bb2 for b@x.example"
        );
        let injected = [("id\r\n250 x".to_owned(), "c@x.example\n".to_owned())];
        assert_eq!(
            queued_reply(&injected),
            "250-2.0.0 queued with these identifiers:\r\n250 2.0.0 id??250 x for c@x.example?"
        );
    }
}

//! The end of DATA: `smtp_in_data`, then `smtp_in_message` once per
//! recipient, then durable storage of the transaction — all messages or
//! none — and only then the reply.

use super::session::Recipient;
use super::session::{go_on, reply, reply_raw, reset, step, step_with, Ending, Shared};
use crate::clock::now_mailerq;
use crate::inbound::refuses as refused;
use crate::observe::Priority;
use crate::runtime::message::{ChainArgs, Direction, MessageObj};
use crate::runtime::worker::Worker;
use crate::store::mime::Batch;
use crate::store::{DataDir, Queue};
use mq_hook_table::HookId;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;

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
            message_for(w, s, mime, recipients, 0, Vec::new());
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
    mut done: Vec<Decided>,
) {
    if s.borrow().ending != Ending::No {
        // The client went away before the reply: nothing was accepted.
        return;
    }
    if i == recipients.len() {
        return store_all(w, s, done);
    }
    let json = {
        let sess = s.borrow();
        let peer = sess
            .stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        json!({
            "envelope": sess.envelope.clone().unwrap_or_default(),
            "recipient": recipients[i].address,
            "hostname": sess.config.hostname,
            "received": now_mailerq(),
            "message-id": message_id(&sess.config.hostname),
            "connection": {"peer": peer, "helo": sess.helo.clone().unwrap_or_default()},
        })
    };
    let Value::Object(map) = json else {
        unreachable!("an object")
    };
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
                let (json, mime) = m.parts();
                done.push(Decided {
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

/// Stores a transaction's messages (one per recipient) all or none: if one
/// cannot be stored, those already written are removed again and the
/// client is told 451, so its retry does not duplicate them. Only then are
/// the outbox's ones queued for delivery.
fn store_all(w: &Worker, s: &Shared, done: Vec<Decided>) {
    data_done(w, s);
    let dir = DataDir::new(s.borrow().config.data_dir.clone());
    let mut batch = Batch::new(&dir, done.iter().filter_map(|d| d.mime.as_ref()));
    let mut stored: Vec<(PathBuf, Queue)> = Vec::new();
    let mut refusals = Vec::new();
    for decided in done {
        if let Some(reason) = &decided.refusal {
            refusals.push((reason.clone(), decided));
            continue;
        }
        let queue = if decided.local {
            Queue::Local
        } else {
            Queue::Inbox
        };
        match batch.add(queue, decided.json, decided.mime.as_ref()) {
            Ok(path) => stored.push((path, queue)),
            Err(e) => {
                batch.undo();
                return reply(w, s, &format!("451 4.3.0 cannot store the message: {e}"));
            }
        }
    }
    // Refusal reports: kept even if the accepted part is later retried.
    for (reason, report) in &mut refusals {
        report.json.insert(
            "result".to_owned(),
            crate::inbound::refused(HookId::SmtpInMessage.hook(), Some(reason)),
        );
        let json = std::mem::take(&mut report.json);
        if let Err(e) = batch.add(Queue::Refused, json, report.mime.as_ref()) {
            log_store_error(w, &format!("cannot store a refusal report: {e}"));
        }
        count(w, |c| &c.messages_refused);
    }
    if let Some(outbox) = &s.borrow().config.outbox {
        for (path, queue) in &stored {
            if *queue == Queue::Inbox {
                outbox.push(path.clone());
            }
        }
    }
    for _ in &stored {
        count(w, |c| &c.messages_stored);
    }
    reset(s);
    if stored.is_empty() {
        let reason = refusals
            .into_iter()
            .next()
            .map(|(reason, _)| reason)
            .unwrap_or_else(|| "554 5.7.1 refused".into());
        reply(w, s, &reason);
    } else {
        reply(
            w,
            s,
            &format!("250 2.0.0 queued for {} recipient(s)", stored.len()),
        );
    }
}

fn log_store_error(w: &Worker, text: &str) {
    w.log(Priority::Critical, text.to_owned());
}

fn count(w: &Worker, counter: impl FnOnce(&crate::observe::Counters) -> &AtomicU64) {
    crate::observe::Counters::bump(counter(&w.shared.counters));
}

fn message_id(host: &str) -> String {
    format!("<{}@{host}>", crate::store::new_name().replace('-', "."))
}

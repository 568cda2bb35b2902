//! Example plugin: stamps every incoming message.
//!
//! For each message (`smtp_in_message`, once per recipient) it puts two
//! headers in front of the MIME data:
//!
//! ```text
//! X-Stamped-By: mq-example-stamp 0.1.0
//! X-Stamp-Sequence: 3
//! ```
//!
//! The sequence number counts the messages this worker stamped; it lives in
//! typed per-context data, which the framework frees at context cleanup.

#![forbid(unsafe_code)]

use mq_plugin::prelude::*;
use std::cell::Cell;

mq_plugin::declare_plugin!();

/// Per-worker state: how many messages this worker stamped.
#[derive(Default)]
struct Stamped(Cell<u64>);

#[mq_hook(smtp_in_message)]
fn stamp(ctx: &Context, msg: &mut Message) -> Flow {
    let Some(mime) = msg.mime() else {
        log::warn!(
            "message for {:?} has no MIME data; not stamped",
            msg.recipient()
        );
        return Flow::Continue;
    };
    let counter = ctx.data_or_insert_with(Stamped::default);
    counter.0.set(counter.0.get() + 1);
    let mut stamped = format!(
        "X-Stamped-By: {} {}\r\nX-Stamp-Sequence: {}\r\n",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION"),
        counter.0.get()
    )
    .into_bytes();
    stamped.extend_from_slice(mime);
    msg.set_mime(&stamped);
    log::info!(
        "stamped message #{} for {}",
        counter.0.get(),
        msg.recipient().unwrap_or("?")
    );
    Flow::Continue
}

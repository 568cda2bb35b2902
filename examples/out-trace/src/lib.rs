//! Example plugin: traces outgoing deliveries.
//!
//! - `smtp_out_data` (the relay said `354`, the MIME is about to go out)
//!   puts a header in front of the MIME with `MQ_setMime`:
//!
//!   ```text
//!   X-Out-Trace: mq-example-out-trace 0.1.0; attempt 1
//!   ```
//!
//!   The attempt number comes from the message's MailerQ JSON: the host
//!   keeps one entry per earlier attempt in its `results` array.
//! - `smtp_out_sent` (the data is sent, the relay's answer is not in yet)
//!   logs what went out.
//!
//! The MIME traced is the one an earlier plugin set, else the message's
//! own (its JSON's `mime`: `MQ_mime` shows an outgoing message's MIME only
//! once a plugin set one). A message without MIME data is left alone.

#![forbid(unsafe_code)]

use mq_plugin::prelude::*;

mq_plugin::declare_plugin!();

#[mq_hook(smtp_out_data)]
fn trace(msg: &mut Message) -> Flow {
    let mime = match msg.mime() {
        Some(set) => Some(set.to_vec()),
        None => msg.property_bytes("mime").unwrap_or_else(|e| {
            log::warn!("cannot read the message's `mime`: {e}");
            None
        }),
    };
    let Some(mime) = mime else {
        log::warn!(
            "outgoing message for {:?} has no MIME data",
            msg.recipient()
        );
        return Flow::Continue;
    };
    let attempt = match msg.json() {
        Ok(json) => json["results"].as_array().map_or(0, Vec::len) + 1,
        Err(e) => {
            log::warn!("cannot read the message's JSON: {e}");
            1
        }
    };
    let mut traced = format!(
        "X-Out-Trace: {} {}; attempt {attempt}\r\n",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION"),
    )
    .into_bytes();
    traced.extend_from_slice(&mime);
    msg.set_mime(&traced);
    Flow::Continue
}

#[mq_hook(smtp_out_sent)]
fn sent(msg: &Message) -> Flow {
    log::info!(
        "sent {} bytes for {} to the relay",
        msg.mime().map_or(0, <[u8]>::len),
        msg.recipient().unwrap_or("?")
    );
    Flow::Continue
}

//! Test fixture: reads and changes a message's JSON in both directions
//! with `Message::property`, `set_property`, `remove_property` and
//! `property_bytes` (libfastjson underneath, as in MailerQ).
//!
//! Every check logs `json-props ok <name>` or `json-props fail <name>: ...`.
//!
//! - `smtp_in_message`: reads `recipient` and the typed `custom`, adds
//!   `rust-in`, replaces `x-change`, removes `x-remove`, checks that
//!   `set_recipient` shows in the JSON and that a `recipient` and a `mime`
//!   set in the JSON show in `recipient()` and `mime()`.
//! - `smtp_out_data`: checks that `mime()` is `None` (no plugin set it),
//!   adds `rust-out`, sends the JSON's `mime` with a header in front, and
//!   checks that `set_recipient` leaves the JSON alone.

#![forbid(unsafe_code)]

use mq_plugin::log::{write, Priority};
use mq_plugin::prelude::*;
use mq_plugin::JsonError;
use serde::Deserialize;
use serde_json::json;

mq_plugin::declare_plugin!();

fn say(text: &str) {
    write(Priority::Info, &format!("json-props {text}"));
}

fn check(name: &str, ok: bool, detail: impl FnOnce() -> String) {
    if ok {
        say(&format!("ok {name}"));
    } else {
        say(&format!("fail {name}: {}", detail()));
    }
}

/// The test message's `custom` property.
#[derive(Deserialize, Debug)]
struct Custom {
    kept: bool,
}

#[mq_hook(smtp_in_message)]
fn incoming(msg: &mut Message) -> Flow {
    let recipient: Option<String> = msg.property("recipient").unwrap_or(None);
    let recipient = recipient.unwrap_or_default();
    say(&format!("in recipient {recipient}"));
    let custom: Result<Option<Custom>, _> = msg.property("custom");
    check(
        "in-typed",
        matches!(custom, Ok(Some(Custom { kept: true }))),
        || format!("{custom:?}"),
    );
    let wrong: Result<Option<u32>, _> = msg.property("recipient");
    check(
        "in-wrong-type",
        matches!(wrong, Err(JsonError::Property { .. })),
        || format!("{wrong:?}"),
    );
    let absent: Result<Option<String>, _> = msg.property("absent");
    check("in-absent", matches!(absent, Ok(None)), || {
        format!("{absent:?}")
    });

    let added = msg.set_property(
        "rust-in",
        &json!({"recipient": recipient, "nested": [1, "two"]}),
    );
    check("in-set", added.is_ok(), || format!("{added:?}"));
    let changed = msg.set_property("x-change", "changed-by-rust");
    check("in-change", changed.is_ok(), || format!("{changed:?}"));
    let removed = msg.remove_property("x-remove");
    check("in-remove", matches!(removed, Ok(true)), || {
        format!("{removed:?}")
    });

    msg.set_recipient(&format!("rust.{recipient}"));
    let now: Option<String> = msg.property("recipient").unwrap_or(None);
    check(
        "in-recipient-synced",
        now.as_deref() == Some(&format!("rust.{recipient}")[..]),
        || format!("{now:?}"),
    );
    let set = msg.set_property("recipient", &format!("json.{recipient}"));
    check(
        "in-recipient-from-json",
        set.is_ok() && msg.recipient() == Some(&format!("json.{recipient}")[..]),
        || format!("{:?}", msg.recipient()),
    );
    let mime = [
        b"X-Rust: in\r\n".to_vec(),
        msg.mime().unwrap_or_default().to_vec(),
    ]
    .concat();
    let text = String::from_utf8_lossy(&mime).into_owned();
    let set = msg.set_property("mime", &text);
    check(
        "in-mime-from-json",
        set.is_ok() && msg.mime() == Some(text.as_bytes()),
        || format!("{:?}", msg.mime().map(String::from_utf8_lossy)),
    );
    Flow::Continue
}

#[mq_hook(smtp_out_data)]
fn outgoing(msg: &mut Message) -> Flow {
    check("out-mime-none", msg.mime().is_none(), || {
        "MQ_mime was set".into()
    });
    let recipient: Option<String> = msg.property("recipient").unwrap_or(None);
    let added = msg.set_property("rust-out", &json!({"recipient": recipient}));
    check("out-set", added.is_ok(), || format!("{added:?}"));
    let mime = msg.property_bytes("mime");
    check("out-mime-json", matches!(mime, Ok(Some(_))), || {
        format!("{mime:?}")
    });
    let sent = [
        b"X-Rust: out\r\n".to_vec(),
        mime.ok().flatten().unwrap_or_default(),
    ]
    .concat();
    msg.set_mime(&sent);
    check("out-mime-set", msg.mime() == Some(&sent[..]), String::new);
    msg.set_recipient("smtp-only@example.net");
    let now: Option<String> = msg.property("recipient").unwrap_or(None);
    check("out-json-unchanged", now == recipient, || {
        format!("{now:?}")
    });
    Flow::Continue
}

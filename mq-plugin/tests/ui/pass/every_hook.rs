//! Every hook, with every parameter it supplies, in various orders and
//! with every allowed return type.
#![forbid(unsafe_code)]
use mq_plugin::prelude::*;

mq_plugin::declare_plugin!(name = "every-hook", version = "1.2.3");

#[mq_hook(initialize)]
fn initialize() {}

#[mq_hook(cleanup)]
fn cleanup() -> Result<(), String> {
    Ok(())
}

#[mq_hook(context_initialize)]
fn context_initialize(_ctx: &Context) {}

#[mq_hook(context_cleanup)]
fn context_cleanup(_ctx: &mq_plugin::Context) -> Result<(), std::fmt::Error> {
    Ok(())
}

#[mq_hook(smtp_in_connect)]
fn connect(_conn: &Connection, _ctx: &Context) -> Flow {
    Flow::Continue
}

#[mq_hook(smtp_in_secure)]
fn secure() {}

#[mq_hook(smtp_in_authenticate, fallback = complete)]
fn authenticate(credentials: &Credentials, conn: &Connection) -> Result<Flow, String> {
    conn.set_authenticated(credentials.login() == b"me");
    Ok(Flow::Continue)
}

#[mq_hook(smtp_in_mailfrom)]
fn mailfrom(_envelope: &Address) -> Flow {
    Flow::Retry
}

#[mq_hook(smtp_in_rcptto, fallback = retry)]
fn rcptto(_ctx: &Context, _conn: &Connection, _rcpt: &Address) -> Result<(), String> {
    Ok(())
}

#[mq_hook(smtp_in_data)]
fn data(mime: &[u8]) -> Flow {
    if mime.is_empty() { Flow::Complete } else { Flow::Continue }
}

#[mq_hook(smtp_in_message)]
fn message(msg: &mut Message, _ctx: &Context) -> Flow {
    msg.set_local(true);
    Flow::Continue
}

#[mq_hook(smtp_in_close)]
fn close(_conn: &Connection) {}

#[mq_hook("smtp_out_data")]
fn out_data(_ctx: &Context, _conn: &Connection, msg: &mut Message) -> Flow {
    msg.set_mime(b"x");
    Flow::Continue
}

#[mq_hook(smtp_out_sent)]
fn out_sent(_msg: &Message) {}

fn main() {
    // The functions stay ordinary Rust functions.
    initialize();
    assert_eq!(data(b""), Flow::Complete);
}

//! Async hooks borrow their handles across awaits and may return any hook
//! return type.
#![forbid(unsafe_code)]
use mq_plugin::prelude::*;
use mq_plugin::time::{sleep, timeout};
use std::time::Duration;

mq_plugin::declare_plugin!();

#[mq_hook(smtp_in_connect)]
async fn connect(ctx: &Context, conn: &Connection) -> Flow {
    sleep(Duration::from_millis(1)).await;
    let _ = (ctx, conn.is_secure());
    Flow::Continue
}

#[mq_hook(smtp_in_authenticate, fallback = complete)]
async fn authenticate(credentials: &Credentials, conn: &Connection) -> Result<Flow, String> {
    sleep(Duration::from_millis(1)).await;
    conn.set_authenticated(credentials.login() == b"me");
    Ok(Flow::Continue)
}

#[mq_hook(smtp_in_rcptto)]
async fn rcptto(rcpt: &Address) -> Result<(), std::fmt::Error> {
    let _ = timeout(Duration::from_secs(1), sleep(Duration::ZERO)).await;
    let _ = rcpt.email();
    Ok(())
}

#[mq_hook(smtp_in_data)]
async fn data(mime: &[u8]) {
    sleep(Duration::from_millis(1)).await;
    let _ = mime.len();
}

#[mq_hook(smtp_out_data)]
async fn out_data(msg: &mut Message) -> Flow {
    let mime = msg.mime().unwrap_or_default().to_vec();
    sleep(Duration::from_millis(1)).await;
    msg.set_mime(&mime);
    Flow::Complete
}

#[mq_hook(smtp_in_close, deadline = "1.5s", fallback = continue)]
async fn close() {}

#[mq_hook(smtp_out_sent, deadline = "250ms", fallback = Flow::Complete)]
async fn out_sent(msg: &Message) -> Flow {
    let _ = msg.recipient();
    Flow::Continue
}

fn main() {}

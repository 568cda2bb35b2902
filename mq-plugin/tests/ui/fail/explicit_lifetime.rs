//! A hook parameter cannot name a lifetime, sync or async: the handle is
//! borrowed for the hook call only. `'_` means the same as no lifetime.
#![allow(unused_variables)]
use mq_plugin::prelude::*;
use std::cell::Cell;
mq_plugin::declare_plugin!();

// The bug this refuses: an async hook was handed `&'static` handles, so a
// parameter written `&'static` compiled and could outlive the hook call.
thread_local! {
    static KEPT: Cell<Option<&'static Connection>> = const { Cell::new(None) };
}

#[mq_hook(smtp_in_connect)]
async fn keep(conn: &'static Connection) {
    KEPT.with(|k| k.set(Some(conn)));
}

#[mq_hook(context_initialize)]
fn sync_context(ctx: &'static Context) {}

#[mq_hook(smtp_in_rcptto)]
fn sync_handles(ctx: &'static Context, conn: &'static Connection, rcpt: &'static Address) {}

#[mq_hook(smtp_in_mailfrom)]
async fn async_handles(ctx: &'static Context, conn: &'static Connection, from: &'static Address) {}

#[mq_hook(smtp_in_authenticate)]
fn sync_credentials(credentials: &'static Credentials) {}

#[mq_hook(smtp_in_authenticate)]
async fn async_credentials(credentials: &'static Credentials) {}

#[mq_hook(smtp_in_data)]
fn sync_mime(mime: &'static [u8]) {}

#[mq_hook(smtp_in_data)]
async fn async_mime(mime: &'static [u8]) {}

#[mq_hook(smtp_in_message)]
fn sync_message(msg: &'static mut Message) {}

#[mq_hook(smtp_out_data)]
async fn async_message(msg: &'static mut Message) {}

#[mq_hook(smtp_out_sent)]
async fn named<'a>(msg: &'a mut Message, conn: &'a Connection) {}

#[mq_hook(smtp_in_secure)]
async fn anonymous(conn: &'_ Connection) {
    let _ = conn.is_secure();
}

fn main() {}

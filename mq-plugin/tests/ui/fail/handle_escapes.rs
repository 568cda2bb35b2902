//! A handle cannot outlive the hook call's control, not even from an async
//! hook whose future the framework keeps.
use mq_plugin::prelude::*;
use std::cell::Cell;
mq_plugin::declare_plugin!();

thread_local! {
    static KEPT: Cell<Option<&'static Connection>> = const { Cell::new(None) };
}

#[mq_hook(smtp_in_connect)]
async fn keep(conn: &Connection) {
    KEPT.with(|k| k.set(Some(conn)));
}

#[mq_hook(smtp_in_message)]
async fn spawn(msg: &mut Message) {
    std::thread::spawn(move || msg.set_local(true));
}

fn main() {}

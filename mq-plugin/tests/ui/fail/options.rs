use mq_plugin::prelude::*;
mq_plugin::declare_plugin!();

#[mq_hook(initialize, fallback = complete)]
fn init() {}

#[mq_hook(smtp_in_connect, fallbak = complete)]
fn connect() {}

#[mq_hook(smtp_in_secure, fallback = stop)]
fn secure() {}

#[mq_hook(smtp_in_close, fallback = retry, fallback = complete)]
fn close() {}

fn main() {}

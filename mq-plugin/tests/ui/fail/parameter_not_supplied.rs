use mq_plugin::prelude::*;
mq_plugin::declare_plugin!();

#[mq_hook(smtp_in_rcptto)]
fn rcpt(_msg: &mut Message) {}

#[mq_hook(initialize)]
fn init(_ctx: &Context) {}

#[mq_hook(smtp_in_connect)]
fn connect(_n: u32) {}

fn main() {}

use mq_plugin::prelude::*;
mq_plugin::declare_plugin!();

#[mq_hook(smtp_in_rcptto)]
fn first() {}

#[mq_hook(smtp_in_rcptto)]
fn second() {}

fn main() {}

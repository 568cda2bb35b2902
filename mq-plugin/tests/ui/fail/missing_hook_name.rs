use mq_plugin::prelude::*;
mq_plugin::declare_plugin!();

#[mq_hook]
fn nothing() {}

fn main() {}

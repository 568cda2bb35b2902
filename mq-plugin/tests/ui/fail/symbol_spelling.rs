use mq_plugin::prelude::*;
mq_plugin::declare_plugin!();

#[mq_hook(mq_smtp_out_data)]
fn sign() {}

#[mq_hook(Continue)]
fn resume() {}

fn main() {}

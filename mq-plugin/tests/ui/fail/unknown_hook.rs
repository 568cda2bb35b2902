use mq_plugin::prelude::*;
mq_plugin::declare_plugin!();

#[mq_hook(smtp_out_dta)]
fn sign() {}

#[mq_hook(frobnicate)]
fn other() {}

fn main() {}

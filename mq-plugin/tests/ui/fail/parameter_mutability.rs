use mq_plugin::prelude::*;
mq_plugin::declare_plugin!();

#[mq_hook(smtp_in_connect)]
fn connect(_conn: &mut Connection) {}

#[mq_hook(smtp_in_mailfrom)]
fn twice(_a: &Address, _b: &Address) {}

fn main() {}

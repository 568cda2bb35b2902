use mq_plugin::prelude::*;
mq_plugin::declare_plugin!();

#[mq_hook(smtp_in_connect)]
fn connect(_conn: Connection) {}

#[mq_hook(MQ_Retry)]
fn old_spelling() {}

fn main() {}

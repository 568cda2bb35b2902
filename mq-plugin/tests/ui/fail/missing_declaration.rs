use mq_plugin::prelude::*;

#[mq_hook(smtp_in_connect)]
fn connect() {}

fn main() {}

use mq_plugin::prelude::*;
mq_plugin::declare_plugin!();

#[mq_hook(smtp_in_connect)]
fn connect() -> bool {
    false
}

#[mq_hook(initialize)]
fn init() -> Flow {
    Flow::Continue
}

fn main() {}

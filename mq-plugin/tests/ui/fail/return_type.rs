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

#[mq_hook(smtp_in_rcptto)]
async fn async_wrong() -> u8 {
    0
}

fn main() {}

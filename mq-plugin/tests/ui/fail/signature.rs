use mq_plugin::prelude::*;
mq_plugin::declare_plugin!();

#[mq_hook(smtp_in_connect)]
unsafe fn unsafe_hook() {}

#[mq_hook(smtp_in_secure)]
extern "C" fn extern_hook() {}

#[mq_hook(smtp_in_close)]
fn generic_hook<T>() {}

#[mq_hook(initialize)]
async fn async_lifecycle_hook() {}

fn main() {}

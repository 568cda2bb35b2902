use mq_plugin::prelude::*;
mq_plugin::declare_plugin!();

#[mq_hook(smtp_in_rcptto, deadline = "1s")]
fn not_async() {}

#[mq_hook(smtp_in_connect, deadline = "soon")]
async fn bad_duration() {}

#[mq_hook(smtp_in_secure, deadline = 500)]
async fn not_a_string() {}

#[mq_hook(smtp_in_close, dedline = "1s")]
async fn typo() {}

fn main() {}

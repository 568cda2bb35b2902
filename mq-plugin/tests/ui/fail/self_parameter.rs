use mq_plugin::prelude::*;
mq_plugin::declare_plugin!();

struct Plugin;

impl Plugin {
    #[mq_hook(smtp_in_connect)]
    fn connect(&self) {}
}

fn main() {}

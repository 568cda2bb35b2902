//! A plugin cannot register an entry point of its own for a hook the
//! declaration exports (`mq_smtp_in_close`, `mq_context_cleanup`): such an
//! entry point could return `true` and never resume. `Authored` is an
//! `unsafe trait`, so safe code cannot implement it.
#![forbid(unsafe_code)]
use mq_plugin::__private::v1::{Authored, RawHook, MQ_Connection, MQ_Context};
mq_plugin::declare_plugin!();

extern "C" fn takes_control_forever(_: *mut MQ_Context, _: *mut MQ_Connection) -> bool {
    true
}

impl Authored<11> for __add_mq_plugin_declare_plugin_to_lib_rs {
    const RAW: RawHook = RawHook::Connection(takes_control_forever);
}

fn main() {}

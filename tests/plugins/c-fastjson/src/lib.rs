//! A C plugin written from MailerQ's public plugin documentation only
//! (`fastjson.c`): its own declarations of the `MQ_*` functions it calls,
//! no `mailerq.h`, and libfastjson for the message JSON, as MailerQ's
//! `MQ_json` page prescribes. End-to-end tests load it in mq-host to show
//! that such a plugin reads and changes messages in both directions.

/// Path of the compiled plugin (`libmq_test_c_fastjson.so`) in this
/// crate's build output directory.
pub const PLUGIN_SO: &str = concat!(env!("OUT_DIR"), "/libmq_test_c_fastjson.so");

//! A hostile C plugin (`hostile.c`) for the soundness suite: it calls the
//! host's functions from a thread of its own, with handles of a closed
//! connection and of a finished message, and with values that are no
//! handles at all. The host must refuse each call (logged and counted)
//! without reading memory it does not own. The scenario comes from
//! `<file>.plan` next to the copy, as for the C probe.

/// Path of the compiled plugin in this crate's build output directory.
pub const PLUGIN_SO: &str = concat!(env!("OUT_DIR"), "/libmq_test_c_hostile.so");

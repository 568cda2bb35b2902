//! `MQ_send`: where a plugin's bytes go, and where they cannot.

use super::{buffer, connection, host_call};
use crate::observe::{Counters, Priority};
use crate::runtime::connection::ConnectionState;
use crate::runtime::worker::{self, Worker};
use mq_abi::sys::*;
use std::ffi::c_void;

host_fn! {
    /// `size_t MQ_send(MQ_Connection*, const void *buf, size_t size)`.
    ///
    /// MailerQ documents it as writing raw bytes straight onto the SMTP
    /// connection. mq-host reads that as: the bytes a plugin sends during an incoming hook's
    /// step are that step's reply to the client, and replace the host's
    /// own reply to the command (a 4xx/5xx reply refuses the command); a
    /// plugin that sends its reply and then completes has answered the
    /// command itself. They are queued and the count is returned (cut at
    /// the session's output limit, and reported, beyond it).
    ///
    /// Where no client can get the bytes, it returns 0 and logs why, once
    /// per plugin and hook (every call counts in
    /// `plugin_send_undeliverable`): in `smtp_in_close` (the host sends its
    /// client nothing more), on a delivery connection's `smtp_out_*` hooks
    /// (the host speaks SMTP to the relay itself), and when no hook runs on
    /// the connection (between steps no reply of the host's carries them).
    /// NULL with a size is refused (a misuse) and returns 0.
    fn MQ_send(conn: *mut MQ_Connection, buf: *const c_void, size: usize) -> usize = 0; {
        let Some((conn, plugin)) = connection("MQ_send", conn) else {
            return 0;
        };
        // SAFETY: the C API: `buf` is valid for `size` bytes.
        let Some(data) = (unsafe { buffer("MQ_send", plugin, buf.cast(), size) }) else {
            return 0;
        };
        if let Some(w) = worker::current() {
            if let Some((hook, why)) = no_client_for(&w, &conn) {
                send_undeliverable(&w, plugin, hook, why, data.len());
                return 0;
            }
        }
        let taken = conn.send(data);
        if taken < data.len() {
            output_cut(data.len() - taken, conn.send_limit.get());
        }
        taken
    }
}

/// Why bytes a plugin sends on `conn` now cannot reach an SMTP client, if
/// they cannot: the hook that runs on it (or none) and the reason.
fn no_client_for(w: &Worker, conn: &ConnectionState) -> Option<(&'static str, &'static str)> {
    // The chains are never borrowed while a plugin runs; if they were (a
    // host bug), the bytes are queued as usual.
    let chains = w.chains.try_borrow().ok()?;
    match chains.get(&conn.id).map(|c| c.chain.hook()) {
        None => Some((
            "(no hook running)",
            "no hook runs on the connection, so no reply of the host's carries the bytes",
        )),
        Some(hook) if hook.id == mq_hook_table::HookId::SmtpInClose => Some((
            hook.name,
            "the connection is closing and its client is sent nothing more",
        )),
        Some(hook) if hook.stage == mq_hook_table::Stage::Outgoing => Some((
            hook.name,
            "on a delivery connection the host speaks SMTP to the relay itself",
        )),
        Some(_) => None,
    }
}

/// Counts an `MQ_send` whose bytes no client could get, and logs it the
/// first time for this plugin and hook.
fn send_undeliverable(w: &Worker, plugin: usize, hook: &'static str, why: &str, len: usize) {
    Counters::bump(&w.shared.counters.plugin_send_undeliverable);
    let first = w
        .shared
        .send_undeliverable_reported
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert((plugin, hook));
    if first {
        let name = w.shared.plugin_name(plugin);
        w.log(
            Priority::Warning,
            format!(
                "plugin {name}: MQ_send in {hook} sent nothing and returned 0 ({len} byte(s)): {why}; \
                 reported once per plugin and hook (every call counts in plugin_send_undeliverable)"
            ),
        );
    }
}

/// Reports an `MQ_send` cut at the connection's output limit (a client
/// that does not read, or a plugin that sends without bound).
fn output_cut(cut: usize, limit: usize) {
    let Some(w) = worker::current() else { return };
    Counters::bump(&w.shared.counters.plugin_output_cut);
    let name = worker::calling().map_or("(unknown)", |p| w.shared.plugin_name(p));
    w.log(
        Priority::Warning,
        format!("plugin {name}: MQ_send cut: {cut} byte(s) over the connection's output limit of {limit} bytes were not sent"),
    );
}

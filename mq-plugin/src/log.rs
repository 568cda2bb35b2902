//! Logging: the `log` facade, written to the host through `MQ_log`.
//!
//! The first hook call installs a logger (unless the plugin installed its
//! own), so `log::info!` and friends work in every hook and callback.
//! `error!` maps to `MQ_CRIT`, `warn!` to `MQ_WARN`, everything else to
//! `MQ_INFO`. The maximum level is `info`, or what the environment variable
//! `MQ_PLUGIN_LOG` says (`error`, `warn`, `info`, `debug`, `trace`, `off`).
//! Each line is prefixed with the plugin's name.

use crate::host::host;
use crate::sys::{MQ_CRIT, MQ_INFO, MQ_WARN};
use std::ffi::{c_int, CString};
use std::sync::OnceLock;

static PLUGIN_NAME: OnceLock<&'static str> = OnceLock::new();

/// A priority of `MQ_log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// `MQ_CRIT`.
    Critical,
    /// `MQ_WARN`.
    Warning,
    /// `MQ_INFO`.
    Info,
}

impl Priority {
    fn raw(self) -> c_int {
        match self {
            Priority::Critical => MQ_CRIT,
            Priority::Warning => MQ_WARN,
            Priority::Info => MQ_INFO,
        }
    }
}

/// Writes one line to the host's log as is (no plugin prefix). `MQ_log` is
/// thread-safe, so this may be called from any thread.
///
/// ```no_run
/// mq_plugin::log::write(mq_plugin::log::Priority::Info, "hello from a plugin");
/// ```
pub fn write(priority: Priority, text: &str) {
    log_text(priority.raw(), text);
}

pub(crate) fn log_text(priority: c_int, text: &str) {
    // Interior NUL bytes would cut the line short; show them instead.
    let line = CString::new(text.replace('\0', "\\0")).expect("NUL bytes were replaced");
    // SAFETY: MQ_log takes a NUL-terminated string it copies; it is thread-safe.
    unsafe { host().api.log(priority, line.as_ptr()) }
}

/// The name used to prefix log lines; set by the plugin declaration.
pub(crate) fn plugin_name() -> &'static str {
    PLUGIN_NAME.get().copied().unwrap_or("mq-plugin")
}

struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let priority = match record.level() {
            log::Level::Error => MQ_CRIT,
            log::Level::Warn => MQ_WARN,
            _ => MQ_INFO,
        };
        log_text(priority, &format!("[{}] {}", plugin_name(), record.args()));
    }

    fn flush(&self) {}
}

/// Installs the host logger once; keeps a logger the plugin set itself.
pub(crate) fn init(plugin: &'static str) {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let _ = PLUGIN_NAME.set(plugin);
        if log::set_logger(&HostLogger).is_ok() {
            let level = std::env::var("MQ_PLUGIN_LOG")
                .ok()
                .and_then(|v| v.parse::<log::LevelFilter>().ok())
                .unwrap_or(log::LevelFilter::Info);
            log::set_max_level(level);
        }
    });
}

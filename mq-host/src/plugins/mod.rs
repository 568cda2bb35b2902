//! Plugins: finding and loading them (`loader`, with the ELF checks made
//! before the dynamic loader sees a file in `elf`), what the host knows of
//! a loaded one, and calling their hooks (`call`, the one place that does).

pub(crate) mod call;
mod elf;
mod loader;

pub use loader::{discover, HostMode, LoadError, LoadErrorKind, PluginInfo, PluginKind};
pub(crate) use loader::{inspect, load, LoadedPlugin};

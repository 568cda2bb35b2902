//! The runtime: worker threads, each with its event loop, the objects
//! plugins get handles to, and the chains that walk an event through the
//! plugins.

pub(crate) mod chain;
pub(crate) mod connection;
pub(crate) mod dispatch;
pub mod event_loop;
pub(crate) mod fastjson;
pub(crate) mod handles;
pub(crate) mod hold;
pub(crate) mod message;
pub(crate) mod misuse;
pub(crate) mod watchdog;
pub(crate) mod worker;

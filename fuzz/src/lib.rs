//! Fuzzing mq-host's SMTP-in over real sockets: the parts of the
//! `smtp_session` target that are not libFuzzer glue.
//!
//! - [`script`]: how an input becomes client connections;
//! - [`server`]: the host under test, started once per process;
//! - [`client`]: plays a connection, with every wait bounded;
//! - [`replies`]: the rules every reply stream must follow.

pub mod client;
pub mod replies;
pub mod script;
pub mod server;

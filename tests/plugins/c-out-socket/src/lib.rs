//! A C test plugin (`out_socket.c`) that, in `smtp_out_data` and
//! `smtp_out_sent`, asks `MQ_fileDescriptor` for the delivery
//! connection's socket and logs both ends of it, as read with
//! `getsockname` and `getpeername`:
//! `out-socket <hook> fd <n> local <ip> <port> peer <ip> <port>`, or
//! `out-socket <hook> fd <n> not a socket: <error>`.

/// Path of the compiled plugin (`libmq_test_c_out_socket.so`) in this
/// crate's build output directory.
pub const PLUGIN_SO: &str = concat!(env!("OUT_DIR"), "/libmq_test_c_out_socket.so");

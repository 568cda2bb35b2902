//! Compiles `out_socket.c` into `libmq_test_c_out_socket.so`.

// This package sits three levels below the workspace root.
include!("../../../build-support/c_plugin.rs");

fn main() {
    build_c_plugin(
        std::path::Path::new("out_socket.c"),
        std::path::Path::new("../../../include"),
        "libmq_test_c_out_socket.so",
    );
}

//! Compiles `fastjson.c` into `libmq_test_c_fastjson.so`.

// This package sits three levels below the workspace root.
include!("../../../build-support/c_plugin.rs");

fn main() {
    // The include directory is not used: the plugin declares what it uses
    // itself, from MailerQ's documentation.
    build_c_plugin(
        std::path::Path::new("fastjson.c"),
        std::path::Path::new("."),
        "libmq_test_c_fastjson.so",
    );
}

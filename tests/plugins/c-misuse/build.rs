//! Compiles `misuse.c` into `libmq_test_c_misuse.so`.

// This package sits three levels below the workspace root.
include!("../../../build-support/c_plugin.rs");

fn main() {
    build_c_plugin(
        std::path::Path::new("misuse.c"),
        std::path::Path::new("../../../include"),
        "libmq_test_c_misuse.so",
    );
}

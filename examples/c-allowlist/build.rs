//! Compiles `allowlist.c` into `libmq_example_c_allowlist.so`.

include!("../../build-support/c_plugin.rs");

fn main() {
    build_c_plugin(
        std::path::Path::new("allowlist.c"),
        std::path::Path::new("../../include"),
        "libmq_example_c_allowlist.so",
    );
}

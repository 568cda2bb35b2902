//! Compiles `hooks.c` into `libmq_bench_c_hooks.so`.

// This package sits three levels below the workspace root.
include!("../../../build-support/c_plugin.rs");

fn main() {
    build_c_plugin(
        std::path::Path::new("hooks.c"),
        std::path::Path::new("../../../include"),
        "libmq_bench_c_hooks.so",
    );
}

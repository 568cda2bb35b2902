//! Exports the host's `MQ_*` C functions from the `mq-host` binary and this
//! package's binary, so that C plugins (and Rust plugins in a host
//! without the function table) resolve them with `dlopen`. Any other
//! executable that embeds the library needs the same linker argument; see
//! the crate docs.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=MQ_*");
    println!("cargo:rerun-if-changed=build.rs");
}

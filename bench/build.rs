//! Bench binaries embed mq-host, so they must export its `MQ_*` functions
//! for C plugins (see mq-host's crate docs).
fn main() {
    println!("cargo:rustc-link-arg-benches=-Wl,--export-dynamic-symbol=MQ_*");
    println!("cargo:rerun-if-changed=build.rs");
}

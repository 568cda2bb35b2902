//! This crate's own tests load C plugins, so their binaries export the
//! host's `MQ_*` functions (see mq-host's crate docs). A plugin crate that
//! tests C plugins in its chain needs the same line in its own build.rs.
fn main() {
    println!("cargo:rustc-link-arg-tests=-Wl,--export-dynamic-symbol=MQ_*");
    println!("cargo:rerun-if-changed=build.rs");
}

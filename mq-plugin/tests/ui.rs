//! Compile-time behaviour of `#[mq_hook]` and `declare_plugin!`: what must
//! compile, and the exact error for each mistake (reviewed `.stderr` files).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}

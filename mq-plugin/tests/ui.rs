//! Compile-time behaviour of `#[mq_hook]` and `declare_plugin!`: what must
//! compile, and the exact error for each mistake (reviewed `.stderr` files).
//!
//! Besides the hand-written cases, pass cases are generated from the hook
//! table: every hook with every subset of its parameters (and each full set
//! in every order), as sync and as async hooks.

use mq_plugin::hook_table::{RustParam, HOOKS};
use std::fmt::Write;

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    for file in generated_pass_cases() {
        t.pass(file);
    }
    t.compile_fail("tests/ui/fail/*.rs");
}

/// Every subset of `params`, and every order of the full set.
fn variants(params: &[RustParam]) -> Vec<Vec<RustParam>> {
    let mut out: Vec<Vec<RustParam>> = (0..1u32 << params.len())
        .map(|mask| {
            params
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, p)| *p)
                .collect()
        })
        .collect();
    let mut full = params.to_vec();
    permutations(&mut full, 0, &mut out);
    out.dedup();
    out
}

fn permutations(items: &mut Vec<RustParam>, k: usize, out: &mut Vec<Vec<RustParam>>) {
    if k == items.len() {
        if !out.contains(items) {
            out.push(items.clone());
        }
        return;
    }
    for i in k..items.len() {
        items.swap(k, i);
        permutations(items, k + 1, out);
        items.swap(k, i);
    }
}

/// Writes the generated cases: file `n` gives every hook its `n`-th variant.
fn generated_pass_cases() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-generated");
    std::fs::create_dir_all(&dir).unwrap();
    let all: Vec<Vec<Vec<RustParam>>> = HOOKS
        .iter()
        .map(|h| variants(h.shape.rust_params()))
        .collect();
    let files = all.iter().map(Vec::len).max().unwrap();
    (0..files)
        .map(|n| {
            let mut src =
                String::from("use mq_plugin::prelude::*;\nmq_plugin::declare_plugin!();\n");
            for (hook, variants) in HOOKS.iter().zip(&all) {
                let params = &variants[n % variants.len()];
                let args: Vec<String> = params
                    .iter()
                    .enumerate()
                    .map(|(i, p)| format!("_p{i}: {}", p.rust_type()))
                    .collect();
                let asyncness = if hook.may_take_control && n % 2 == 1 {
                    "async "
                } else {
                    ""
                };
                let ret = if hook.may_take_control {
                    " -> Flow"
                } else {
                    ""
                };
                let body = if hook.may_take_control {
                    "Flow::Continue"
                } else {
                    ""
                };
                writeln!(
                    src,
                    "#[mq_hook({})]\n{asyncness}fn h_{}({}){ret} {{ {body} }}",
                    hook.name,
                    hook.name,
                    args.join(", ")
                )
                .unwrap();
            }
            src.push_str("fn main() {}\n");
            let path = dir.join(format!("every_hook_variant_{n:02}.rs"));
            std::fs::write(&path, src).unwrap();
            path
        })
        .collect()
}

#[test]
fn variants_cover_subsets_and_orders() {
    let three = [
        RustParam::Context,
        RustParam::Connection,
        RustParam::Message,
    ];
    let v = variants(&three);
    assert_eq!(
        v.len(),
        8 + 5,
        "8 subsets, plus the 5 other orders of the full set"
    );
    assert!(v.contains(&vec![]));
    assert!(v.contains(&vec![
        RustParam::Message,
        RustParam::Connection,
        RustParam::Context
    ]));
}

//! The macros of [`mq-plugin`](https://docs.rs/mq-plugin): `#[mq_hook]` and
//! `declare_plugin!`. Use them through `mq_plugin`, which re-exports both.
//!
//! `#[mq_hook(<hook>)]` turns a plain Rust function into the MailerQ C
//! symbol `mq_<hook>`; `declare_plugin!()` (once per crate, in `lib.rs`)
//! exports `mq_version` and the plugin's root module. Parsing lives in
//! `args`, every check in `validate` (which returns a plan), lowering in
//! `codegen`, messages in `diag`.

#![forbid(unsafe_code)]

use proc_macro::TokenStream;

mod args;
mod codegen;
mod declare;
mod diag;
mod validate;

/// Makes a function a MailerQ hook (documented on `mq_plugin::mq_hook`).
#[proc_macro_attribute]
pub fn mq_hook(attr: TokenStream, item: TokenStream) -> TokenStream {
    codegen::expand_hook(attr.into(), item.into()).into()
}

/// Declares the crate a MailerQ plugin (documented on `mq_plugin::declare_plugin`).
#[proc_macro]
pub fn declare_plugin(input: TokenStream) -> TokenStream {
    declare::expand(input.into()).into()
}

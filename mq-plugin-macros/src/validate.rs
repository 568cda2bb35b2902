//! Every check of a hook definition. Returns a [`Plan`] for codegen, or all
//! errors at once, each on the offending token.

use crate::args::HookArgs;
use crate::diag::{did_you_mean, list};
use mq_hook_table::{Hook, RustParam, HOOKS};
use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Expr, FnArg, ItemFn, Lifetime, Pat, Type};

/// What codegen needs to lower one hook.
pub(crate) struct Plan {
    pub(crate) hook: &'static Hook,
    /// The flow taken on an `Err` or a panic.
    pub(crate) fallback: Fallback,
    /// The parameter kinds in the author's order.
    pub(crate) params: Vec<RustParam>,
    /// An `async fn`: lowered through the executor.
    pub(crate) is_async: bool,
    /// `deadline = ".."` in milliseconds (async hooks only).
    pub(crate) deadline_ms: Option<u64>,
}

/// Collects errors so that all are reported together.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        self.add(syn::Error::new(span, message));
    }

    /// An error over all of `tokens`: on stable a span cannot be joined, so
    /// `push(lifetime.span(), ..)` would underline the `'` only.
    pub(crate) fn push_spanned(
        &mut self,
        tokens: impl quote::ToTokens,
        message: impl std::fmt::Display,
    ) {
        self.add(syn::Error::new_spanned(tokens, message));
    }

    fn add(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub(crate) fn into_result<T>(self, value: T) -> syn::Result<T> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(value),
        }
    }
}

pub(crate) fn validate(args: &HookArgs, func: &ItemFn) -> syn::Result<Plan> {
    let mut errors = Errors::default();
    let hook = check_hook_name(args, func, &mut errors);
    let options = check_options(args, hook, func, &mut errors);
    check_signature(func, hook, &mut errors);
    let params = hook
        .map(|h| check_params(h, func, &mut errors))
        .unwrap_or_default();
    match hook {
        Some(hook) => errors.into_result(Plan {
            hook,
            fallback: options.fallback,
            params,
            is_async: func.sig.asyncness.is_some(),
            deadline_ms: options.deadline_ms,
        }),
        None => Err(errors.0.expect("a missing hook was reported")),
    }
}

fn check_hook_name(args: &HookArgs, func: &ItemFn, errors: &mut Errors) -> Option<&'static Hook> {
    let names = HOOKS.iter().map(|h| h.name);
    let Some((name, span)) = &args.hook else {
        errors.push(
            func.sig.ident.span(),
            format!("`#[mq_hook]` needs the hook's name, e.g. `#[mq_hook(smtp_in_rcptto)]`; hooks are {}", list(names)),
        );
        return None;
    };
    if let Some(hook) = mq_hook_table::by_name(name) {
        return Some(hook);
    }
    if let Some(hook) = mq_hook_table::by_symbol(name) {
        errors.push(
            *span,
            format!(
                "write the hook without the `mq_` prefix: `#[mq_hook({})]`",
                hook.name
            ),
        );
        return None;
    }
    let full = name.to_ascii_lowercase();
    // `MQ_continue` (5.x) and `MQ_Continue` (3.x/4.x) are host functions too.
    let lower = full.strip_prefix("mq_").unwrap_or(&full).to_owned();
    let message = if matches!(lower.as_str(), "continue" | "complete" | "retry") {
        format!("`{name}` is a host function (`MQ_{lower}`), not a hook; return `Flow::{}` from a hook instead", capitalize(&lower))
    } else if let Some(similar) = did_you_mean(&lower, names.clone()) {
        format!("unknown hook `{name}`; did you mean `{similar}`?")
    } else {
        format!("unknown hook `{name}`; hooks are {}", list(names))
    };
    errors.push(*span, message);
    None
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// The flow a hook takes when it returns `Err` or panics (`fallback = ..`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallback {
    Continue,
    Complete,
    Retry,
}

impl Fallback {
    /// The `mq_plugin::Flow` variant's name.
    pub(crate) fn variant(self) -> &'static str {
        match self {
            Fallback::Continue => "Continue",
            Fallback::Complete => "Complete",
            Fallback::Retry => "Retry",
        }
    }
}

/// The options as checked: the fallback flow and the deadline in ms.
struct Options {
    fallback: Fallback,
    deadline_ms: Option<u64>,
}

fn check_options(
    args: &HookArgs,
    hook: Option<&'static Hook>,
    func: &ItemFn,
    errors: &mut Errors,
) -> Options {
    let mut options = Options {
        fallback: Fallback::Continue,
        deadline_ms: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in &args.options {
        let k = key.to_string();
        if seen.contains(&k) {
            errors.push(key.span(), format!("`{k}` is given twice"));
            continue;
        }
        seen.push(k.clone());
        let lifecycle = hook.is_some_and(|h| !h.may_take_control);
        match k.as_str() {
            "fallback" => {
                if lifecycle {
                    errors.push(key.span(), "`fallback` applies to SMTP hooks only: lifecycle hooks cannot take control");
                }
                match flow_name(value) {
                    Some(f) => options.fallback = f,
                    None => errors.push(
                        value.span(),
                        "`fallback` is one of `continue`, `complete` or `retry`",
                    ),
                }
            }
            "deadline" => {
                if func.sig.asyncness.is_none() || lifecycle {
                    errors.push(
                        key.span(),
                        "`deadline` applies to `async fn` SMTP hooks only: a plain `fn` returns before the host goes on",
                    );
                }
                match duration_ms(value) {
                    Some(ms) => options.deadline_ms = Some(ms),
                    None => errors.push(
                        value.span(),
                        "`deadline` is a duration in a string, such as `\"500ms\"` or `\"2s\"`",
                    ),
                }
            }
            other => {
                let hint = did_you_mean(other, ["fallback", "deadline"])
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| "; the options are `fallback` and `deadline`".to_owned());
                errors.push(key.span(), format!("unknown option `{other}`{hint}"));
            }
        }
    }
    options
}

/// `"500ms"`, `"2s"`, `"1.5s"` in milliseconds (at least 1).
fn duration_ms(value: &Expr) -> Option<u64> {
    let Expr::Lit(syn::ExprLit {
        lit: syn::Lit::Str(s),
        ..
    }) = value
    else {
        return None;
    };
    let text = s.value();
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    let value: f64 = number.trim().parse().ok()?;
    let ms = (value * scale).round();
    (value.is_finite() && ms >= 1.0 && ms <= u64::MAX as f64).then_some(ms as u64)
}

fn flow_name(value: &Expr) -> Option<Fallback> {
    let text = match value {
        Expr::Path(p) => p.path.segments.last()?.ident.to_string(),
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => s.value(),
        // `continue` is a keyword: it parses as a `continue` expression.
        Expr::Continue(c) if c.label.is_none() => "continue".to_owned(),
        _ => return None,
    };
    match text.to_ascii_lowercase().as_str() {
        "continue" => Some(Fallback::Continue),
        "complete" => Some(Fallback::Complete),
        "retry" => Some(Fallback::Retry),
        _ => None,
    }
}

fn check_signature(func: &ItemFn, hook: Option<&'static Hook>, errors: &mut Errors) {
    let sig = &func.sig;
    if let (Some(a), Some(hook)) = (&sig.asyncness, hook) {
        if !hook.may_take_control {
            errors.push(
                a.span(),
                format!(
                    "`{}` cannot be an `async fn`: lifecycle hooks cannot take control, \
                     so they run to the end inside the call (they may block)",
                    hook.name
                ),
            );
        }
    }
    if let Some(u) = &sig.unsafety {
        errors.push(
            u.span(),
            "a hook cannot be an `unsafe fn`: the framework calls it from safe code",
        );
    }
    if let Some(abi) = &sig.abi {
        errors.push(
            abi.span(),
            "remove `extern`: `#[mq_hook]` generates the `extern \"C\"` function itself",
        );
    }
    if let Some(c) = &sig.constness {
        errors.push(c.span(), "a hook cannot be a `const fn`");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(
            sig.generics.span(),
            "a hook cannot be generic: the host calls one concrete function",
        );
    }
    if let Some(v) = &sig.variadic {
        errors.push(v.span(), "a hook cannot be variadic");
    }
}

fn check_params(hook: &'static Hook, func: &ItemFn, errors: &mut Errors) -> Vec<RustParam> {
    let supplied = hook.shape.rust_params();
    let supplied_list = || {
        if supplied.is_empty() {
            format!("`{}` takes no parameters", hook.name)
        } else {
            format!(
                "`{}` supplies {}",
                hook.name,
                list(supplied.iter().map(|p| p.rust_type()))
            )
        }
    };
    let mut params = Vec::new();
    for input in &func.sig.inputs {
        let (pat, ty) = match input {
            FnArg::Receiver(r) => {
                errors.push(r.span(), "a hook is a free function: remove `self`");
                continue;
            }
            FnArg::Typed(t) => (&t.pat, &t.ty),
        };
        let Some((kind, mutable)) = classify(ty) else {
            let message = match by_value_handle(ty) {
                Some(handle) => format!("take `&{handle}`: handles are borrowed for the hook call"),
                None => format!(
                    "a hook parameter is identified by its type, and this is none of them; {}",
                    supplied_list()
                ),
            };
            errors.push(ty.span(), message);
            continue;
        };
        if let Some(lifetime) = explicit_lifetime(ty) {
            errors.push_spanned(lifetime, lifetime_message(kind, lifetime, pat));
        }
        if !supplied.contains(&kind) {
            errors.push(
                ty.span(),
                format!(
                    "`{}` does not supply `{}`; {}",
                    hook.name,
                    kind.rust_type(),
                    supplied_list()
                ),
            );
            continue;
        }
        match (kind, mutable) {
            (RustParam::Message, _) => {}
            (_, true) => {
                errors.push(
                    ty.span(),
                    format!(
                        "take `{}` by shared reference: the handle needs no `&mut`",
                        kind.rust_type()
                    ),
                );
                continue;
            }
            _ => {}
        }
        if params.contains(&kind) {
            errors.push(ty.span(), format!("`{}` is taken twice", kind.rust_type()));
            continue;
        }
        params.push(kind);
    }
    params
}

/// The lifetime written on a parameter's reference, unless it is `'_`
/// (which means the same as none).
fn explicit_lifetime(ty: &Type) -> Option<&Lifetime> {
    let Type::Reference(r) = ty else { return None };
    r.lifetime.as_ref().filter(|l| l.ident != "_")
}

/// Why a parameter cannot name a lifetime, and what to keep instead. An
/// async hook's future is handed `'static` references that stay valid only
/// until it completes; the hook body keeps them in by not knowing their
/// lifetime. A named one would let it escape: `&'static Connection` into a
/// `thread_local!` or a spawned task, used after the host freed it.
fn lifetime_message(kind: RustParam, lifetime: &Lifetime, pat: &Pat) -> String {
    let default_name = match kind {
        RustParam::Context => "ctx",
        RustParam::Connection => "conn",
        RustParam::Address => "addr",
        RustParam::Credentials => "credentials",
        RustParam::Mime => "mime",
        RustParam::Message => "msg",
    };
    let name = match pat {
        Pat::Ident(p) => p.ident.to_string(),
        _ => default_name.to_owned(),
    };
    let (freed, keep) = match kind {
        RustParam::Context => (
            "the host frees the context at `context_cleanup`",
            format!("keep what must last in its per-context data, e.g. `{name}.data_or_insert_with(|| ..)`"),
        ),
        RustParam::Connection => (
            "the host frees it when the hook is over",
            format!("copy what you need to keep, e.g. `{name}.peer_addr()`"),
        ),
        RustParam::Address => (
            "the host frees it when the hook is over",
            format!("copy what you need to keep, e.g. `{name}.email().map(str::to_owned)`"),
        ),
        RustParam::Credentials => (
            "the host frees them when the hook is over",
            format!("copy what you need to keep, e.g. `{name}.login().to_vec()`"),
        ),
        RustParam::Mime => (
            "the host frees the data when the hook is over",
            format!("copy what you need to keep, e.g. `{name}.to_vec()`"),
        ),
        RustParam::Message => (
            "the host frees it when the hook is over",
            format!("copy what you need to keep, e.g. `{name}.json()` or `{name}.mime().map(<[u8]>::to_vec)`"),
        ),
    };
    format!(
        "remove the lifetime `{lifetime}`: `{}` is borrowed for the hook call only ({freed}); {keep}",
        kind.rust_type()
    )
}

/// The handle a by-value parameter names (`Connection` instead of `&Connection`).
fn by_value_handle(ty: &Type) -> Option<String> {
    let Type::Path(p) = ty else { return None };
    let name = p.path.segments.last()?.ident.to_string();
    matches!(
        name.as_str(),
        "Context" | "Connection" | "Address" | "Credentials" | "Message"
    )
    .then_some(name)
}

/// The parameter kind of a type and whether it is a `&mut`.
fn classify(ty: &Type) -> Option<(RustParam, bool)> {
    let Type::Reference(r) = ty else { return None };
    let mutable = r.mutability.is_some();
    match &*r.elem {
        Type::Slice(s) => match &*s.elem {
            Type::Path(p) if p.path.is_ident("u8") => Some((RustParam::Mime, mutable)),
            _ => None,
        },
        Type::Path(p) if p.qself.is_none() => {
            let last = p.path.segments.last()?;
            if !last.arguments.is_empty() {
                return None;
            }
            let kind = match last.ident.to_string().as_str() {
                "Context" => RustParam::Context,
                "Connection" => RustParam::Connection,
                "Address" => RustParam::Address,
                "Credentials" => RustParam::Credentials,
                "Message" => RustParam::Message,
                _ => return None,
            };
            Some((kind, mutable))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn plan(attr: proc_macro2::TokenStream, item: proc_macro2::TokenStream) -> syn::Result<Plan> {
        let args = crate::args::parse(attr)?;
        let func: ItemFn = syn::parse2(item)?;
        validate(&args, &func)
    }

    #[test]
    fn accepts_any_subset_in_any_order() {
        let p = plan(
            quote!(smtp_out_data),
            quote!(
                fn f(m: &mut Message, c: &mq_plugin::Context) -> Flow {
                    todo!()
                }
            ),
        )
        .unwrap();
        assert_eq!(p.params, vec![RustParam::Message, RustParam::Context]);
        assert_eq!(p.fallback, Fallback::Continue);
        let p = plan(
            quote!(smtp_in_data, fallback = complete),
            quote!(
                fn f(mime: &[u8]) {}
            ),
        )
        .unwrap();
        assert_eq!(p.params, vec![RustParam::Mime]);
        assert_eq!(p.fallback, Fallback::Complete);
    }

    #[test]
    fn reports_every_problem() {
        let err = plan(
            quote!(smtp_out_dta),
            quote!(
                fn f() {}
            ),
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("did you mean `smtp_out_data`"),
            "{err}"
        );
        let err = plan(
            quote!(mq_smtp_out_data),
            quote!(
                fn f() {}
            ),
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("without the `mq_` prefix"),
            "{err}"
        );
        let err = plan(
            quote!(smtp_in_rcptto),
            quote!(
                fn f(m: &mut Message) {}
            ),
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("does not supply `&mut Message`"),
            "{err}"
        );
        let err = plan(
            quote!(initialize, fallback = retry),
            quote!(
                fn f() {}
            ),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("SMTP hooks only"), "{err}");
        let errs: Vec<String> = plan(
            quote!(smtp_in_connect, fallbak = retry),
            quote!(
                unsafe fn f<T>(x: &mut Connection) {}
            ),
        )
        .err()
        .unwrap()
        .into_iter()
        .map(|e| e.to_string())
        .collect();
        assert_eq!(errs.len(), 4, "{errs:?}");
    }

    fn messages(result: syn::Result<Plan>) -> Vec<String> {
        match result {
            Ok(_) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn refuses_a_named_lifetime_on_every_handle() {
        let cases = [
            (
                quote!(smtp_in_rcptto),
                quote!(ctx: &'static Context),
                "`&Context`",
                "ctx.data_or_insert_with",
            ),
            (
                quote!(smtp_in_connect),
                quote!(conn: &'static Connection),
                "`&Connection`",
                "conn.peer_addr()",
            ),
            (
                quote!(smtp_in_rcptto),
                quote!(rcpt: &'static Address),
                "`&Address`",
                "rcpt.email().map(str::to_owned)",
            ),
            (
                quote!(smtp_in_authenticate),
                quote!(c: &'static Credentials),
                "`&Credentials`",
                "c.login().to_vec()",
            ),
            (
                quote!(smtp_in_data),
                quote!(mime: &'static [u8]),
                "`&[u8]`",
                "mime.to_vec()",
            ),
            (
                quote!(smtp_in_message),
                quote!(msg: &'static mut Message),
                "`&mut Message`",
                "msg.json()",
            ),
        ];
        for (hook, param, handle, keep) in cases {
            for asyncness in [quote!(), quote!(async)] {
                let errs = messages(plan(hook.clone(), quote!(#asyncness fn f(#param) {})));
                assert_eq!(errs.len(), 1, "{param}: {errs:?}");
                assert!(
                    errs[0].starts_with("remove the lifetime `'static`: "),
                    "{errs:?}"
                );
                assert!(
                    errs[0].contains(&format!("{handle} is borrowed for the hook call only")),
                    "{errs:?}"
                );
                assert!(errs[0].contains(keep), "{errs:?}");
            }
        }
    }

    #[test]
    fn refuses_a_generic_lifetime_twice_and_allows_the_anonymous_one() {
        let errs = messages(plan(
            quote!(smtp_out_data),
            quote!(
                async fn f<'a>(m: &'a mut Message, c: &'a Connection) {}
            ),
        ));
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].contains("cannot be generic"), "{errs:?}");
        assert!(
            errs[1].starts_with("remove the lifetime `'a`: `&mut Message`"),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("remove the lifetime `'a`: `&Connection`"),
            "{errs:?}"
        );
        let p = plan(
            quote!(smtp_in_data),
            quote!(
                async fn f(c: &'_ Connection, mime: &'_ [u8]) {}
            ),
        )
        .unwrap();
        assert_eq!(p.params, vec![RustParam::Connection, RustParam::Mime]);
    }

    #[test]
    fn a_lifetime_is_reported_with_the_other_mistakes_of_the_parameter() {
        let errs = messages(plan(
            quote!(smtp_in_connect),
            quote!(
                fn f(_: &'static mut Connection, conn: &'static Connection, c: &Connection) {}
            ),
        ));
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(
            errs[0].ends_with("e.g. `conn.peer_addr()`"),
            "an unnamed parameter gets the usual name: {errs:?}"
        );
        assert!(errs[1].contains("needs no `&mut`"), "{errs:?}");
        assert!(errs[2].starts_with("remove the lifetime"), "{errs:?}");
        assert!(errs[3].contains("taken twice"), "{errs:?}");
    }
}

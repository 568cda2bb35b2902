//! Lowering a validated hook to MailerQ's C symbol. No checks here: every
//! decision was made by `validate`. The generated `extern "C"` function is
//! one call into `::mq_plugin::__private::v1`; the logic lives there.

use crate::validate::{validate, Plan};
use mq_hook_table::{Hook, RustParam, Shape};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ItemFn;

/// Hooks whose C symbol the plugin declaration always exports (it frees the
/// plugin's data after them); the author's function is reached through the
/// `Authored` impl instead.
pub(crate) const HOUSEKEEPING: &[&str] = &["context_cleanup", "smtp_in_close"];

pub(crate) fn expand_hook(attr: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let err = syn::Error::new(Span::call_site(), "`#[mq_hook]` goes on a plain `fn`")
                .to_compile_error();
            return quote!(#item #err);
        }
    };
    match crate::args::parse(attr).and_then(|args| validate(&args, &func)) {
        Ok(plan) => lower(&func, &plan),
        // Keep the function so that the rest of the crate still resolves it.
        Err(e) => {
            let err = e.to_compile_error();
            quote!(#func #err)
        }
    }
}

fn lower(func: &ItemFn, plan: &Plan) -> TokenStream {
    let rt = quote!(::mq_plugin::__private::v1);
    let hook = plan.hook;
    let index = hook.index();
    let user_fn = &func.sig.ident;
    let function_name = user_fn.to_string();
    let fallback = format_ident!("{}", plan.fallback.variant());
    let span = Span::mixed_site();
    let housekeeping = is_housekeeping(hook);
    let entry = if housekeeping {
        format_ident!("__mq_entry", span = span)
    } else {
        format_ident!("{}", hook.symbol)
    };
    let no_mangle = if housekeeping {
        quote!()
    } else {
        quote!(#[unsafe(no_mangle)])
    };
    let meta = format_ident!("__MQ_META", span = span);

    // The runtime's adapters take the hook's return type as an explicit
    // generic argument, written with the author's own tokens: a wrong return
    // type is then reported on it (the bound has `on_unimplemented`).
    let ret_ty = match &func.sig.output {
        syn::ReturnType::Type(_, ty) => quote!(#ty),
        syn::ReturnType::Default => quote_spanned!(func.sig.ident.span()=> ()),
    };
    let Entry {
        c_params,
        ret,
        body,
        raw_variant,
    } = entry_for(plan, func, &meta, &ret_ty);
    let body = if plan.is_async {
        async_body(plan, &call_args_async(plan), user_fn, &meta, &rt, &ret_ty)
    } else {
        body
    };

    let declaration =
        quote_spanned!(func.sig.ident.span()=> crate::__add_mq_plugin_declare_plugin_to_lib_rs);
    quote! {
        #func

        #[doc(hidden)]
        const _: () = {
            static #meta: #rt::HookMeta = #rt::HookMeta {
                hook: &#rt::HOOKS[#index],
                function: #function_name,
                plugin: <#declaration as #rt::PluginIdentity>::NAME,
                fallback: ::mq_plugin::Flow::#fallback,
            };

            #no_mangle
            #[allow(unused_variables)]
            unsafe extern "C" fn #entry(#c_params) #ret {
                // SAFETY: called by the host with the arguments of this hook.
                unsafe { #body }
            }

            // SAFETY: `#entry` is the entry point generated above for this hook.
            unsafe impl #rt::Authored<#index> for #declaration {
                const RAW: #rt::RawHook = #rt::RawHook::#raw_variant(#entry);
            }
        };
    }
}

/// The generated entry point's parts for the hook's shape: its C
/// parameters and return type, the synchronous body, the `RawHook` variant.
struct Entry {
    c_params: TokenStream,
    ret: TokenStream,
    body: TokenStream,
    raw_variant: TokenStream,
}

/// The hooks whose symbol the declaration exports itself (see
/// [`HOUSEKEEPING`]).
fn is_housekeeping(hook: &Hook) -> bool {
    HOUSEKEEPING.contains(&hook.name)
}

fn entry_for(plan: &Plan, func: &ItemFn, meta: &syn::Ident, ret_ty: &TokenStream) -> Entry {
    let rt = quote!(::mq_plugin::__private::v1);
    let span = Span::mixed_site();
    let ctx = format_ident!("__mq_context", span = span);
    let conn = format_ident!("__mq_connection", span = span);
    let third = format_ident!("__mq_argument", span = span);
    let user_fn = &func.sig.ident;
    let call_args = plan.params.iter().map(|kind| match kind {
        RustParam::Context => quote!(#ctx),
        RustParam::Connection => quote!(#conn),
        _ => quote!(#third),
    });
    let call = quote_spanned!(func.sig.ident.span()=> #user_fn(#(#call_args),*));
    let smtp = |params: TokenStream, adapter: TokenStream, variant: TokenStream| Entry {
        c_params: params,
        ret: quote!(-> bool),
        body: adapter,
        raw_variant: variant,
    };
    match plan.hook.shape {
        Shape::Global => Entry {
            c_params: quote!(),
            ret: quote!(),
            body: quote!(#rt::global::<#ret_ty, _>(&#meta, || #call)),
            raw_variant: quote!(Global),
        },
        Shape::Context => Entry {
            c_params: quote!(#ctx: *mut #rt::MQ_Context),
            ret: quote!(),
            body: quote!(#rt::context::<#ret_ty, _>(&#meta, #ctx, |#ctx| #call)),
            raw_variant: quote!(Context),
        },
        Shape::Connection => smtp(
            quote!(#ctx: *mut #rt::MQ_Context, #conn: *mut #rt::MQ_Connection),
            quote!(#rt::connection::<#ret_ty, _>(&#meta, #ctx, #conn, |#ctx, #conn| #call)),
            quote!(Connection),
        ),
        Shape::Authenticate => {
            let [l, ll, p, pl] = credential_params();
            smtp(
                quote!(#ctx: *mut #rt::MQ_Context, #conn: *mut #rt::MQ_Connection,
                       #l: *const ::core::ffi::c_char, #ll: usize, #p: *const ::core::ffi::c_char, #pl: usize),
                quote!(#rt::authenticate::<#ret_ty, _>(&#meta, #ctx, #conn, #l, #ll, #p, #pl, |#ctx, #conn, #third| #call)),
                quote!(Authenticate),
            )
        }
        Shape::Address => smtp(
            quote!(#ctx: *mut #rt::MQ_Context, #conn: *mut #rt::MQ_Connection, #third: *mut #rt::MQ_Address),
            quote!(#rt::address::<#ret_ty, _>(&#meta, #ctx, #conn, #third, |#ctx, #conn, #third| #call)),
            quote!(Address),
        ),
        Shape::Data => {
            let size = format_ident!("__mq_size", span = span);
            smtp(
                quote!(#ctx: *mut #rt::MQ_Context, #conn: *mut #rt::MQ_Connection,
                       #third: *const ::core::ffi::c_char, #size: usize),
                quote!(#rt::data::<#ret_ty, _>(&#meta, #ctx, #conn, #third, #size, |#ctx, #conn, #third| #call)),
                quote!(Data),
            )
        }
        Shape::Message => smtp(
            quote!(#ctx: *mut #rt::MQ_Context, #conn: *mut #rt::MQ_Connection, #third: *mut #rt::MQ_Message),
            quote!(#rt::message::<#ret_ty, _>(&#meta, #ctx, #conn, #third, |#ctx, #conn, #third| #call)),
            quote!(Message),
        ),
    }
}

/// The handles an async hook's future owns: `'static` references (the host
/// keeps the objects alive until the plugin resumes) and, for
/// `smtp_in_authenticate`, the `Credentials` value itself.
fn call_args_async(plan: &Plan) -> Vec<TokenStream> {
    let span = Span::mixed_site();
    let (c, n, a) = (
        format_ident!("__mq_h_context", span = span),
        format_ident!("__mq_h_connection", span = span),
        format_ident!("__mq_h_argument", span = span),
    );
    plan.params
        .iter()
        .map(|kind| match kind {
            RustParam::Context => quote!(#c),
            RustParam::Connection => quote!(#n),
            RustParam::Credentials => quote!(&#a),
            _ => quote!(#a),
        })
        .collect()
}

/// The body of an async hook's C function: build the handles, create the
/// future, hand it to the executor.
fn async_body(
    plan: &Plan,
    args: &[TokenStream],
    user_fn: &syn::Ident,
    meta: &syn::Ident,
    rt_ret: &TokenStream,
    ret_ty: &TokenStream,
) -> TokenStream {
    let rt = quote!(::mq_plugin::__private::v1);
    let span = Span::mixed_site();
    let ctx = format_ident!("__mq_context", span = span);
    let conn = format_ident!("__mq_connection", span = span);
    let third = format_ident!("__mq_argument", span = span);
    let (hc, hn, ha) = (
        format_ident!("__mq_h_context", span = span),
        format_ident!("__mq_h_connection", span = span),
        format_ident!("__mq_h_argument", span = span),
    );
    let cache = format_ident!("__MQ_TASKS", span = span);
    let future = quote!(async move {
        let #ha = #ha;
        #user_fn(#(#args),*).await
    });
    let future = match plan.deadline_ms {
        Some(ms) => {
            quote!(#rt_ret::with_deadline::<#ret_ty, _>(::core::time::Duration::from_millis(#ms), #future))
        }
        None => future,
    };
    let output = match plan.deadline_ms {
        Some(_) => quote!(#rt_ret::Deadline<#ret_ty>),
        None => ret_ty.clone(),
    };
    let argument = match plan.hook.shape {
        Shape::Connection => quote!(()),
        Shape::Authenticate => {
            let [l, ll, p, pl] = credential_params();
            quote!(::mq_plugin::Credentials::from_raw(#l, #ll, #p, #pl))
        }
        Shape::Address => quote!(::mq_plugin::Address::from_raw(#third)),
        Shape::Data => {
            let size = format_ident!("__mq_size", span = span);
            quote!(#rt::mime_slice(#third, #size))
        }
        Shape::Message => quote!(::mq_plugin::Message::from_raw_mut(#third)),
        Shape::Global | Shape::Context => unreachable!("validate refuses async lifecycle hooks"),
    };
    quote! {
        ::std::thread_local! {
            static #cache: #rt::TaskCache = const { #rt::TaskCache::new() };
        }
        let #hc: &'static ::mq_plugin::Context = ::mq_plugin::Context::from_raw(#ctx);
        let #hn: &'static ::mq_plugin::Connection = ::mq_plugin::Connection::from_raw(#conn);
        let #ha = #argument;
        #rt_ret::hook_async::<#output, _>(&#meta, &#cache, #ctx, #conn, #future)
    }
}

/// The C parameter names of `smtp_in_authenticate`'s credentials: login,
/// login size, password, password size.
fn credential_params() -> [syn::Ident; 4] {
    let span = Span::mixed_site();
    [
        "__mq_login",
        "__mq_login_size",
        "__mq_password",
        "__mq_password_size",
    ]
    .map(|n| format_ident!("{n}", span = span))
}

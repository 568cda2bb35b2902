//! `declare_plugin!()`: once per plugin crate, in `lib.rs`.
//!
//! Exports `mq_version`, the housekeeping hooks that free the plugin's
//! typed data (`mq_context_cleanup`, `mq_smtp_in_close`, which call the
//! author's own hook first if there is one) and the abi_stable root module
//! that `mq-host` checks. It also defines `__add_mq_plugin_declare_plugin_to_lib_rs`, the type every
//! `#[mq_hook]` refers to: a crate without the declaration fails to compile
//! with "cannot find type `__add_mq_plugin_declare_plugin_to_lib_rs`".

use crate::codegen::HOUSEKEEPING;
use mq_hook_table::HOOKS;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, LitStr, Token};

struct Options {
    name: Option<LitStr>,
    version: Option<LitStr>,
}

impl Parse for Options {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut options = Options {
            name: None,
            version: None,
        };
        let pairs =
            Punctuated::<(Ident, LitStr), Token![,]>::parse_terminated_with(input, |input| {
                let key: Ident = input.parse()?;
                input.parse::<Token![=]>()?;
                Ok((key, input.parse()?))
            })?;
        for (key, value) in pairs {
            let slot = match key.to_string().as_str() {
                "name" => &mut options.name,
                "version" => &mut options.version,
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown option `{other}`; `declare_plugin!` takes `name = \"..\"` and `version = \"..\"`"),
                    ))
                }
            };
            if slot.is_some() {
                return Err(syn::Error::new(
                    key.span(),
                    format!("`{key}` is given twice"),
                ));
            }
            *slot = Some(value);
        }
        Ok(options)
    }
}

pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let options: Options = match syn::parse2(input) {
        Ok(o) => o,
        Err(e) => return e.to_compile_error(),
    };
    let rt = quote!(::mq_plugin::__private::v1);
    let name = options
        .name
        .map(|n| quote!(#n))
        .unwrap_or(quote!(::core::env!("CARGO_PKG_NAME")));
    let version = options
        .version
        .map(|v| quote!(#v))
        .unwrap_or(quote!(::core::env!("CARGO_PKG_VERSION")));
    let loader = format_ident!("{}", abi_stable_shared::mangled_root_module_loader_name());
    let index_of = |name: &str| {
        HOOKS
            .iter()
            .position(|h| h.name == name)
            .expect("housekeeping hook in table")
    };
    let (cleanup, close) = (index_of(HOUSEKEEPING[0]), index_of(HOUSEKEEPING[1]));
    let probes = (0..HOOKS.len()).map(|i| {
        quote!(if (&#rt::Probe::<__add_mq_plugin_declare_plugin_to_lib_rs, #i>::NEW).authored().is_some() { authored |= 1u64 << #i; })
    });

    quote! {
        /// The plugin declaration made by `mq_plugin::declare_plugin!`. Its
        /// name is the message a crate without a declaration gets.
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        pub struct __add_mq_plugin_declare_plugin_to_lib_rs;

        impl #rt::PluginIdentity for __add_mq_plugin_declare_plugin_to_lib_rs {
            const NAME: &'static str = #name;
            const VERSION: &'static str = #version;
        }

        #[doc(hidden)]
        const _: () = {
            #[allow(unused_imports)]
            use #rt::{ProbeAuthored as _, ProbeNotAuthored as _};

            #[unsafe(no_mangle)]
            extern "C" fn mq_version() -> ::core::ffi::c_int {
                #rt::api_version()
            }

            #[unsafe(no_mangle)]
            unsafe extern "C" fn mq_context_cleanup(context: *mut #rt::MQ_Context) {
                // SAFETY: called by the host with a live context.
                unsafe {
                    #rt::context_cleanup_entry(
                        (&#rt::Probe::<__add_mq_plugin_declare_plugin_to_lib_rs, #cleanup>::NEW).authored(),
                        context,
                    )
                }
            }

            #[unsafe(no_mangle)]
            unsafe extern "C" fn mq_smtp_in_close(
                context: *mut #rt::MQ_Context,
                connection: *mut #rt::MQ_Connection,
            ) -> bool {
                // SAFETY: called by the host with a live context and connection.
                unsafe {
                    #rt::smtp_in_close_entry(
                        (&#rt::Probe::<__add_mq_plugin_declare_plugin_to_lib_rs, #close>::NEW).authored(),
                        context,
                        connection,
                    )
                }
            }

            fn root_module() -> #rt::PluginModuleRef {
                let mut authored = 0u64;
                #(#probes)*
                #rt::root_module(
                    <__add_mq_plugin_declare_plugin_to_lib_rs as #rt::PluginIdentity>::NAME,
                    <__add_mq_plugin_declare_plugin_to_lib_rs as #rt::PluginIdentity>::VERSION,
                    ::core::env!("CARGO_PKG_DESCRIPTION"),
                    authored,
                )
            }

            #[unsafe(no_mangle)]
            pub static #loader: #rt::abi_stable::library::LibHeader = {
                extern "C" fn erased_root_module() -> #rt::abi_stable::library::RootModuleResult {
                    #rt::abi_stable::library::__call_root_module_loader(root_module)
                }
                // SAFETY: the constructor returns the module type named here.
                unsafe {
                    #rt::abi_stable::library::LibHeader::from_constructor::<#rt::PluginModuleRef>(
                        erased_root_module,
                        #rt::abi_stable::library::CheckTypeLayout::Yes,
                    )
                }
            };
        };
    }
}

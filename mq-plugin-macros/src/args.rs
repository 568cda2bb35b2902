//! Parsing of `#[mq_hook(<hook>, key = value, ...)]`.

use proc_macro2::{Span, TokenStream};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, Token};

/// The attribute's arguments as written.
pub(crate) struct HookArgs {
    /// The hook name as written (an identifier, or a string).
    pub(crate) hook: Option<(String, Span)>,
    /// `key = value` options in order.
    pub(crate) options: Vec<(Ident, Expr)>,
}

enum Arg {
    Name(String, Span),
    Option(Ident, Expr),
}

impl Parse for Arg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(syn::LitStr) {
            let lit: syn::LitStr = input.parse()?;
            return Ok(Arg::Name(lit.value(), lit.span()));
        }
        let ident: Ident = input.call(syn::ext::IdentExt::parse_any)?;
        if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Ok(Arg::Option(ident, input.parse()?))
        } else {
            Ok(Arg::Name(ident.to_string(), ident.span()))
        }
    }
}

pub(crate) fn parse(attr: TokenStream) -> syn::Result<HookArgs> {
    let parsed = syn::parse::Parser::parse2(Punctuated::<Arg, Token![,]>::parse_terminated, attr)?;
    let mut args = HookArgs {
        hook: None,
        options: Vec::new(),
    };
    for arg in parsed {
        match arg {
            Arg::Name(name, span) => {
                if let Some((first, _)) = &args.hook {
                    return Err(syn::Error::new(
                        span,
                        format!(
                            "a hook function implements one hook; `{first}` is already named here"
                        ),
                    ));
                }
                args.hook = Some((name, span));
            }
            Arg::Option(key, value) => args.options.push((key, value)),
        }
    }
    Ok(args)
}

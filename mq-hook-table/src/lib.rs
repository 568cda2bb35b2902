//! The MailerQ plugin hook table: one list, used by everything.
//!
//! Every hook that a MailerQ plugin may export is described here exactly
//! once: its MailerQ symbol, its C parameters, the parameters a Rust hook
//! may take, and whether it may take control of the chain. The
//! `#[mq_hook]` macro validates and lowers hooks from it, the `mq-plugin`
//! runtime and the `mq-host` dispatcher pick their calling convention from
//! its [`Shape`], and a test checks `mailerq.h` against [`c_prototype`].
//!
//! This crate has no dependencies so that the proc-macro crate can use it.

#![forbid(unsafe_code)]

pub mod api_version;

/// This project's default plugin API version (`MQ_API_VERSION` in our
/// `mailerq.h`). MailerQ's real number is in the `mailerq.h` it installs,
/// and `mq_version()` must return exactly the number of the MailerQ that
/// loads the plugin: `mq-plugin` picks it at build time
/// ([`api_version`]), `mq-host` expects this one unless given
/// `--api-version N`.
pub const MQ_API_VERSION: i32 = 1;

/// The calling convention of a hook: which C arguments it receives and what
/// it returns. Hooks of one shape share one dispatcher in the host and one
/// adapter in the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// `void hook(void)`: `mq_initialize`, `mq_cleanup`.
    Global,
    /// `void hook(MQ_Context*)`: `mq_context_initialize`, `mq_context_cleanup`.
    Context,
    /// `bool hook(MQ_Context*, MQ_Connection*)`.
    Connection,
    /// `bool hook(MQ_Context*, MQ_Connection*, const char *login, size_t loginsize, const char *passwd, size_t passwdsize)`.
    Authenticate,
    /// `bool hook(MQ_Context*, MQ_Connection*, MQ_Address*)`.
    Address,
    /// `bool hook(MQ_Context*, MQ_Connection*, const char *mime, size_t size)`.
    Data,
    /// `bool hook(MQ_Context*, MQ_Connection*, MQ_Message*)`.
    Message,
}

/// One C parameter of a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CParam {
    /// C type as written in `mailerq.h`, e.g. `MQ_Connection *`.
    pub c_type: &'static str,
    /// Parameter name as written in `mailerq.h`.
    pub name: &'static str,
}

/// What a Rust hook function may take as a parameter, identified by type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RustParam {
    /// `&Context`: the worker's context (per plugin).
    Context,
    /// `&Connection`: the SMTP connection (per plugin).
    Connection,
    /// `&Address`: the `MAIL FROM` or `RCPT TO` address.
    Address,
    /// `&Credentials`: login and password of `AUTH`.
    Credentials,
    /// `&[u8]`: the received MIME data.
    Mime,
    /// `&mut Message`: the message (JSON object wrapper).
    Message,
}

impl RustParam {
    /// The Rust type a hook function writes for this parameter.
    pub const fn rust_type(self) -> &'static str {
        match self {
            RustParam::Context => "&Context",
            RustParam::Connection => "&Connection",
            RustParam::Address => "&Address",
            RustParam::Credentials => "&Credentials",
            RustParam::Mime => "&[u8]",
            RustParam::Message => "&mut Message",
        }
    }
}

const CTX: CParam = CParam {
    c_type: "MQ_Context *",
    name: "context",
};
const CONN: CParam = CParam {
    c_type: "MQ_Connection *",
    name: "connection",
};

impl Shape {
    /// The C parameters, in order.
    pub const fn c_params(self) -> &'static [CParam] {
        match self {
            Shape::Global => &[],
            Shape::Context => &[CTX],
            Shape::Connection => &[CTX, CONN],
            Shape::Authenticate => &[
                CTX,
                CONN,
                CParam {
                    c_type: "const char *",
                    name: "login",
                },
                CParam {
                    c_type: "size_t",
                    name: "loginsize",
                },
                CParam {
                    c_type: "const char *",
                    name: "passwd",
                },
                CParam {
                    c_type: "size_t",
                    name: "passwdsize",
                },
            ],
            Shape::Address => &[
                CTX,
                CONN,
                CParam {
                    c_type: "MQ_Address *",
                    name: "address",
                },
            ],
            Shape::Data => &[
                CTX,
                CONN,
                CParam {
                    c_type: "const char *",
                    name: "mime",
                },
                CParam {
                    c_type: "size_t",
                    name: "size",
                },
            ],
            Shape::Message => &[
                CTX,
                CONN,
                CParam {
                    c_type: "MQ_Message *",
                    name: "message",
                },
            ],
        }
    }

    /// The parameters a Rust hook of this shape may take (any subset, any order).
    pub const fn rust_params(self) -> &'static [RustParam] {
        use RustParam::*;
        match self {
            Shape::Global => &[],
            Shape::Context => &[Context],
            Shape::Connection => &[Context, Connection],
            Shape::Authenticate => &[Context, Connection, Credentials],
            Shape::Address => &[Context, Connection, Address],
            Shape::Data => &[Context, Connection, Mime],
            Shape::Message => &[Context, Connection, Message],
        }
    }

    /// The C return type.
    pub const fn c_return(self) -> &'static str {
        match self {
            Shape::Global | Shape::Context => "void",
            _ => "bool",
        }
    }
}

/// Names every hook, for code that refers to a hook (no lookup by string
/// at run time: a typo is a compile error). `HookId::X.hook()` is its
/// [`Hook`]; the discriminant is its index in [`HOOKS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookId {
    /// `mq_initialize`.
    Initialize,
    /// `mq_cleanup`.
    Cleanup,
    /// `mq_context_initialize`.
    ContextInitialize,
    /// `mq_context_cleanup`.
    ContextCleanup,
    /// `mq_smtp_in_connect`.
    SmtpInConnect,
    /// `mq_smtp_in_secure`.
    SmtpInSecure,
    /// `mq_smtp_in_authenticate`.
    SmtpInAuthenticate,
    /// `mq_smtp_in_mailfrom`.
    SmtpInMailfrom,
    /// `mq_smtp_in_rcptto`.
    SmtpInRcptto,
    /// `mq_smtp_in_data`.
    SmtpInData,
    /// `mq_smtp_in_message`.
    SmtpInMessage,
    /// `mq_smtp_in_close`.
    SmtpInClose,
    /// `mq_smtp_out_data`.
    SmtpOutData,
    /// `mq_smtp_out_sent`.
    SmtpOutSent,
}

impl HookId {
    /// The hook's row in [`HOOKS`].
    pub const fn hook(self) -> &'static Hook {
        &HOOKS[self as usize]
    }
}

/// When in MailerQ's life a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Start-up and shutdown of the host or of a worker.
    Lifecycle,
    /// An incoming SMTP connection (`smtp_in_*`).
    Incoming,
    /// An outgoing delivery (`smtp_out_*`).
    Outgoing,
}

/// One hook a plugin may export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// Which hook this is.
    pub id: HookId,
    /// Short name used in `#[mq_hook(name)]`, e.g. `smtp_out_data`.
    pub name: &'static str,
    /// The exported C symbol, e.g. `mq_smtp_out_data`.
    pub symbol: &'static str,
    /// Calling convention.
    pub shape: Shape,
    /// Whether returning `true` (taking control) is allowed.
    pub may_take_control: bool,
    /// Lifecycle, incoming or outgoing.
    pub stage: Stage,
    /// When the host calls it (one line, for docs and `mq-host inspect`).
    pub when: &'static str,
}

impl Hook {
    /// Index of this hook in [`HOOKS`].
    pub const fn index(&self) -> usize {
        self.id as usize
    }

    /// Whether the connection's plugin data goes when this hook is done:
    /// after `smtp_in_close`, and after every outgoing hook (outgoing
    /// connections have no close event in the MailerQ API).
    pub const fn frees_connection_data(&self) -> bool {
        matches!(self.id, HookId::SmtpInClose) || matches!(self.stage, Stage::Outgoing)
    }
}

macro_rules! hook {
    ($id:ident, $name:literal, $shape:ident, $control:literal, $stage:ident, $when:literal) => {
        Hook {
            id: HookId::$id,
            name: $name,
            symbol: concat!("mq_", $name),
            shape: Shape::$shape,
            may_take_control: $control,
            stage: Stage::$stage,
            when: $when,
        }
    };
}

/// Every hook, in the order of the MailerQ API documentation.
///
/// `mq_version` is not a hook: it is required and is exported by the plugin
/// declaration.
pub const HOOKS: &[Hook] = &[
    hook!(
        Initialize,
        "initialize",
        Global,
        false,
        Lifecycle,
        "once, after all plugins are loaded"
    ),
    hook!(
        Cleanup,
        "cleanup",
        Global,
        false,
        Lifecycle,
        "once, before the host exits"
    ),
    hook!(
        ContextInitialize,
        "context_initialize",
        Context,
        false,
        Lifecycle,
        "once per worker thread at start-up, before traffic"
    ),
    hook!(
        ContextCleanup,
        "context_cleanup",
        Context,
        false,
        Lifecycle,
        "once per worker thread before it stops"
    ),
    hook!(
        SmtpInConnect,
        "smtp_in_connect",
        Connection,
        true,
        Incoming,
        "an incoming connection was accepted"
    ),
    hook!(
        SmtpInSecure,
        "smtp_in_secure",
        Connection,
        true,
        Incoming,
        "an incoming connection became TLS (STARTTLS)"
    ),
    hook!(
        SmtpInAuthenticate,
        "smtp_in_authenticate",
        Authenticate,
        true,
        Incoming,
        "a client sent AUTH credentials"
    ),
    hook!(
        SmtpInMailfrom,
        "smtp_in_mailfrom",
        Address,
        true,
        Incoming,
        "MAIL FROM was received"
    ),
    hook!(
        SmtpInRcptto,
        "smtp_in_rcptto",
        Address,
        true,
        Incoming,
        "a RCPT TO was received"
    ),
    hook!(
        SmtpInData,
        "smtp_in_data",
        Data,
        true,
        Incoming,
        "the MIME data of a message was received"
    ),
    hook!(
        SmtpInMessage,
        "smtp_in_message",
        Message,
        true,
        Incoming,
        "a message was turned into its JSON form, once per recipient"
    ),
    hook!(
        SmtpInClose,
        "smtp_in_close",
        Connection,
        true,
        Incoming,
        "an incoming connection was closed"
    ),
    hook!(
        SmtpOutData,
        "smtp_out_data",
        Message,
        true,
        Outgoing,
        "an outgoing delivery entered the DATA state"
    ),
    hook!(
        SmtpOutSent,
        "smtp_out_sent",
        Message,
        true,
        Outgoing,
        "all MIME data of an outgoing delivery was sent"
    ),
];

/// The number of hooks in [`HOOKS`].
pub const HOOK_COUNT: usize = HOOKS.len();

/// Looks a hook up by its short name (`smtp_out_data`).
pub fn by_name(name: &str) -> Option<&'static Hook> {
    HOOKS.iter().find(|h| h.name == name)
}

/// Looks a hook up by its C symbol (`mq_smtp_out_data`).
pub fn by_symbol(symbol: &str) -> Option<&'static Hook> {
    HOOKS.iter().find(|h| h.symbol == symbol)
}

/// The C prototype of a hook as `mailerq.h` declares it, without the
/// `MQ_EXPORT` prefix and the trailing semicolon, e.g.
/// `bool mq_smtp_in_rcptto(MQ_Context *context, MQ_Connection *connection, MQ_Address *address)`.
pub fn c_prototype(hook: &Hook) -> String {
    let params = hook.shape.c_params();
    let params = if params.is_empty() {
        "void".to_string()
    } else {
        params
            .iter()
            .map(|p| {
                if p.c_type.ends_with('*') {
                    format!("{}{}", p.c_type, p.name)
                } else {
                    format!("{} {}", p.c_type, p.name)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("{} {}({})", hook.shape.c_return(), hook.symbol, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_symbols_are_unique_and_consistent() {
        for (i, h) in HOOKS.iter().enumerate() {
            assert_eq!(h.symbol, format!("mq_{}", h.name));
            assert_eq!(h.index(), i);
            assert_eq!(by_name(h.name), Some(h));
            assert_eq!(by_symbol(h.symbol), Some(h));
            assert_eq!(HOOKS.iter().filter(|o| o.name == h.name).count(), 1);
        }
        assert_eq!(HOOK_COUNT, 14);
    }

    #[test]
    fn ids_stages_and_properties_follow_the_names() {
        for (i, h) in HOOKS.iter().enumerate() {
            assert_eq!(h.id as usize, i, "{}", h.name);
            assert_eq!(h.id.hook(), h);
            let stage = if h.name.starts_with("smtp_in_") {
                Stage::Incoming
            } else if h.name.starts_with("smtp_out_") {
                Stage::Outgoing
            } else {
                Stage::Lifecycle
            };
            assert_eq!(h.stage, stage, "{}", h.name);
            assert_eq!(
                h.frees_connection_data(),
                h.name == "smtp_in_close" || h.name.starts_with("smtp_out_"),
                "{}",
                h.name
            );
        }
    }

    #[test]
    fn only_smtp_hooks_may_take_control() {
        for h in HOOKS {
            assert_eq!(
                h.may_take_control,
                h.shape.c_return() == "bool",
                "{}",
                h.name
            );
            assert_eq!(
                h.may_take_control,
                h.name.starts_with("smtp_"),
                "{}",
                h.name
            );
        }
    }

    #[test]
    fn prototypes_read_like_the_api() {
        assert_eq!(
            c_prototype(by_name("smtp_in_authenticate").unwrap()),
            "bool mq_smtp_in_authenticate(MQ_Context *context, MQ_Connection *connection, \
             const char *login, size_t loginsize, const char *passwd, size_t passwdsize)"
        );
        assert_eq!(
            c_prototype(by_name("initialize").unwrap()),
            "void mq_initialize(void)"
        );
        assert_eq!(
            c_prototype(by_name("context_cleanup").unwrap()),
            "void mq_context_cleanup(MQ_Context *context)"
        );
    }

    #[test]
    fn every_shape_takes_what_its_c_call_passes() {
        for h in HOOKS {
            let c = h.shape.c_params().len();
            let r = h.shape.rust_params().len();
            assert!(r <= c, "{}", h.name);
        }
    }
}

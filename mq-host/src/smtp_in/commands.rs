//! What a session's input asks for: commands (parsed by smtp-proto), AUTH
//! exchanges, DATA and BDAT chunks, and what each does.

use super::input::InputBuffer;
use super::session::Recipient;
use super::session::{
    close, flush, go_on, reply, reply_or, reply_raw, reset, start_tls, step, step_with,
    update_deadline, Ending, Phase, Shared,
};
use super::transaction::end_of_data;
use crate::inbound::refuses as refused;
use crate::runtime::message::{AddressObj, ChainArgs, Credentials};
use crate::runtime::worker::Worker;
use mq_hook_table::HookId;
use smtp_proto::request::receiver::{BdatReceiver, DataReceiver, DummyDataReceiver};
use smtp_proto::{Error as ParseError, Request};
use std::rc::Rc;

/// A parsed command, owning its text.
pub(super) enum Cmd {
    Ehlo(String),
    Helo(String),
    Mail(String),
    Rcpt(String),
    Data,
    Rset,
    Noop,
    Quit,
    /// AUTH with its mechanism and initial response (may be empty).
    Auth(u64, String),
    /// BDAT with the chunk size and whether it is the last.
    Bdat(usize, bool),
    StartTls,
    Other(&'static str),
}

fn to_cmd(r: Request<std::borrow::Cow<'_, str>>) -> Cmd {
    match r {
        Request::Ehlo { host } | Request::Lhlo { host } => Cmd::Ehlo(host.into_owned()),
        Request::Helo { host } => Cmd::Helo(host.into_owned()),
        Request::Mail { from } => Cmd::Mail(from.address.into_owned()),
        Request::Rcpt { to } => Cmd::Rcpt(to.address.into_owned()),
        Request::Data => Cmd::Data,
        Request::Rset => Cmd::Rset,
        Request::Noop { .. } => Cmd::Noop,
        Request::Quit => Cmd::Quit,
        Request::Auth {
            mechanism,
            initial_response,
        } => Cmd::Auth(mechanism, initial_response.into_owned()),
        Request::Bdat {
            chunk_size,
            is_last,
        } => Cmd::Bdat(chunk_size, is_last),
        Request::StartTls => Cmd::StartTls,
        other => Cmd::Other(other.name()),
    }
}

/// What buffered input asks for next.
enum Action {
    EndOfData,
    /// A BDAT chunk that is not the last was read.
    ChunkDone(usize),
    Command(Cmd),
    Reply(String),
    /// A line answering an AUTH challenge.
    AuthLine(Vec<u8>),
    /// An AUTH line over [`LONGEST_AUTH_LINE`]: the exchange is cancelled.
    AuthLineTooLong,
}

/// Handles buffered input until it runs out or a chain takes over. The
/// session is borrowed only to decide; acting happens without the borrow.
pub(super) fn process(w: &Worker, s: &Shared) {
    process_input(w, s);
    let input_done = {
        let sess = s.borrow();
        sess.eof && !sess.busy && !sess.finishing_data && sess.ending == Ending::No
    };
    if input_done {
        close(w, s);
    }
}

/// The most commands (or data chunks) one session handles in one turn of
/// its worker's loop: the rest waits for the next turn, so one client's
/// pipelined batch never keeps the worker from its other sessions.
const ACTIONS_PER_TURN: usize = 64;

/// The longest AUTH line (RFC 4954: at least 12 288 octets).
const LONGEST_AUTH_LINE: usize = 12_288;

fn process_input(w: &Worker, s: &Shared) {
    // Replies to a batch go out in one write, at its end.
    let corked = std::mem::replace(&mut s.borrow_mut().corked, true);
    let mut handled = 0;
    loop {
        if handled == ACTIONS_PER_TURN {
            let s = Rc::clone(s);
            w.defer(move |w| go_on(w, &s));
            break;
        }
        let Some(action) = next_action(&mut s.borrow_mut()) else {
            break;
        };
        handled += 1;
        match action {
            Action::EndOfData => end_of_data(w, s),
            Action::ChunkDone(total) => {
                reply(w, s, &format!("250 2.0.0 {total} octets received so far"))
            }
            Action::Command(cmd) => command(w, s, cmd),
            Action::Reply(line) => reply(w, s, &line),
            Action::AuthLine(line) => auth_line(w, s, line),
            Action::AuthLineTooLong => {
                crate::observe::Counters::bump(&w.shared.counters.auth_lines_too_long);
                reply(
                    w,
                    s,
                    &format!("500 5.5.6 authentication line longer than {LONGEST_AUTH_LINE} bytes; authentication cancelled"),
                )
            }
        }
    }
    s.borrow_mut().corked = corked;
    if !corked {
        flush(w, s);
    }
    update_deadline(w, s);
}

/// The next thing to do with the buffered input, if it holds one: nothing
/// while a step is running, replies wait for the client, or the session is
/// ending.
fn next_action(sess: &mut super::session::Session) -> Option<Action> {
    if sess.busy
        || sess.finishing_data
        || sess.ending != Ending::No
        || sess.input.is_empty()
        || sess.output_waiting()
    {
        return None;
    }
    let mut input = std::mem::take(&mut sess.input);
    let action = next_action_in(sess, &mut input);
    sess.input = input;
    action
}

fn next_action_in(sess: &mut super::session::Session, input: &mut InputBuffer) -> Option<Action> {
    if sess.skipping_line && !skip_line(sess, input) {
        return None;
    }
    let mut bytes = input.pending().iter();
    let total = bytes.len();
    let action = match &mut sess.phase {
        Phase::Connecting => return None,
        Phase::Data(receiver) => {
            let done = receiver.ingest(&mut bytes, &mut sess.data);
            input.consume(total - bytes.len());
            sess.enforce_size_limit();
            if !done {
                return None;
            }
            sess.phase = Phase::Commands;
            Action::EndOfData
        }
        Phase::Bdat(receiver) => {
            let done = receiver.ingest(&mut bytes, &mut sess.data);
            let last = receiver.is_last;
            input.consume(total - bytes.len());
            sess.enforce_size_limit();
            if !done {
                return None;
            }
            sess.phase = Phase::Commands;
            if last {
                Action::EndOfData
            } else {
                Action::ChunkDone(sess.data.len())
            }
        }
        Phase::SkipBdat(receiver, _) => {
            let done = receiver.ingest(&mut bytes);
            input.consume(total - bytes.len());
            if !done {
                return None;
            }
            let Phase::SkipBdat(_, line) = std::mem::replace(&mut sess.phase, Phase::Commands)
            else {
                unreachable!("matched above")
            };
            Action::Reply(line)
        }
        Phase::AuthPlain | Phase::AuthLoginUser | Phase::AuthLoginPassword(_) => {
            return next_auth_line(sess, input);
        }
        Phase::Commands => {
            let parsed = sess.parser.ingest(&mut bytes).map(to_cmd);
            let used = total - bytes.len();
            input.consume(used);
            match parsed {
                Ok(cmd) => {
                    sess.partial_line = false;
                    Action::Command(cmd)
                }
                Err(ParseError::NeedsMoreData { .. }) => {
                    sess.partial_line |= used > 0;
                    return None;
                }
                Err(e) => {
                    sess.partial_line = false;
                    Action::Reply(parse_error(&e))
                }
            }
        }
    };
    Some(action)
}

/// The line answering an AUTH challenge, once it is complete. An
/// over-long one cancels the exchange; the rest of it is skipped as it
/// arrives.
fn next_auth_line(sess: &mut super::session::Session, input: &mut InputBuffer) -> Option<Action> {
    if let Some(line) = input.take_line() {
        if line.len() > LONGEST_AUTH_LINE {
            sess.phase = Phase::Commands;
            return Some(Action::AuthLineTooLong);
        }
        return Some(Action::AuthLine(line));
    }
    if input.len() > LONGEST_AUTH_LINE {
        input.consume(input.len());
        sess.phase = Phase::Commands;
        sess.skipping_line = true;
        return Some(Action::AuthLineTooLong);
    }
    None
}

/// Skips the rest of a line being skipped; false if input ran out first.
fn skip_line(sess: &mut super::session::Session, input: &mut InputBuffer) -> bool {
    match input.pending().iter().position(|b| *b == b'\n') {
        Some(end) => {
            input.consume(end + 1);
            sess.skipping_line = false;
            !input.is_empty()
        }
        None => {
            input.consume(input.len());
            false
        }
    }
}

fn parse_error(e: &ParseError) -> String {
    match e {
        ParseError::UnknownCommand => "500 5.5.1 unknown command".into(),
        ParseError::InvalidSenderAddress => "501 5.1.7 invalid sender address".into(),
        ParseError::InvalidRecipientAddress => "501 5.1.3 invalid recipient address".into(),
        ParseError::SyntaxError { syntax } => format!("501 5.5.4 syntax: {syntax}"),
        ParseError::InvalidParameter { param } => format!("501 5.5.4 invalid parameter {param}"),
        ParseError::UnsupportedParameter { param } => {
            format!("504 5.5.4 unsupported parameter {param}")
        }
        ParseError::ResponseTooLong => "500 5.5.6 line too long".into(),
        other => format!("500 5.5.2 cannot parse the command ({other:?})"),
    }
}

fn command(w: &Worker, s: &Shared, cmd: Cmd) {
    match cmd {
        Cmd::Ehlo(host) => ehlo(w, s, host),
        Cmd::Helo(host) => {
            s.borrow_mut().helo = Some(host);
            reset(s);
            let name = s.borrow().config.hostname.clone();
            reply(w, s, &format!("250 {name}"));
        }
        Cmd::Mail(from) => mail(w, s, from),
        Cmd::Rcpt(to) => rcpt(w, s, to),
        Cmd::Data => data(w, s),
        Cmd::Rset => {
            reset(s);
            reply(w, s, "250 2.0.0 reset");
        }
        Cmd::Noop => reply(w, s, "250 2.0.0 ok"),
        Cmd::Quit => {
            reply(w, s, "221 2.0.0 bye");
            close(w, s);
        }
        Cmd::Auth(mechanism, initial) => auth(w, s, mechanism, initial),
        Cmd::Bdat(size, last) => bdat(w, s, size, last),
        Cmd::StartTls => start_tls(w, s),
        Cmd::Other(name) => reply(w, s, &format!("502 5.5.1 {name} is not implemented")),
    }
}

fn ehlo(w: &Worker, s: &Shared, host: String) {
    s.borrow_mut().helo = Some(host);
    reset(s);
    let (name, max, offers_tls, offers_auth) = {
        let sess = s.borrow();
        (
            sess.config.hostname.clone(),
            sess.config.max_message_size,
            sess.config.tls.is_some() && sess.tls.is_none(),
            auth_allowed(&sess),
        )
    };
    let starttls = if offers_tls { "250-STARTTLS\r\n" } else { "" };
    let auth = if offers_auth {
        "250-AUTH PLAIN LOGIN\r\n"
    } else {
        ""
    };
    reply(
        w,
        s,
        &format!("250-{name} greets you\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n{starttls}{auth}250 SIZE {max}"),
    );
}

/// Whether AUTH is offered and accepted now: on a secure (TLS)
/// connection, or anywhere with [`ServeConfig::auth_insecure`](super::ServeConfig::auth_insecure).
fn auth_allowed(sess: &super::session::Session) -> bool {
    sess.conn.secure.get() || sess.config.auth_insecure
}

/// `MAIL FROM`: `smtp_in_mailfrom`, then the envelope is set (unless a
/// plugin refused it).
fn mail(w: &Worker, s: &Shared, from: String) {
    if s.borrow().helo.is_none() {
        return reply(w, s, "503 5.5.1 say EHLO or HELO first");
    }
    if s.borrow().envelope.is_some() {
        return reply(w, s, "503 5.5.1 a transaction is already open; RSET first");
    }
    let address = Rc::new(AddressObj::new(Some(&from)));
    step(
        w,
        s,
        HookId::SmtpInMailfrom,
        ChainArgs::Address(address),
        move |w, s, sent| {
            if refused(&sent) {
                reply_raw(w, s, &sent);
            } else {
                s.borrow_mut().envelope = Some(from);
                reply_or(w, s, &sent, "250 2.1.0 sender ok");
            }
        },
    );
}

/// `RCPT TO`: `smtp_in_rcptto`, then the recipient is added (with the
/// `local` flag a plugin may have set on its address).
fn rcpt(w: &Worker, s: &Shared, to: String) {
    if s.borrow().envelope.is_none() {
        return reply(w, s, "503 5.5.1 MAIL FROM first");
    }
    let (count, max) = {
        let sess = s.borrow();
        (sess.recipients.len(), sess.config.max_recipients)
    };
    if count >= max {
        crate::observe::Counters::bump(&w.shared.counters.recipients_over_limit);
        return reply(
            w,
            s,
            &format!("452 4.5.3 too many recipients (at most {max} per message)"),
        );
    }
    let address = Rc::new(AddressObj::new(Some(&to)));
    step_with(
        w,
        s,
        HookId::SmtpInRcptto,
        ChainArgs::Address(address),
        move |w, s, sent, args| {
            if refused(&sent) {
                reply_raw(w, s, &sent);
            } else {
                let local = matches!(&args, ChainArgs::Address(a) if a.local.get());
                s.borrow_mut()
                    .recipients
                    .push(Recipient { address: to, local });
                reply_or(w, s, &sent, "250 2.1.5 recipient ok");
            }
        },
    );
}

fn data(w: &Worker, s: &Shared) {
    if s.borrow().recipients.is_empty() {
        return reply(w, s, "554 5.5.1 no valid recipients");
    }
    {
        let mut sess = s.borrow_mut();
        sess.data.clear();
        sess.too_big = false;
        sess.phase = Phase::Data(DataReceiver::new());
    }
    reply(w, s, "354 end data with <CR><LF>.<CR><LF>");
}

/// `BDAT size [LAST]` (CHUNKING): the chunk's bytes follow the command.
fn bdat(w: &Worker, s: &Shared, size: usize, last: bool) {
    let no_recipients = s.borrow().recipients.is_empty();
    match (size, no_recipients) {
        // Nothing to read: answered at once.
        (0, true) => reply(w, s, "554 5.5.1 no valid recipients"),
        (0, false) if last => end_of_data(w, s),
        (0, false) => {
            let total = s.borrow().data.len();
            reply(w, s, &format!("250 2.0.0 {total} octets received so far"));
        }
        // The chunk's bytes still arrive: skip them, then refuse.
        (size, true) => {
            s.borrow_mut().phase = Phase::SkipBdat(
                DummyDataReceiver::new_bdat(size),
                "554 5.5.1 no valid recipients".into(),
            )
        }
        (size, false) => {
            let mut sess = s.borrow_mut();
            if !matches!(sess.phase, Phase::Bdat(_)) && sess.data.is_empty() {
                sess.too_big = false;
            }
            sess.phase = Phase::Bdat(BdatReceiver::new(size, last));
        }
    }
}

fn auth(w: &Worker, s: &Shared, mechanism: u64, initial: String) {
    if s.borrow().helo.is_none() {
        return reply(w, s, "503 5.5.1 say EHLO first");
    }
    if s.borrow().conn.auth.get().authenticated {
        return reply(w, s, "503 5.5.1 already authenticated");
    }
    if !auth_allowed(&s.borrow()) {
        crate::observe::Counters::bump(&w.shared.counters.auth_needs_tls);
        return reply(
            w,
            s,
            "538 5.7.11 Encryption required for requested authentication mechanism",
        );
    }
    match mechanism {
        smtp_proto::AUTH_PLAIN if initial.is_empty() => {
            s.borrow_mut().phase = Phase::AuthPlain;
            reply(w, s, "334 ");
        }
        smtp_proto::AUTH_PLAIN => plain(w, s, initial.as_bytes()),
        smtp_proto::AUTH_LOGIN if initial.is_empty() => {
            s.borrow_mut().phase = Phase::AuthLoginUser;
            reply(w, s, "334 VXNlcm5hbWU6");
        }
        smtp_proto::AUTH_LOGIN => match decode(initial.as_bytes()) {
            Some(user) => {
                s.borrow_mut().phase = Phase::AuthLoginPassword(user);
                reply(w, s, "334 UGFzc3dvcmQ6");
            }
            None => reply(w, s, "501 5.5.2 the initial response is not base64"),
        },
        _ => reply(
            w,
            s,
            "504 5.5.4 unrecognized authentication mechanism (PLAIN and LOGIN are offered)",
        ),
    }
}

fn decode(line: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(line.trim_ascii())
        .ok()
}

/// A line answering an AUTH challenge (`*` cancels, RFC 4954).
fn auth_line(w: &Worker, s: &Shared, line: Vec<u8>) {
    let phase = std::mem::replace(&mut s.borrow_mut().phase, Phase::Commands);
    if line == b"*" {
        return reply(w, s, "501 5.0.0 authentication cancelled");
    }
    match phase {
        Phase::AuthPlain => plain(w, s, &line),
        Phase::AuthLoginUser => match decode(&line) {
            Some(user) => {
                s.borrow_mut().phase = Phase::AuthLoginPassword(user);
                reply(w, s, "334 UGFzc3dvcmQ6");
            }
            None => reply(w, s, "501 5.5.2 not base64"),
        },
        Phase::AuthLoginPassword(user) => match decode(&line) {
            Some(password) => authenticate(w, s, user, password),
            None => reply(w, s, "501 5.5.2 not base64"),
        },
        other => s.borrow_mut().phase = other,
    }
}

/// AUTH PLAIN's response: `[authzid] NUL authcid NUL password`.
fn plain(w: &Worker, s: &Shared, response: &[u8]) {
    let Some(decoded) = decode(response) else {
        return reply(w, s, "501 5.5.2 not base64");
    };
    let mut parts = decoded.splitn(3, |b| *b == 0);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(user), Some(password)) => {
            authenticate(w, s, user.to_vec(), password.to_vec())
        }
        _ => reply(w, s, "501 5.5.2 malformed PLAIN response"),
    }
}

/// `smtp_in_authenticate`: accepted only if a plugin set authenticated
/// and none refused (the connection's auth state, reset per attempt).
fn authenticate(w: &Worker, s: &Shared, login: Vec<u8>, password: Vec<u8>) {
    s.borrow().conn.auth.set(Default::default());
    // A login that is not UTF-8 is shown with replacement characters in
    // the JSON (a JSON string cannot hold it); plugins get it byte for byte.
    let user = String::from_utf8_lossy(&login).into_owned();
    step(
        w,
        s,
        HookId::SmtpInAuthenticate,
        ChainArgs::Authenticate(Rc::new(Credentials { login, password })),
        move |w, s, sent| {
            let ok = s.borrow().conn.auth.get().authenticated;
            s.borrow_mut().user = ok.then_some(user);
            match (ok, sent.is_empty()) {
                (_, false) => reply_raw(w, s, &sent),
                (true, true) => reply(w, s, "235 2.7.0 authentication succeeded"),
                (false, true) => reply(w, s, "535 5.7.8 authentication credentials invalid"),
            }
        },
    );
}

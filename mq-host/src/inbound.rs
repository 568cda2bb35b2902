//! The rules of an incoming transaction that `serve` and the batch mode
//! (`mq-host run`) share: when a plugin's reply refuses a step, and what a
//! stored or reported message records about it.

use crate::store::Queue;
use mq_hook_table::Hook;
use serde_json::{json, Value};

/// Whether what plugins sent during a step (`MQ_send`) refuses it: a 4xx
/// or 5xx reply replaces the host's own and refuses the command.
pub(crate) fn refuses(sent: &[u8]) -> bool {
    matches!(sent.first(), Some(b'4' | b'5'))
}

/// The first line plugins sent during a step, if any.
pub(crate) fn reply_line(sent: &[u8]) -> Option<String> {
    String::from_utf8_lossy(sent)
        .lines()
        .next()
        .map(|l| l.trim_end().to_owned())
        .filter(|l| !l.is_empty())
}

/// The `result` of a message a plugin refused at `stage` with `reply`.
pub(crate) fn refused(stage: &Hook, reply: Option<&str>) -> Value {
    json!({"queue": Queue::Refused.dir_name(), "stage": stage.name, "reply": reply})
}

/// The `result` of an accepted message: the queue it went to.
pub(crate) fn accepted(local: bool) -> Value {
    let queue = if local { Queue::Local } else { Queue::Inbox };
    json!({"queue": queue.dir_name()})
}

#[cfg(test)]
mod tests {
    use super::*;
    use mq_hook_table::HookId;

    #[test]
    fn only_4xx_and_5xx_refuse() {
        assert!(refuses(b"550 5.7.1 no\r\n"));
        assert!(refuses(b"451 later\r\n"));
        assert!(!refuses(b"250 ok\r\n"));
        assert!(!refuses(b""));
        assert_eq!(
            reply_line(b"550 no\r\n250 x\r\n").as_deref(),
            Some("550 no")
        );
        assert_eq!(reply_line(b""), None);
    }

    #[test]
    fn results_name_the_queue() {
        let r = refused(HookId::SmtpInRcptto.hook(), Some("550 no"));
        assert_eq!(r["queue"], "refused");
        assert_eq!(r["stage"], "smtp_in_rcptto");
        assert_eq!(accepted(true)["queue"], "local");
        assert_eq!(accepted(false)["queue"], "inbox");
    }
}

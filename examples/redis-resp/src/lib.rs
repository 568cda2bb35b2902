//! The little of Redis' protocol (RESP2) a plugin needs to talk to Redis
//! from an `async fn` hook, on the worker's event loop: commands as arrays
//! of bulk strings, and the replies — simple strings, errors, integers and
//! bulk strings (nil included). [`pipeline`] sends several commands in one
//! write and reads their replies back in order.
//!
//! ```no_run
//! use mq_example_redis_resp::{pipeline, Reply};
//! use mq_plugin::net::TcpStream;
//!
//! async fn seen(stream: &mut TcpStream, key: &str) -> Result<bool, String> {
//!     let replies = pipeline(stream, &[&[b"EXISTS", key.as_bytes()]]).await?;
//!     Ok(replies[0] == Reply::Integer(1))
//! }
//! ```
//!
//! It is no general client: no arrays, no RESP3, no pub/sub. A plugin keeps
//! its idle connections in its context data (see `examples/greylist`).

#![forbid(unsafe_code)]

use futures_util::{AsyncReadExt, AsyncWriteExt};
use mq_plugin::net::TcpStream;

/// The longest bulk string Redis sends (its `proto-max-bulk-len`
/// default, 512 MiB); a longer length is a broken stream, not a reason to
/// buffer.
pub const MAX_BULK: usize = 512 * 1024 * 1024;

/// One reply from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nabc`.
    Bulk(Vec<u8>),
    /// `$-1`: no value.
    Nil,
}

/// Appends one command, as a RESP2 array of bulk strings, to `out`.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the front of `buf`: the reply and the bytes it
/// took, `Ok(None)` if more bytes are needed, `Err` for an error reply or
/// anything this client does not expect (arrays, bad framing).
pub fn decode(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| "a reply that is not text")?;
    let after = end + 2;
    let (kind, rest) = line.split_at_checked(1).ok_or("an empty reply line")?;
    match kind {
        "+" => Ok(Some((Reply::Simple(rest.to_owned()), after))),
        "-" => Err(format!("Redis answered an error: {rest}")),
        ":" => {
            let n = rest
                .parse()
                .map_err(|_| format!("a bad integer `{rest}`"))?;
            Ok(Some((Reply::Integer(n), after)))
        }
        "$" if rest == "-1" => Ok(Some((Reply::Nil, after))),
        "$" => {
            let len: usize = rest.parse().map_err(|_| format!("a bad length `{rest}`"))?;
            if len > MAX_BULK {
                return Err(format!(
                    "a bulk string of {len} bytes, more than Redis sends"
                ));
            }
            let Some(data) = buf.get(after..after + len + 2) else {
                return Ok(None);
            };
            if !data.ends_with(b"\r\n") {
                return Err("a bulk string without its line end".into());
            }
            Ok(Some((Reply::Bulk(data[..len].to_vec()), after + len + 2)))
        }
        _ => Err(format!("an unexpected reply `{line}`")),
    }
}

/// Sends `commands` in one write and reads their replies, in order.
pub async fn pipeline(stream: &mut TcpStream, commands: &[&[&[u8]]]) -> Result<Vec<Reply>, String> {
    let mut request = Vec::new();
    for command in commands {
        encode(&mut request, command);
    }
    stream
        .write_all(&request)
        .await
        .map_err(|e| format!("writing to Redis: {e}"))?;
    let mut replies = Vec::with_capacity(commands.len());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while replies.len() < commands.len() {
        if let Some((reply, used)) = decode(&buf)? {
            replies.push(reply);
            buf.drain(..used);
            continue;
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading from Redis: {e}"))?;
        if n == 0 {
            return Err("Redis closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if !buf.is_empty() {
        return Err("Redis sent more replies than asked for".into());
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"GET", b"k y"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$3\r\nk y\r\n");
    }

    #[test]
    fn replies_of_every_kind_the_plugin_reads() {
        assert_eq!(
            decode(b"+OK\r\n:1"),
            Ok(Some((Reply::Simple("OK".into()), 5)))
        );
        assert_eq!(decode(b":-3\r\n"), Ok(Some((Reply::Integer(-3), 5))));
        assert_eq!(decode(b"$-1\r\n"), Ok(Some((Reply::Nil, 5))));
        assert_eq!(
            decode(b"$4\r\n1700\r\n+OK"),
            Ok(Some((Reply::Bulk(b"1700".to_vec()), 10)))
        );
        // Cut anywhere: more bytes are needed.
        for cut in [&b"$4\r\n17"[..], b"$4\r\n1700", b"+O", b""] {
            assert_eq!(decode(cut), Ok(None), "{cut:?}");
        }
        assert!(decode(b"-ERR wrong\r\n").unwrap_err().contains("ERR wrong"));
        assert!(decode(b"*1\r\n").is_err());
        assert!(decode(b"$2\r\nabcd\r\n").is_err());
        assert!(decode(b"$18446744073709551615\r\n").is_err());
    }
}

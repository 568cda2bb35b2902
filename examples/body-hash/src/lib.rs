//! Example plugin: CPU work off the event loop.
//!
//! For each incoming message (`smtp_in_message`) it computes the SHA-256
//! of the MIME data on the plugin's blocking thread pool
//! (`mq_plugin::task::spawn_blocking`) — so a large message never stalls
//! the worker's other connections — and puts the digest in front:
//!
//! ```text
//! X-Body-SHA256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! ```

#![forbid(unsafe_code)]

use mq_plugin::prelude::*;
use mq_plugin::task::spawn_blocking;
use sha2::{Digest, Sha256};

mq_plugin::declare_plugin!();

/// The lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[mq_hook(smtp_in_message)]
async fn stamp_digest(msg: &mut Message) -> Result<Flow, String> {
    let Some(mime) = msg.mime().map(<[u8]>::to_vec) else {
        log::warn!("message without MIME data: no digest");
        return Ok(Flow::Continue);
    };
    let (digest, mime) = spawn_blocking(move || (sha256_hex(&mime), mime))
        .await
        .map_err(|e| e.to_string())?;
    let mut stamped = format!("X-Body-SHA256: {digest}\r\n").into_bytes();
    stamped.extend_from_slice(&mime);
    msg.set_mime(&stamped);
    Ok(Flow::Continue)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_digest() {
        assert_eq!(
            super::sha256_hex(b"test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}

//! Example plugin: DKIM-signs outgoing mail (`smtp_out_data`).
//!
//! When the relay has said `354` and the MIME is about to go out, the
//! plugin signs it (RFC 6376, relaxed/relaxed, with the
//! [`mail-auth`](https://docs.rs/mail-auth) crate) and puts the
//! `DKIM-Signature:` header in front with `MQ_setMime`. What it signs is
//! exactly what goes on the wire: the MIME with its line ends made CRLF
//! (the host sends every line with CRLF) and a final line end.
//!
//! MailerQ can sign by itself too, with keys a message carries in its
//! `dkim` property; this plugin signs with one key kept on the server,
//! whatever the message says. Use one or the other, not both.
//!
//! MailerQ gives a plugin no configuration of its own, so this one reads
//! its settings from the environment of the MailerQ (or `mq-host`) process
//! once, in `initialize`:
//!
//! | variable            | meaning                                               |
//! |---------------------|-------------------------------------------------------|
//! | `MQ_DKIM_KEY_FILE`  | the private key, PEM: RSA (PKCS #1 `RSA PRIVATE KEY` or PKCS #8 `PRIVATE KEY`) or Ed25519 (PKCS #8) |
//! | `MQ_DKIM_DOMAIN`    | the signing domain, `d=`                              |
//! | `MQ_DKIM_SELECTOR`  | the selector, `s=`: the public key is published at `SELECTOR._domainkey.DOMAIN` |
//! | `MQ_DKIM_HEADERS`   | optional: the header fields to sign, `:`-separated (default [`DEFAULT_HEADERS`]) |
//!
//! A missing variable or a key that cannot be read or parsed fails
//! `initialize` with the reason: `mq-host` then refuses to start. MailerQ
//! cannot be told, so there the plugin lets every message go out unsigned,
//! logging why for each one — a delivery is never held back for want of a
//! signature. Should signing a message fail, it goes out unsigned with a
//! warning too. (A message that lacks listed header fields is no such
//! failure: they are signed as absent.)

#![forbid(unsafe_code)]

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use mq_plugin::prelude::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use std::path::Path;
use std::sync::OnceLock;

mq_plugin::declare_plugin!();

/// The header fields signed without `MQ_DKIM_HEADERS`. A listed field the
/// message lacks is signed as absent, so nobody can add it on the way.
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// The signer built in `initialize`, or why there is none.
static SIGNER: OnceLock<Result<Signer, String>> = OnceLock::new();

/// A configured DKIM signer: key, domain, selector and header list.
pub struct Signer(DkimSigner<DkimKey, Done>);

impl Signer {
    /// Builds a signer from a PEM private key (RSA or Ed25519).
    pub fn new(
        key_pem: &[u8],
        domain: &str,
        selector: &str,
        headers: &[&str],
    ) -> Result<Signer, String> {
        let key = parse_key(key_pem)?;
        if domain.is_empty() || selector.is_empty() {
            return Err("the domain and the selector must not be empty".into());
        }
        if headers.is_empty() {
            return Err("the list of header fields to sign is empty".into());
        }
        Ok(Signer(
            DkimSigner::from_key(key)
                .domain(domain)
                .selector(selector)
                .headers(headers.iter().copied())
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed),
        ))
    }

    /// Reads the configuration from the environment (see the crate docs).
    pub fn from_env() -> Result<Signer, String> {
        let var = |name: &str| {
            std::env::var(name).map_err(|e| format!("`{name}`: {e} (see the plugin's docs)"))
        };
        let path = var("MQ_DKIM_KEY_FILE")?;
        let domain = var("MQ_DKIM_DOMAIN")?;
        let selector = var("MQ_DKIM_SELECTOR")?;
        let headers = std::env::var("MQ_DKIM_HEADERS").ok();
        let headers: Vec<&str> = match &headers {
            Some(list) => list
                .split(':')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .collect(),
            None => DEFAULT_HEADERS.to_vec(),
        };
        let pem = std::fs::read(Path::new(&path))
            .map_err(|e| format!("cannot read the DKIM key {path}: {e}"))?;
        Signer::new(&pem, &domain, &selector, &headers).map_err(|e| format!("DKIM key {path}: {e}"))
    }

    /// `mime` as it goes on the wire, with a `DKIM-Signature:` header in
    /// front.
    pub fn sign(&self, mime: &[u8]) -> Result<Vec<u8>, String> {
        let wire = crlf_lines(mime);
        let signature = self.0.sign(&wire).map_err(|e| e.to_string())?;
        let mut signed = signature.to_header().into_bytes();
        signed.extend_from_slice(&wire);
        Ok(signed)
    }
}

/// Decodes a PEM private key: PKCS #1 RSA, or PKCS #8 RSA or Ed25519.
fn parse_key(pem: &[u8]) -> Result<DkimKey, String> {
    let der =
        PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("not a PEM private key: {e}"))?;
    match der {
        PrivateKeyDer::Pkcs8(pkcs8) => {
            let bytes = pkcs8.secret_pkcs8_der().to_vec();
            match RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(pkcs8)) {
                Ok(rsa) => Ok(DkimKey::Rsa(rsa)),
                Err(_) => Ed25519Key::from_pkcs8_maybe_unchecked_der(&bytes)
                    .map(DkimKey::Ed25519)
                    .map_err(|e| format!("a PKCS #8 key that is neither RSA nor Ed25519: {e}")),
            }
        }
        pkcs1 @ PrivateKeyDer::Pkcs1(_) => RsaKey::<Sha256>::from_key_der(pkcs1)
            .map(DkimKey::Rsa)
            .map_err(|e| format!("a bad RSA key: {e}")),
        _ => Err("an EC (SEC1) key; DKIM signs with RSA or Ed25519".into()),
    }
}

/// `mime` with every line ended by CRLF (a bare LF or CR becomes CRLF) and
/// a final line end: the bytes the host sends.
pub fn crlf_lines(mime: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(mime.len() + mime.len() / 32 + 2);
    let mut bytes = mime.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b'\r' => {
                bytes.next_if_eq(&b'\n');
                out.extend_from_slice(b"\r\n");
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            _ => out.push(b),
        }
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[mq_hook(initialize)]
fn load() -> Result<(), String> {
    let signer = Signer::from_env();
    let outcome = signer.as_ref().map(|_| ()).map_err(Clone::clone);
    if let Ok(()) = outcome {
        log::info!(
            "signing as {} with selector {}",
            std::env::var("MQ_DKIM_DOMAIN").unwrap_or_default(),
            std::env::var("MQ_DKIM_SELECTOR").unwrap_or_default()
        );
    }
    let _ = SIGNER.set(signer);
    outcome
}

#[mq_hook(smtp_out_data)]
fn sign(msg: &mut Message) -> Flow {
    let signer = match SIGNER.get() {
        Some(Ok(signer)) => signer,
        Some(Err(why)) => {
            log::error!("sending unsigned: {why}");
            return Flow::Continue;
        }
        None => {
            log::error!("sending unsigned: the plugin was not initialized");
            return Flow::Continue;
        }
    };
    // The MIME an earlier plugin set, else the message's own.
    let mime = match msg.mime() {
        Some(set) => Some(set.to_vec()),
        None => msg.property_bytes("mime").unwrap_or_else(|e| {
            log::warn!("cannot read the message's `mime`: {e}");
            None
        }),
    };
    let Some(mime) = mime else {
        return Flow::Continue;
    };
    match signer.sign(&mime) {
        Ok(signed) => msg.set_mime(&signed),
        Err(why) => log::warn!(
            "sending the message for {} unsigned: {why}",
            msg.recipient().unwrap_or("?")
        ),
    }
    Flow::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_in_crlf_as_on_the_wire() {
        assert_eq!(crlf_lines(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(crlf_lines(b"a\r\n\r\n"), b"a\r\n\r\n");
        assert_eq!(crlf_lines(b""), b"");
    }

    #[test]
    fn bad_keys_are_refused_with_the_reason() {
        let err = Signer::new(b"not pem", "example.com", "s1", DEFAULT_HEADERS)
            .err()
            .unwrap();
        assert!(err.starts_with("not a PEM private key"), "{err}");
    }
}

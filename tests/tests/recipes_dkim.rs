//! The DKIM recipe (`examples/dkim-sign`): messages delivered by
//! `mq-host deliver` through the plugin to a real relay (aiosmtpd) carry a
//! signature that an independent verifier — Python's `dkim` module
//! (dkimpy), handed the public key directly instead of asking DNS —
//! accepts, and rejects once the body or a signed header is changed.
//! Keys are made fresh by the `openssl` command.

use mq_e2e::*;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const DOMAIN: &str = "shop.example";
const SELECTOR: &str = "mq2026";

/// Checks a message with dkimpy; the public key comes from a file of
/// SubjectPublicKeyInfo DER, never from DNS. Prints `pass` or `fail`, and
/// the names dkimpy asked for.
const VERIFY: &str = r#"
import base64, logging, sys, dkim
message, der, kind, expected = sys.argv[1:5]
der = open(der, "rb").read()
# RFC 8463: an Ed25519 record holds the bare 32-byte key, RSA the SPKI DER.
key = der[-32:] if kind == "ed25519" else der
record = b"v=DKIM1; k=" + kind.encode() + b"; p=" + base64.b64encode(key)
asked = []
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    asked.append(name.rstrip("."))
    return record if name.rstrip(".") == expected else None
logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
ok = dkim.verify(open(message, "rb").read(), logger=logging.getLogger("dkim"), dnsfunc=dnsfunc)
print("pass" if ok else "fail", *asked)
"#;

/// A Python interpreter that has the `dkim` module.
fn python_with_dkim() -> &'static str {
    static FOUND: OnceLock<&'static str> = OnceLock::new();
    FOUND.get_or_init(|| {
        ["python3", "/usr/bin/python3"]
            .into_iter()
            .find(|python| {
                Command::new(python)
                    .args(["-c", "import dkim"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect(
                "the DKIM recipe's test verifies signatures with Python's dkim module: \
                 apt-get install python3-dkim (or pip install dkimpy)",
            )
    })
}

/// Runs `openssl` with `args`; fails the test with the fix if it is missing.
fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the DKIM recipe's test makes its keys with openssl: apt-get install openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh key pair in `dir`: the private key (PEM) and the public key
/// (SubjectPublicKeyInfo DER).
struct Keys {
    private: PathBuf,
    public: PathBuf,
    /// `rsa` or `ed25519`, as in a DKIM record's `k=`.
    kind: &'static str,
}

impl Keys {
    /// `rsa-pkcs1` (`RSA PRIVATE KEY`), `rsa` (PKCS #8) or `ed25519`.
    fn generate(dir: &Path, form: &str) -> Keys {
        let private = dir.join(format!("{form}.pem"));
        let public = dir.join(format!("{form}.pub.der"));
        let p = private.to_str().unwrap();
        let kind = match form {
            "rsa-pkcs1" => {
                openssl(&["genrsa", "-traditional", "-out", p, "2048"]);
                "rsa"
            }
            "rsa" => {
                openssl(&[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                    p,
                ]);
                "rsa"
            }
            "ed25519" => {
                openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]);
                "ed25519"
            }
            _ => unreachable!("{form}"),
        };
        openssl(&[
            "pkey",
            "-in",
            p,
            "-pubout",
            "-outform",
            "DER",
            "-out",
            public.to_str().unwrap(),
        ]);
        Keys {
            private,
            public,
            kind,
        }
    }

    /// What dkimpy says about `message`: `true` if the signature verifies
    /// with this key. Also checks that it looked the key up by the right
    /// name.
    fn verifies(&self, dir: &Path, message: &[u8]) -> bool {
        let file = dir.join("check.eml");
        std::fs::write(&file, message).unwrap();
        let expected = format!("{SELECTOR}._domainkey.{DOMAIN}");
        let out = Command::new(python_with_dkim())
            .arg("-c")
            .arg(VERIFY)
            .arg(&file)
            .arg(&self.public)
            .arg(self.kind)
            .arg(&expected)
            .output()
            .expect("run python3");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "the verifier failed: {stdout}{stderr}"
        );
        let words: Vec<&str> = stdout.split_whitespace().collect();
        assert_eq!(
            words.get(1..),
            Some(&[expected.as_str()][..]),
            "{stdout}{stderr}"
        );
        match words[0] {
            "pass" => true,
            "fail" => false,
            _ => panic!("the verifier said {stdout}{stderr}"),
        }
    }
}

/// `mq-host deliver` of `messages` (MailerQ JSON lines) to `sink` with the
/// plugins in `plugins` and `env`: its exit status and stderr.
fn deliver(
    dir: &PluginDir,
    plugins: &Path,
    sink: &Sink,
    messages: &[serde_json::Value],
    env: &[(&str, &OsStr)],
) -> (bool, String) {
    let input = dir.path().join("in.jsonl");
    let lines: String = messages.iter().map(|m| format!("{m}\n")).collect();
    std::fs::write(&input, lines).unwrap();
    let mut child = Command::new(host_binary())
        .args([
            "deliver",
            "--max-attempts",
            "1",
            "--relay",
            &sink.relay(),
            "--plugins",
        ])
        .arg(plugins)
        .arg(&input)
        .env("MQ_DKIM_DOMAIN", DOMAIN)
        .env("MQ_DKIM_SELECTOR", SELECTOR)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start mq-host deliver");
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
        stderr
    });
    let status = wait_bounded(&mut child, "mq-host deliver");
    (status.success(), reader.join().unwrap())
}

/// The plugin directory: the out-trace example first (it changes the MIME
/// before the signer sees it), then the signer.
fn plugins(dir: &PluginDir) -> PathBuf {
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(
        plugin_so("mq-example-out-trace"),
        plugins.join("40-out-trace.so"),
    )
    .unwrap();
    std::fs::copy(
        plugin_so("mq-example-dkim-sign"),
        plugins.join("50-dkim-sign.so"),
    )
    .unwrap();
    plugins
}

/// The header names of a `DKIM-Signature`'s `h=` tag.
fn signed_headers(signature: &str) -> BTreeSet<String> {
    let h = signature
        .split(';')
        .map(|tag| tag.split_whitespace().collect::<String>())
        .find_map(|tag| tag.strip_prefix("h=").map(str::to_owned))
        .unwrap_or_else(|| panic!("no h= in {signature}"));
    h.split(':').map(str::to_owned).collect()
}

fn replace(haystack: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(haystack.to_vec()).unwrap();
    assert!(text.contains(from), "{from:?} not in {text}");
    text.replacen(from, to, 1).into_bytes()
}

/// Delivers two messages signed with a fresh `form` key and checks them
/// with dkimpy; `headers` is `MQ_DKIM_HEADERS`, if set.
fn signs_what_the_relay_receives(form: &str, headers: Option<&str>) {
    let _ = python_with_dkim();
    let dir = PluginDir::new(&format!("dkim-{form}"));
    let keys = Keys::generate(dir.path(), form);
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    let crlf = "From: Shop <orders@shop.example>\r\nTo: b@example.net\r\n\
                Subject: Your order\r\nDate: Tue, 01 Dec 2026 20:00:00 +0000\r\n\
                Message-ID: <1@shop.example>\r\n\r\n\
                Hello,  \r\n.a line that starts with a dot\r\nthanks\r\n\r\n\r\n";
    // Bare LF line ends and no final line end: the host sends CRLF lines,
    // and the signature must hold for those.
    let bare_lf = "From: orders@shop.example\nTo: c@example.net\nSubject: lf\n\nline one\nline two";
    let mut env = vec![("MQ_DKIM_KEY_FILE", keys.private.as_os_str())];
    if let Some(headers) = headers {
        env.push(("MQ_DKIM_HEADERS", OsStr::new(headers)));
    }
    let (ok, log) = deliver(
        &dir,
        &plugins(&dir),
        &sink,
        &[
            serde_json::json!({"envelope": "orders@shop.example", "recipient": "b@example.net", "mime": crlf}),
            serde_json::json!({"envelope": "orders@shop.example", "recipient": "c@example.net", "mime": bare_lf}),
        ],
        &env,
    );
    assert!(ok, "{log}");
    assert!(
        log.contains(&format!("signing as {DOMAIN} with selector {SELECTOR}")),
        "{log}"
    );
    let mut received = sink.received();
    received.sort_by(|a, b| a.rcpt_tos.cmp(&b.rcpt_tos));
    assert_eq!(received.len(), 2, "{log}");
    for message in &received {
        let text = String::from_utf8_lossy(&message.data);
        assert!(text.starts_with("DKIM-Signature: "), "{text}");
        let header_end = text.find("\r\n\r\n").unwrap();
        let dkim_end = text.find("X-Out-Trace:").unwrap();
        assert!(
            dkim_end < header_end,
            "out-trace's header is in the signed MIME: {text}"
        );
        let signature = &text[..dkim_end];
        for tag in [
            format!("d={DOMAIN};"),
            format!("s={SELECTOR};"),
            format!("a={}-sha256;", keys.kind),
        ] {
            assert!(signature.contains(&tag), "{tag} in {signature}");
        }
        let expected: BTreeSet<String> = match headers {
            Some(list) => list.split(':').map(str::to_owned).collect(),
            None => [
                "From",
                "To",
                "Cc",
                "Subject",
                "Date",
                "Message-ID",
                "Reply-To",
            ]
            .into_iter()
            .chain(["In-Reply-To", "References", "MIME-Version"])
            .chain(["Content-Type", "Content-Transfer-Encoding"])
            .map(str::to_owned)
            .collect(),
        };
        assert_eq!(signed_headers(signature), expected, "{signature}");
        assert!(
            keys.verifies(dir.path(), &message.data),
            "dkimpy rejects the signature of {text}"
        );
    }
    let first = &received[0].data;
    // Changing the body or a signed header breaks the signature ...
    assert!(!keys.verifies(dir.path(), &replace(first, "thanks", "thank you")));
    assert!(!keys.verifies(dir.path(), &replace(first, "Your order", "Your invoice")));
    assert!(!keys.verifies(
        dir.path(),
        &replace(&received[1].data, "line two", "line 2")
    ));
    // A header outside the list is not signed.
    let to_changed = replace(first, "To: b@example.net", "To: x@example.net");
    assert_eq!(keys.verifies(dir.path(), &to_changed), headers.is_some());
    // ... while what relaxed canonicalization ignores does not.
    assert!(keys.verifies(
        dir.path(),
        &replace(first, "Subject: Your order", "subject:   Your  order")
    ));
    // And another key does not verify it.
    let elsewhere = dir.path().join("other");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let other = Keys::generate(&elsewhere, form);
    assert!(!other.verifies(dir.path(), first));
}

#[test]
fn rsa_pkcs1_signatures_verify_independently_and_break_when_tampered() {
    signs_what_the_relay_receives("rsa-pkcs1", None);
}

#[test]
fn rsa_pkcs8_signatures_verify_independently_and_break_when_tampered() {
    signs_what_the_relay_receives("rsa", None);
}

#[test]
fn ed25519_signatures_of_the_configured_headers_verify_independently() {
    signs_what_the_relay_receives("ed25519", Some("From:Subject:Date"));
}

#[test]
fn a_missing_or_bad_key_stops_the_host_with_the_reason() {
    let dir = PluginDir::new("dkim-bad-key");
    let plugins = plugins(&dir);
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    let message =
        serde_json::json!({"recipient": "b@example.net", "mime": "Subject: x\r\n\r\nx\r\n"});
    let missing = dir.path().join("no-such-key.pem");
    let (ok, log) = deliver(
        &dir,
        &plugins,
        &sink,
        std::slice::from_ref(&message),
        &[("MQ_DKIM_KEY_FILE", missing.as_os_str())],
    );
    assert!(!ok, "{log}");
    assert!(
        log.contains("mq_initialize failed, so the host does not start"),
        "{log}"
    );
    assert!(
        log.contains(&format!("cannot read the DKIM key {}", missing.display())),
        "{log}"
    );
    let not_a_key = dir.path().join("not-a-key.pem");
    std::fs::write(&not_a_key, "hello\n").unwrap();
    let (ok, log) = deliver(
        &dir,
        &plugins,
        &sink,
        std::slice::from_ref(&message),
        &[("MQ_DKIM_KEY_FILE", not_a_key.as_os_str())],
    );
    assert!(!ok, "{log}");
    assert!(log.contains("not a PEM private key"), "{log}");
    let (ok, log) = deliver(&dir, &plugins, &sink, &[message], &[]);
    assert!(!ok, "{log}");
    assert!(
        log.contains("`MQ_DKIM_KEY_FILE`: environment variable not found"),
        "{log}"
    );
    assert!(sink.received().is_empty());
}

#[test]
fn listed_headers_a_message_lacks_are_signed_as_absent() {
    let dir = PluginDir::new("dkim-absent");
    let keys = Keys::generate(dir.path(), "ed25519");
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    let (ok, log) = deliver(
        &dir,
        &plugins(&dir),
        &sink,
        &[
            serde_json::json!({"recipient": "b@example.net", "mime": "X-Only: this\r\n\r\nbody\r\n"}),
        ],
        &[
            ("MQ_DKIM_KEY_FILE", keys.private.as_os_str()),
            ("MQ_DKIM_HEADERS", OsStr::new("From:Subject")),
        ],
    );
    assert!(ok, "{log}");
    let received = sink.received();
    assert_eq!(received.len(), 1);
    let message = &received[0].data;
    let text = String::from_utf8_lossy(message);
    assert!(text.starts_with("DKIM-Signature: "), "{text}");
    assert!(keys.verifies(dir.path(), message), "{text}");
    // Nobody can add a Subject on the way.
    let added = replace(message, "X-Only: this", "Subject: added\r\nX-Only: this");
    assert!(!keys.verifies(dir.path(), &added));
}

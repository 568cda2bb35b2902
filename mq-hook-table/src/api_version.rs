//! Which `MQ_API_VERSION` a plugin is built for.
//!
//! MailerQ's `mq_version()` must return exactly the number of the MailerQ
//! that loads the plugin, and only Copernica knows the numbers of its
//! releases: it is in the `mailerq.h` that MailerQ installs. So
//! `mq-plugin`'s build script picks the version when a plugin is built,
//! with [`pick`], in this order:
//!
//! 1. the environment variable [`ENV_VERSION`] (`MQ_API_VERSION=7 cargo
//!    build`), a decimal integer;
//! 2. the header named by [`ENV_HEADER`] (`MQ_PLUGIN_MAILERQ_HEADER`),
//!    which must exist and define the version;
//! 3. the first of [`DEFAULT_HEADERS`] that exists (where
//!    `#include <mailerq.h>` finds MailerQ's header); one that does not
//!    define the version is passed over;
//! 4. else [`MQ_API_VERSION`], this project's number.
//!
//! `mq-host` accepts the same default and takes another with
//! `--api-version N`.
//!
//! This lives here, in the crate without dependencies, so that the build
//! script can use it and its rules are unit-tested.

use crate::MQ_API_VERSION;
use std::path::{Path, PathBuf};

/// The environment variable that sets the version outright.
pub const ENV_VERSION: &str = "MQ_API_VERSION";

/// The environment variable that names MailerQ's `mailerq.h`.
pub const ENV_HEADER: &str = "MQ_PLUGIN_MAILERQ_HEADER";

/// Where MailerQ's header is looked for when [`ENV_HEADER`] is not set:
/// the system include directories, which `#include <mailerq.h>` searches.
pub const DEFAULT_HEADERS: [&str; 2] = ["/usr/include/mailerq.h", "/usr/local/include/mailerq.h"];

/// Where the picked version came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The [`ENV_VERSION`] variable.
    Env,
    /// This header.
    Header(PathBuf),
    /// This project's default, [`MQ_API_VERSION`].
    Default,
}

/// A picked version and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    /// The version `mq_version()` returns.
    pub version: i32,
    /// Where it came from.
    pub source: Source,
}

/// Reads `#define MQ_API_VERSION <n>` from a C header's text (`n` a
/// decimal integer, optionally in parentheses); `None` if it has no such
/// line. Comments after the number are allowed.
pub fn parse_header(text: &str) -> Option<Result<i32, String>> {
    text.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix('#')?.trim_start();
        let rest = rest.strip_prefix("define")?;
        if !rest.starts_with([' ', '\t']) {
            return None;
        }
        let rest = rest.trim_start().strip_prefix("MQ_API_VERSION")?;
        if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
            return None; // another macro, e.g. MQ_API_VERSION_MINOR
        }
        let value = rest.split("/*").next().unwrap_or("");
        let value = value.split("//").next().unwrap_or("").trim();
        let value = value
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .unwrap_or(value)
            .trim();
        Some(
            value
                .parse::<i32>()
                .map_err(|_| format!("`#define MQ_API_VERSION {value}` is not a decimal integer")),
        )
    })
}

/// Picks the version by the rules of this module. `env_version` and
/// `env_header` are the values of [`ENV_VERSION`] and [`ENV_HEADER`];
/// `read` reads a header (`None` when it does not exist). The error says
/// what is wrong and how to fix it.
pub fn pick(
    env_version: Option<&str>,
    env_header: Option<&Path>,
    read: impl Fn(&Path) -> Option<std::io::Result<String>>,
) -> Result<Picked, String> {
    if let Some(value) = env_version {
        let version = value.trim().parse::<i32>().map_err(|_| {
            format!("{ENV_VERSION}={value:?} is not an integer; set it to the number in your MailerQ's mailerq.h")
        })?;
        return Ok(Picked {
            version,
            source: Source::Env,
        });
    }
    if let Some(path) = env_header {
        let text = match read(path) {
            Some(Ok(text)) => text,
            Some(Err(e)) => {
                return Err(format!(
                    "{ENV_HEADER}={}: cannot read it: {e}",
                    path.display()
                ))
            }
            None => {
                return Err(format!(
                    "{ENV_HEADER}={}: no such file; name MailerQ's mailerq.h, or unset it",
                    path.display()
                ))
            }
        };
        return match parse_header(&text) {
            Some(Ok(version)) => Ok(Picked {
                version,
                source: Source::Header(path.to_owned()),
            }),
            Some(Err(e)) => Err(format!("{ENV_HEADER}={}: {e}", path.display())),
            None => Err(format!(
                "{ENV_HEADER}={}: the header defines no MQ_API_VERSION",
                path.display()
            )),
        };
    }
    for path in DEFAULT_HEADERS.iter().map(Path::new) {
        if let Some(Ok(text)) = read(path) {
            match parse_header(&text) {
                Some(Ok(version)) => {
                    return Ok(Picked {
                        version,
                        source: Source::Header(path.to_owned()),
                    })
                }
                Some(Err(e)) => return Err(format!("{}: {e}", path.display())),
                None => {}
            }
        }
    }
    Ok(Picked {
        version: MQ_API_VERSION,
        source: Source::Default,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn files(list: &[(&str, &str)]) -> impl Fn(&Path) -> Option<std::io::Result<String>> {
        let map: HashMap<PathBuf, String> = list
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        move |p| map.get(p).cloned().map(Ok)
    }

    #[test]
    fn the_define_is_read_from_a_header() {
        assert_eq!(parse_header("#define MQ_API_VERSION 7\n"), Some(Ok(7)));
        assert_eq!(
            parse_header("/* x */\n  #  define\tMQ_API_VERSION  (12) /* the API */\n"),
            Some(Ok(12))
        );
        assert_eq!(
            parse_header("#define MQ_API_VERSION 3 // note"),
            Some(Ok(3))
        );
        assert_eq!(parse_header("#define MQ_API_VERSION_MINOR 2\n"), None);
        assert_eq!(parse_header("#define MQ_READ 1\n"), None);
        assert!(matches!(
            parse_header("#define MQ_API_VERSION 0x10"),
            Some(Err(_))
        ));
        // Our own header defines the project's number.
        let ours = include_str!("../../include/mailerq.h");
        assert_eq!(parse_header(ours), Some(Ok(MQ_API_VERSION)));
    }

    #[test]
    fn the_environment_wins_then_the_named_header_then_the_system_one() {
        let system = files(&[
            ("/usr/include/mailerq.h", "#define MQ_API_VERSION 5\n"),
            ("/tmp/h.h", "#define MQ_API_VERSION 6\n"),
        ]);
        let env = pick(Some("7"), Some(Path::new("/tmp/h.h")), &system).unwrap();
        assert_eq!((env.version, env.source), (7, Source::Env));
        let named = pick(None, Some(Path::new("/tmp/h.h")), &system).unwrap();
        assert_eq!(named.version, 6);
        assert_eq!(named.source, Source::Header("/tmp/h.h".into()));
        let found = pick(None, None, &system).unwrap();
        assert_eq!(found.version, 5);
        let none = pick(None, None, files(&[])).unwrap();
        assert_eq!(
            (none.version, none.source),
            (MQ_API_VERSION, Source::Default)
        );
    }

    #[test]
    fn a_wrong_setting_is_an_error_not_the_default() {
        let e = pick(Some("seven"), None, files(&[])).unwrap_err();
        assert!(
            e.starts_with("MQ_API_VERSION=\"seven\" is not an integer"),
            "{e}"
        );
        let e = pick(None, Some(Path::new("/nope.h")), files(&[])).unwrap_err();
        assert_eq!(
            e,
            "MQ_PLUGIN_MAILERQ_HEADER=/nope.h: no such file; name MailerQ's mailerq.h, or unset it"
        );
        let e = pick(None, Some(Path::new("/x.h")), files(&[("/x.h", "int x;")])).unwrap_err();
        assert!(e.ends_with("defines no MQ_API_VERSION"), "{e}");
    }

    #[test]
    fn a_system_header_without_the_define_is_passed_over() {
        let other = files(&[
            ("/usr/include/mailerq.h", "/* another mailerq.h */\n"),
            ("/usr/local/include/mailerq.h", "#define MQ_API_VERSION 9\n"),
        ]);
        assert_eq!(pick(None, None, other).unwrap().version, 9);
    }
}

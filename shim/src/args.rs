//! The shim's command line, in containerd's Go `flag` style:
//! `containerd-shim-husk-v2 -namespace N -address A -publish-binary B -id ID [-debug] [start|delete]`.
//! Unknown flags are tolerated (newer containerd versions add some); `check` is husk's own verb.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("flag -{0} needs a value")]
    MissingValue(String),
    #[error(
        "unexpected argument {0:?}; usage: containerd-shim-husk-v2 [flags] [start|delete|check]"
    )]
    Unexpected(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Serve the task API (the daemon `start` spawned).
    Serve,
    Start,
    Delete,
    Check,
    Version,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub namespace: String,
    pub address: String,
    pub publish_binary: String,
    pub id: String,
    pub bundle: String,
    pub debug: bool,
    /// The husk configuration file containerd's runtime options name (`ConfigPath`);
    /// `start` reads the options and hands this to the daemon (`-husk-config`).
    pub config_path: String,
    pub action: Action,
}

/// Flags that take a value; everything else starting with `-` is boolean.
const VALUE_FLAGS: &[&str] = &[
    "namespace",
    "address",
    "publish-binary",
    "id",
    "bundle",
    "socket",
    "ttrpc-address",
    "husk-config",
];

impl Args {
    pub fn parse<I: IntoIterator<Item = String>>(argv: I) -> Result<Self, ArgsError> {
        let mut args = Args {
            namespace: String::new(),
            address: String::new(),
            publish_binary: String::new(),
            id: String::new(),
            bundle: String::new(),
            debug: false,
            config_path: String::new(),
            action: Action::Serve,
        };
        let mut it = argv.into_iter().skip(1);
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                args.action = match arg.as_str() {
                    "start" => Action::Start,
                    "delete" => Action::Delete,
                    "check" => Action::Check,
                    _ => return Err(ArgsError::Unexpected(arg)),
                };
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            if VALUE_FLAGS.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .ok_or_else(|| ArgsError::MissingValue(name.to_string()))?,
                };
                match name {
                    "namespace" => args.namespace = value,
                    "address" => args.address = value,
                    "publish-binary" => args.publish_binary = value,
                    "id" => args.id = value,
                    "bundle" => args.bundle = value,
                    "husk-config" => args.config_path = value,
                    _ => {}
                }
            } else {
                match name {
                    "debug" => args.debug = inline.is_none_or(|v| v != "false"),
                    "v" | "version" => args.action = Action::Version,
                    _ => {}
                }
            }
        }
        Ok(args)
    }

    /// The flags to hand to the serving daemon (everything but the action).
    pub fn daemon_flags(&self) -> Vec<String> {
        let mut f = vec![
            "-namespace".into(),
            self.namespace.clone(),
            "-id".into(),
            self.id.clone(),
            "-address".into(),
            self.address.clone(),
        ];
        if !self.publish_binary.is_empty() {
            f.extend(["-publish-binary".into(), self.publish_binary.clone()]);
        }
        if self.debug {
            f.push("-debug".into());
        }
        if !self.config_path.is_empty() {
            f.extend(["-husk-config".into(), self.config_path.clone()]);
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, ArgsError> {
        Args::parse(
            std::iter::once("shim".to_string()).chain(s.split_whitespace().map(String::from)),
        )
    }

    #[test]
    fn parses_containerd_start_line() {
        let a = parse("-namespace k8s.io -address /run/containerd/containerd.sock -publish-binary /usr/bin/containerd -id abc -debug start").unwrap();
        assert_eq!(a.namespace, "k8s.io");
        assert_eq!(a.address, "/run/containerd/containerd.sock");
        assert_eq!(a.id, "abc");
        assert!(a.debug);
        assert_eq!(a.action, Action::Start);
    }

    #[test]
    fn accepts_equals_double_dash_and_unknown_flags() {
        let a = parse("--namespace=ns -id=x -unknown-bool -bundle /b delete").unwrap();
        assert_eq!(
            (a.namespace.as_str(), a.id.as_str(), a.bundle.as_str()),
            ("ns", "x", "/b")
        );
        assert_eq!(a.action, Action::Delete);
    }

    #[test]
    fn no_action_means_serve_and_errors_are_clear() {
        assert_eq!(parse("-id x").unwrap().action, Action::Serve);
        assert_eq!(
            parse("-id").unwrap_err(),
            ArgsError::MissingValue("id".into())
        );
        assert!(matches!(parse("bogus"), Err(ArgsError::Unexpected(_))));
        assert_eq!(parse("-v").unwrap().action, Action::Version);
    }

    #[test]
    fn daemon_flags_round_trip() {
        let mut a = parse("-namespace ns -address /a -id x -debug start").unwrap();
        a.config_path = "/etc/husk/other.toml".into();
        let again =
            Args::parse(std::iter::once("shim".to_string()).chain(a.daemon_flags())).unwrap();
        assert_eq!(again.action, Action::Serve);
        assert_eq!(
            (
                again.namespace,
                again.address,
                again.id,
                again.debug,
                again.config_path
            ),
            (a.namespace, a.address, a.id, true, a.config_path)
        );
    }
}

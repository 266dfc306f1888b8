//! containerd runtime options for husk. CRI sends `[...runtimes.husk.options]` as
//! containerd's `runtimeoptions.v1.Options` message (decoded with its `.proto`,
//! `husk_protocol::runtimeoptions`). Other option types (e.g. runc's) are not husk's and are
//! ignored.

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use husk_protocol::protobuf::Message;
use husk_protocol::runtimeoptions::Options;

/// Type names CRI uses for its generic runtime options.
const CRI_OPTIONS_TYPES: &[&str] = &[
    "runtimeoptions.v1.Options",
    "type.googleapis.com/runtimeoptions.v1.Options",
];

/// The `ConfigPath` option, if the options carry one. Options that do not decode are
/// treated as absent (the default configuration applies), as for any other option type.
pub fn config_path(options: Option<&Any>) -> Option<String> {
    let any = options?;
    if !CRI_OPTIONS_TYPES.contains(&any.type_url.as_str()) {
        return None;
    }
    Options::parse_from_bytes(&any.value)
        .ok()
        .map(|o| o.config_path)
        .filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(type_url: &str, config_path: &str) -> Any {
        let mut options = Options::new();
        options.type_url = "io.containerd.husk.v2".into();
        options.config_path = config_path.into();
        let mut any = Any::new();
        any.type_url = type_url.into();
        any.value = options.write_to_bytes().unwrap();
        any
    }

    #[test]
    fn reads_cri_config_path() {
        assert_eq!(
            config_path(Some(&options(
                "runtimeoptions.v1.Options",
                "/etc/husk/x.toml"
            )))
            .as_deref(),
            Some("/etc/husk/x.toml")
        );
        assert_eq!(
            config_path(Some(&options("runtimeoptions.v1.Options", ""))),
            None
        );
        assert_eq!(
            config_path(Some(&options("containerd.runc.v1.Options", "/x"))),
            None
        );
        assert_eq!(config_path(None), None);
    }

    /// The bytes containerd writes (type_url = 1, config_path = 2, config_body = 3).
    #[test]
    fn decodes_containerd_wire_bytes_and_ignores_garbage() {
        let mut wire = vec![0x0a, 3];
        wire.extend_from_slice(b"cri");
        wire.extend_from_slice(&[0x12, 6]);
        wire.extend_from_slice(b"/x.tml");
        wire.extend_from_slice(&[0x1a, 1, b'x']);
        let mut any = Any::new();
        any.type_url = "runtimeoptions.v1.Options".into();
        any.value = wire;
        assert_eq!(config_path(Some(&any)).as_deref(), Some("/x.tml"));
        any.value = vec![0x12, 200, 1];
        assert_eq!(config_path(Some(&any)), None);
    }
}

//! containerd runtime options for husk. CRI sends `[...runtimes.husk.options]` as a
//! `runtimeoptions.v1.Options` message (`type_url` = 1, `config_path` = 2).
//! Other option types (e.g. runc's) are ignored.

use containerd_shim_protos::protobuf::CodedInputStream;
use containerd_shim_protos::protobuf::well_known_types::any::Any;

/// Type names CRI uses for its generic runtime options.
const CRI_OPTIONS_TYPES: &[&str] = &[
    "runtimeoptions.v1.Options",
    "type.googleapis.com/runtimeoptions.v1.Options",
];
/// `config_path` field number in runtimeoptions.v1.Options.
const CONFIG_PATH_FIELD: u32 = 2;
/// Protobuf wire type of length-delimited fields.
const WIRE_LEN: u32 = 2;

/// The `ConfigPath` option, if the options carry one.
pub fn config_path(options: Option<&Any>) -> Option<String> {
    let any = options?;
    if !CRI_OPTIONS_TYPES.contains(&any.type_url.as_str()) {
        return None;
    }
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut found = None;
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        let (field, wire) = (tag >> 3, tag & 7);
        if field == CONFIG_PATH_FIELD && wire == WIRE_LEN {
            found = input.read_string().ok();
        } else if input.skip_field(wire_type(wire)?).is_err() {
            break;
        }
    }
    found.filter(|p| !p.is_empty())
}

fn wire_type(w: u32) -> Option<containerd_shim_protos::protobuf::rt::WireType> {
    containerd_shim_protos::protobuf::rt::WireType::new(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::CodedOutputStream;

    fn options(type_url: &str, config_path: &str) -> Any {
        let mut value = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut value);
            out.write_string(1, "io.containerd.husk.v2").unwrap();
            out.write_string(2, config_path).unwrap();
            out.flush().unwrap();
        }
        let mut any = Any::new();
        any.type_url = type_url.into();
        any.value = value;
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
}

//! containerd's CRI configuration for runtime handler `husk`.
//!
//! `install` makes `/etc/containerd/config.toml` import `/etc/containerd/conf.d/*.toml`
//! and writes the husk drop-in there: the runtime table of `deploy/containerd-husk.toml`
//! plus the local pause image as `sandbox_image` (so RunPodSandbox never pulls).
//!
//! containerd 1.x merges an imported file by replacing each plugin section it names as a
//! whole (containerd issue 5837; 2.0 merges deeply): a drop-in with only
//! `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]` wipes the main
//! config's CRI settings (CNI `bin_dir`, …) and even the `runc` runtime, after which
//! containerd 1.6 refuses to load CRI ("no corresponding runtime configured in
//! `containerd.runtimes` for `containerd` `default_runtime_name = "runc"`"). For 1.x the
//! drop-in therefore carries the main config's whole CRI section with husk merged in
//! (as NVIDIA's container toolkit does); 2.x gets the shipped table as it is.

use anyhow::{Context, Result, bail, ensure};
use toml_edit::{Array, DocumentMut, Item, Table, value};

/// The CRI plugin's section in the `version = 2` schema.
const CRI: &str = "io.containerd.grpc.v1.cri";
/// containerd's built-in default runtime.
const RUNC: &str = "runc";
const RUNC_TYPE: &str = "io.containerd.runc.v2";

fn parse(text: &str, what: &str) -> Result<DocumentMut> {
    text.parse::<DocumentMut>()
        .with_context(|| format!("parsing {what} as TOML"))
}

/// The schema version of a containerd config (containerd reads a missing one as 1).
fn version(doc: &DocumentMut) -> i64 {
    doc.get("version").and_then(Item::as_integer).unwrap_or(1)
}

/// `main` with `glob` in its top-level `imports`; `None` if it is there already. An empty
/// `main` (no config file) becomes a minimal `version = 2` config.
pub fn with_import(main: &str, glob: &str) -> Result<Option<String>> {
    let mut doc = parse(main, "the containerd config")?;
    if main.trim().is_empty() {
        doc["version"] = value(2);
    }
    ensure!(
        version(&doc) >= 2,
        "the containerd config has schema version {} (no `version = 2`): its CRI keys \
         differ from the drop-in's; convert it to version 2 first",
        version(&doc)
    );
    match doc.get_mut("imports") {
        Some(item) => {
            let array = item
                .as_array_mut()
                .context("`imports` in the containerd config is not an array")?;
            if array.iter().any(|v| v.as_str() == Some(glob)) {
                return Ok(None);
            }
            array.push(glob);
        }
        None => {
            let mut array = Array::new();
            array.push(glob);
            doc["imports"] = value(array);
        }
    }
    Ok(Some(doc.to_string()))
}

/// Copies every key of `src` into `dst`, recursing into tables both have.
fn merge(dst: &mut Table, src: &Table) {
    for (k, v) in src {
        match (dst.get_mut(k).and_then(Item::as_table_mut), v.as_table()) {
            (Some(d), Some(s)) => merge(d, s),
            _ => {
                dst.insert(k, v.clone());
            }
        }
    }
}

/// `doc[path...]` as a table, creating (implicit) tables on the way.
fn table_at<'a>(doc: &'a mut Table, path: &[&str]) -> Result<&'a mut Table> {
    let mut t = doc;
    for key in path {
        let entry = t.entry(key).or_insert_with(|| {
            let mut n = Table::new();
            n.set_implicit(true);
            Item::Table(n)
        });
        t = entry
            .as_table_mut()
            .with_context(|| format!("`{key}` is not a table"))?;
    }
    Ok(t)
}

/// The husk drop-in for containerd `major`: `shipped` (deploy/containerd-husk.toml) with
/// `sandbox_image`, and for containerd 1.x the CRI section of `main` merged under it.
pub fn dropin(shipped: &str, main: &str, major: u32, sandbox_image: &str) -> Result<String> {
    let shipped = parse(shipped, "the shipped drop-in")?;
    ensure!(
        version(&shipped) == 2,
        "the shipped drop-in must use containerd's `version = 2` schema"
    );
    let husk_cri = shipped
        .get("plugins")
        .and_then(|p| p.get(CRI))
        .and_then(Item::as_table)
        .context("the shipped drop-in has no [plugins.\"io.containerd.grpc.v1.cri\"] section")?;
    let mut out = DocumentMut::new();
    out["version"] = value(2);
    let cri = table_at(out.as_table_mut(), &["plugins", CRI])?;
    cri.set_implicit(false);
    if major < 2 {
        let main = parse(main, "the containerd config")?;
        if let Some(existing) = main.get("plugins").and_then(|p| p.get(CRI)) {
            let existing = existing
                .as_table()
                .context("the containerd config's CRI section is not a table")?;
            merge(cri, existing);
        }
    }
    merge(cri, husk_cri);
    cri.insert("sandbox_image", value(sandbox_image));
    if major < 2 {
        let containerd = table_at(cri, &["containerd"])?;
        let default = containerd
            .get("default_runtime_name")
            .and_then(Item::as_str)
            .unwrap_or(RUNC)
            .to_owned();
        let runtimes = table_at(containerd, &["runtimes"])?;
        if !runtimes.contains_key(&default) {
            if default != RUNC {
                bail!(
                    "the containerd config's default runtime {default:?} has no \
                     [plugins.\"{CRI}\".containerd.runtimes.{default}] table"
                );
            }
            let mut runc = Table::new();
            runc.insert("runtime_type", value(RUNC_TYPE));
            runtimes.insert(RUNC, Item::Table(runc));
        }
    }
    let header = if major < 2 {
        "# Generated by `cargo xtask install` from deploy/containerd-husk.toml: runtime handler\n\
         # `husk` for CRI (Kubernetes RuntimeClass `husk`) and husk's local pause image.\n\
         # containerd 1.x replaces the whole CRI section of its main config with this file's,\n\
         # so this file also carries the CRI settings /etc/containerd/config.toml had at\n\
         # install time: change CRI settings here, or re-run the install after changing them\n\
         # there.\n"
    } else {
        "# Generated by `cargo xtask install` from deploy/containerd-husk.toml: runtime handler\n\
         # `husk` for CRI (Kubernetes RuntimeClass `husk`) and husk's local pause image.\n"
    };
    Ok(format!("{header}{out}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../../../deploy/containerd-husk.toml");
    const GLOB: &str = "/etc/containerd/conf.d/*.toml";
    const PAUSE: &str = "docker.io/library/husk-pause:latest";
    /// This machine's /etc/containerd/config.toml (Debian 12 with CNI set up).
    const DEBIAN_MAIN: &str = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    \
        [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"\n      \
        conf_dir = \"/etc/cni/net.d\"\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    \
        path = \"/var/lib/containerd/opt\"\n";

    fn get<'a>(t: &'a toml_edit::DocumentMut, path: &[&str]) -> Option<&'a Item> {
        let mut item = t.as_item();
        for k in path {
            item = item.get(k)?;
        }
        Some(item)
    }

    #[test]
    fn imports_are_added_once_and_comments_kept() {
        let main = "# keep me\nversion = 2\nimports = [\"/x.toml\"]\n[plugins]\n";
        let new = with_import(main, GLOB).unwrap().unwrap();
        assert!(new.contains("# keep me"));
        let doc = parse(&new, "x").unwrap();
        let imports: Vec<&str> = doc["imports"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(imports, ["/x.toml", GLOB]);
        assert_eq!(with_import(&new, GLOB).unwrap(), None);
        let fresh = with_import("", GLOB).unwrap().unwrap();
        let doc = parse(&fresh, "x").unwrap();
        assert_eq!(doc["version"].as_integer(), Some(2));
        let new = with_import(DEBIAN_MAIN, GLOB).unwrap().unwrap();
        // Still the same plugins, imports at the top level.
        let doc = parse(&new, "x").unwrap();
        assert!(get(&doc, &["plugins", CRI, "cni", "bin_dir"]).is_some());
        assert!(doc["imports"].is_array());
        assert!(with_import("[plugins]\n", GLOB).is_err());
    }

    #[test]
    fn containerd_1_dropin_keeps_the_main_cri_settings_and_runc() {
        let text = dropin(SHIPPED, DEBIAN_MAIN, 1, PAUSE).unwrap();
        let doc = parse(&text, "dropin").unwrap();
        let cri = |p: &[&str]| {
            let mut full = vec!["plugins", CRI];
            full.extend_from_slice(p);
            get(&doc, &full).cloned()
        };
        assert_eq!(
            cri(&["cni", "bin_dir"]).and_then(|i| i.as_str().map(str::to_owned)),
            Some("/usr/lib/cni".into())
        );
        assert_eq!(
            cri(&["sandbox_image"]).and_then(|i| i.as_str().map(str::to_owned)),
            Some(PAUSE.into())
        );
        assert_eq!(
            cri(&["containerd", "runtimes", "runc", "runtime_type"])
                .and_then(|i| i.as_str().map(str::to_owned)),
            Some(RUNC_TYPE.into())
        );
        assert_eq!(
            cri(&["containerd", "runtimes", "husk", "runtime_type"])
                .and_then(|i| i.as_str().map(str::to_owned)),
            Some("io.containerd.husk.v2".into())
        );
        assert!(cri(&["containerd", "runtimes", "husk", "options", "ConfigPath"]).is_some());
        // A custom default runtime must exist.
        let custom = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  \
                      default_runtime_name = \"crun\"\n";
        assert!(dropin(SHIPPED, custom, 1, PAUSE).is_err());
    }

    #[test]
    fn containerd_2_dropin_is_the_shipped_table_with_the_pause_image() {
        let text = dropin(SHIPPED, DEBIAN_MAIN, 2, PAUSE).unwrap();
        let doc = parse(&text, "dropin").unwrap();
        assert!(get(&doc, &["plugins", CRI, "cni"]).is_none());
        assert!(get(&doc, &["plugins", CRI, "containerd", "runtimes", "husk"]).is_some());
        assert_eq!(
            get(&doc, &["plugins", CRI, "sandbox_image"]).and_then(Item::as_str),
            Some(PAUSE)
        );
    }

    /// What containerd 1.6 itself makes of main config + drop-in (`containerd config
    /// dump` parses and merges them without starting a daemon).
    #[test]
    fn containerd_merges_the_generated_files_as_intended() {
        let dir = std::env::temp_dir().join(format!("husk-install-cri-{}", std::process::id()));
        let dropins = dir.join("conf.d");
        std::fs::create_dir_all(&dropins).unwrap();
        let glob = format!("{}/*.toml", dropins.display());
        let main = with_import(DEBIAN_MAIN, &glob).unwrap().unwrap();
        std::fs::write(dir.join("config.toml"), &main).unwrap();
        std::fs::write(
            dropins.join("containerd-husk.toml"),
            dropin(SHIPPED, DEBIAN_MAIN, 1, PAUSE).unwrap(),
        )
        .unwrap();
        let out = husk_tests::Cmd::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .args(["config", "dump"])
            .timeout(std::time::Duration::from_secs(30))
            .checked()
            .expect("`containerd config dump` (install containerd: `cargo xtask deps`)");
        let _ = std::fs::remove_dir_all(&dir);
        let dump: toml_edit::DocumentMut = out.stdout_text().parse().unwrap();
        let cri = |p: &[&str]| {
            let mut full = vec!["plugins", CRI];
            full.extend_from_slice(p);
            get(&dump, &full).and_then(Item::as_str).map(str::to_owned)
        };
        assert_eq!(cri(&["cni", "bin_dir"]).as_deref(), Some("/usr/lib/cni"));
        assert_eq!(cri(&["sandbox_image"]).as_deref(), Some(PAUSE));
        assert_eq!(
            cri(&["containerd", "runtimes", "runc", "runtime_type"]).as_deref(),
            Some(RUNC_TYPE)
        );
        assert_eq!(
            cri(&["containerd", "runtimes", "husk", "options", "ConfigPath"]).as_deref(),
            Some("/etc/husk/config.toml")
        );
    }
}

//! Kernel config fragments: loading them in the order the cache key and the merge use,
//! and checking that what they request landed in the final `.config`.

use std::fs;
use std::path::{Path, PathBuf};

/// Errors from reading the fragment directory.
#[derive(Debug, thiserror::Error)]
pub enum FragmentError {
    /// The directory or a fragment could not be read.
    #[error("reading kernel config fragments at {path}: {source}")]
    Io {
        /// What was being read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A fragment's file name is not UTF-8 (it is part of the cache key).
    #[error("kernel config file {0} has a non-UTF-8 file name")]
    NonUtf8Name(PathBuf),
    /// No `*.conf` file at all: almost certainly the wrong directory.
    #[error("no *.conf kernel config fragments in {0}")]
    Empty(PathBuf),
}

/// One `*.conf` file: its file name (not path) and its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// File name, e.g. `40-virtio.conf`.
    pub name: String,
    /// Contents, verbatim.
    pub contents: Vec<u8>,
}

/// Every regular file of `dir` whose extension is `ext`, by file name (unsorted).
pub(crate) fn read_files_named(dir: &Path, ext: &str) -> Result<Vec<Fragment>, FragmentError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FragmentError::Io { path, source }
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_none_or(|e| e != ext) || !path.is_file() {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| FragmentError::NonUtf8Name(path.clone()))?
            .to_owned();
        let contents = fs::read(&path).map_err(io(&path))?;
        files.push(Fragment { name, contents });
    }
    Ok(files)
}

/// What a fragment line asks of the final `.config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `CONFIG_X=v`: this exact line must appear in `.config`.
    Set {
        /// `CONFIG_X`.
        symbol: String,
        /// The full line, e.g. `CONFIG_X=y`.
        line: String,
    },
    /// `# CONFIG_X is not set` or `CONFIG_X=n`: no `CONFIG_X=` line may appear.
    Unset {
        /// `CONFIG_X`.
        symbol: String,
    },
}

impl Request {
    fn symbol(&self) -> &str {
        match self {
            Request::Set { symbol, .. } | Request::Unset { symbol } => symbol,
        }
    }

    fn parse(line: &str) -> Option<Self> {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("# ") {
            let symbol = rest.strip_suffix(" is not set")?;
            return symbol.starts_with("CONFIG_").then(|| Request::Unset {
                symbol: symbol.to_owned(),
            });
        }
        let (symbol, value) = line.split_once('=')?;
        if !symbol.starts_with("CONFIG_") {
            return None;
        }
        Some(if value == "n" {
            Request::Unset {
                symbol: symbol.to_owned(),
            }
        } else {
            Request::Set {
                symbol: symbol.to_owned(),
                line: line.to_owned(),
            }
        })
    }
}

/// The fragments of one kernel recipe in merge order: sorted by file name (byte order)
/// within each layer, layers in the order they were added ([`FragmentSet::followed_by`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentSet {
    fragments: Vec<Fragment>,
}

impl FragmentSet {
    /// Loads every `*.conf` file of `dir`.
    pub fn load(dir: &Path) -> Result<Self, FragmentError> {
        let fragments = read_files_named(dir, "conf")?;
        if fragments.is_empty() {
            return Err(FragmentError::Empty(dir.to_owned()));
        }
        Ok(Self::from_fragments(fragments))
    }

    /// Builds a set from in-memory fragments (sorted here).
    pub fn from_fragments(mut fragments: Vec<Fragment>) -> Self {
        fragments.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Self { fragments }
    }

    /// This set followed by `layer`, whose fragments are renamed `<prefix><name>` and
    /// kept after this set's (no re-sorting): a second kernel flavour is "these fragments,
    /// then those", and the prefixed names keep the two layers apart in the cache key.
    #[must_use]
    pub fn followed_by(mut self, prefix: &str, layer: FragmentSet) -> Self {
        self.fragments
            .extend(layer.fragments.into_iter().map(|f| Fragment {
                name: format!("{prefix}{}", f.name),
                contents: f.contents,
            }));
        self
    }

    /// The fragments in merge order.
    pub fn fragments(&self) -> &[Fragment] {
        &self.fragments
    }

    /// All fragments concatenated in order (what `KCONFIG_ALLCONFIG` reads); a newline
    /// is inserted after a fragment that lacks one so lines never run together.
    pub fn merged(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for f in &self.fragments {
            out.extend_from_slice(&f.contents);
            if !f.contents.is_empty() && !f.contents.ends_with(b"\n") {
                out.push(b'\n');
            }
        }
        out
    }

    /// What the fragments request; when a symbol appears more than once the last
    /// occurrence wins, as it does for `KCONFIG_ALLCONFIG`.
    pub fn requests(&self) -> Vec<Request> {
        let merged = self.merged();
        let text = String::from_utf8_lossy(&merged);
        let mut out: Vec<Request> = Vec::new();
        for req in text.lines().filter_map(Request::parse) {
            out.retain(|r| r.symbol() != req.symbol());
            out.push(req);
        }
        out
    }
}

/// Returns a description of every request that `dot_config` does not satisfy, e.g.
/// `CONFIG_VSOCKETS=y (.config has: # CONFIG_VSOCKETS is not set)`.
pub fn unmet_requests(requests: &[Request], dot_config: &str) -> Vec<String> {
    let found = |symbol: &str| -> Option<&str> {
        let set = format!("{symbol}=");
        let unset = format!("# {symbol} is not set");
        dot_config
            .lines()
            .find(|l| l.starts_with(&set) || *l == unset)
    };
    let mut unmet = Vec::new();
    for req in requests {
        match req {
            Request::Set { symbol, line } => {
                if !dot_config.lines().any(|l| l == line) {
                    let has = found(symbol).unwrap_or("nothing (symbol absent)");
                    unmet.push(format!("{line} (.config has: {has})"));
                }
            }
            Request::Unset { symbol } => {
                if let Some(has) = found(symbol).filter(|l| l.starts_with(symbol.as_str())) {
                    unmet.push(format!("# {symbol} is not set (.config has: {has})"));
                }
            }
        }
    }
    unmet
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(name: &str, contents: &str) -> Fragment {
        Fragment {
            name: name.into(),
            contents: contents.into(),
        }
    }

    #[test]
    fn sorted_by_file_name_and_merged_with_newlines() {
        let set = FragmentSet::from_fragments(vec![
            frag("20-b.conf", "CONFIG_B=y"),
            frag("10-a.conf", "CONFIG_A=y\n"),
        ]);
        let names: Vec<_> = set.fragments().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["10-a.conf", "20-b.conf"]);
        assert_eq!(set.merged(), b"CONFIG_A=y\nCONFIG_B=y\n");
    }

    #[test]
    fn a_following_layer_keeps_its_order_and_prefixes_names() {
        let base = FragmentSet::from_fragments(vec![frag("50-b.conf", "CONFIG_B=y\n")]);
        let layer = FragmentSet::from_fragments(vec![
            frag("10-a.conf", "CONFIG_B=n\n"),
            frag("20-c.conf", "CONFIG_C=y\n"),
        ]);
        let set = base.followed_by("outer/", layer);
        let names: Vec<_> = set.fragments().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["50-b.conf", "outer/10-a.conf", "outer/20-c.conf"]);
        // The later layer wins, as KCONFIG_ALLCONFIG reads it.
        assert_eq!(
            set.requests(),
            vec![
                Request::Unset {
                    symbol: "CONFIG_B".into()
                },
                Request::Set {
                    symbol: "CONFIG_C".into(),
                    line: "CONFIG_C=y".into()
                },
            ]
        );
    }

    #[test]
    fn requests_parse_set_unset_and_last_wins() {
        let set = FragmentSet::from_fragments(vec![
            frag(
                "a.conf",
                "# comment\nCONFIG_A=y\nCONFIG_S=\"x y\"\n# CONFIG_U is not set\n",
            ),
            frag("b.conf", "CONFIG_A=m\nCONFIG_N=n\nNOT_CONFIG=y\n"),
        ]);
        assert_eq!(
            set.requests(),
            vec![
                Request::Set {
                    symbol: "CONFIG_S".into(),
                    line: "CONFIG_S=\"x y\"".into()
                },
                Request::Unset {
                    symbol: "CONFIG_U".into()
                },
                Request::Set {
                    symbol: "CONFIG_A".into(),
                    line: "CONFIG_A=m".into()
                },
                Request::Unset {
                    symbol: "CONFIG_N".into()
                },
            ]
        );
    }

    #[test]
    fn unmet_requests_name_the_symbols() {
        let requests = vec![
            Request::Set {
                symbol: "CONFIG_OK".into(),
                line: "CONFIG_OK=y".into(),
            },
            Request::Set {
                symbol: "CONFIG_MOD".into(),
                line: "CONFIG_MOD=y".into(),
            },
            Request::Set {
                symbol: "CONFIG_OFF".into(),
                line: "CONFIG_OFF=y".into(),
            },
            Request::Set {
                symbol: "CONFIG_GONE".into(),
                line: "CONFIG_GONE=y".into(),
            },
            Request::Unset {
                symbol: "CONFIG_NO".into(),
            },
            Request::Unset {
                symbol: "CONFIG_ON".into(),
            },
        ];
        let dot_config = "CONFIG_OK=y\nCONFIG_MOD=m\n# CONFIG_OFF is not set\n\
                          # CONFIG_NO is not set\nCONFIG_ON=y\nCONFIG_OKAY=y\n";
        assert_eq!(
            unmet_requests(&requests, dot_config),
            vec![
                "CONFIG_MOD=y (.config has: CONFIG_MOD=m)",
                "CONFIG_OFF=y (.config has: # CONFIG_OFF is not set)",
                "CONFIG_GONE=y (.config has: nothing (symbol absent))",
                "# CONFIG_ON is not set (.config has: CONFIG_ON=y)",
            ]
        );
    }

    #[test]
    fn load_reads_only_conf_files() {
        let dir = std::env::temp_dir().join(format!("husk-frag-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("b.conf"), "CONFIG_B=y\n").unwrap();
        fs::write(dir.join("a.conf"), "CONFIG_A=y\n").unwrap();
        fs::write(dir.join("README"), "not a fragment").unwrap();
        let set = FragmentSet::load(&dir).unwrap();
        assert_eq!(
            set.fragments(),
            [
                frag("a.conf", "CONFIG_A=y\n"),
                frag("b.conf", "CONFIG_B=y\n")
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            FragmentSet::load(&dir),
            Err(FragmentError::Io { .. })
        ));
    }
}

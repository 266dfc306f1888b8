//! kubelet's atomic writer, as it fills and updates configMap, secret, downwardAPI and
//! projected volumes: the files live in a hidden timestamped directory, `..data` is a
//! symlink to it, and each key is a symlink through `..data`. An update writes a new
//! directory, points `..data_tmp` at it, renames that over `..data` (the one atomic
//! step) and removes the old directory.

use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// A volume directory kept the way kubelet keeps it.
pub struct AtomicVolume {
    dir: PathBuf,
    generation: u32,
}

impl AtomicVolume {
    /// Creates `dir` holding `files` (key, content).
    pub fn create(dir: &Path, files: &[(&str, &str)]) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut v = AtomicVolume {
            dir: dir.to_path_buf(),
            generation: 0,
        };
        v.update(files)?;
        Ok(v)
    }

    /// The volume's host directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces the volume's content with `files`, as kubelet does.
    pub fn update(&mut self, files: &[(&str, &str)]) -> io::Result<()> {
        self.generation += 1;
        let name = format!("..2026_12_07_00_00_00.{:09}", self.generation);
        let payload = self.dir.join(&name);
        std::fs::create_dir(&payload)?;
        for (key, content) in files {
            std::fs::write(payload.join(key), content)?;
        }
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        let tmp = self.dir.join("..data_tmp");
        symlink(&name, &tmp)?;
        std::fs::rename(&tmp, self.dir.join("..data"))?;
        for (key, _) in files {
            let link = self.dir.join(key);
            if link.symlink_metadata().is_err() {
                symlink(Path::new("..data").join(key), &link)?;
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old))?;
        }
        Ok(())
    }
}

//! `husk-inotify-probe DIR...`: watches each directory with inotify and prints one line
//! per event, `<dir>\t<event>\t<name>`, flushed at once, until killed. The integration
//! tests run it (a static binary, bind-mounted into a container) to see what an
//! application's inotify watcher sees; the test image's busybox has no `inotifyd`.

use std::io::Write;

use anyhow::{Context, Result, bail};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

fn event_name(mask: AddWatchFlags) -> &'static str {
    const NAMES: [(AddWatchFlags, &str); 8] = [
        (AddWatchFlags::IN_CREATE, "create"),
        (AddWatchFlags::IN_MOVED_TO, "moved_to"),
        (AddWatchFlags::IN_MOVED_FROM, "moved_from"),
        (AddWatchFlags::IN_DELETE, "delete"),
        (AddWatchFlags::IN_CLOSE_WRITE, "close_write"),
        (AddWatchFlags::IN_DELETE_SELF, "delete_self"),
        (AddWatchFlags::IN_MODIFY, "modify"),
        (AddWatchFlags::IN_IGNORED, "ignored"),
    ];
    NAMES
        .iter()
        .find(|(flag, _)| mask.contains(*flag))
        .map_or("other", |(_, name)| name)
}

fn main() -> Result<()> {
    let dirs: Vec<String> = std::env::args().skip(1).collect();
    if dirs.is_empty() {
        bail!("usage: husk-inotify-probe DIR...");
    }
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).context("inotify_init")?;
    let mask = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MODIFY;
    let mut watched = Vec::new();
    for dir in &dirs {
        let wd = inotify
            .add_watch(dir.as_str(), mask)
            .with_context(|| format!("watching {dir}"))?;
        watched.push((wd, dir));
    }
    let mut out = std::io::stdout().lock();
    loop {
        for event in inotify.read_events().context("reading inotify events")? {
            let dir = watched
                .iter()
                .find(|(wd, _)| *wd == event.wd)
                .map_or("?", |(_, d)| d.as_str());
            let name = event
                .name
                .as_ref()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            writeln!(out, "{dir}\t{}\t{name}", event_name(event.mask))?;
            out.flush()?;
        }
    }
}

//! A `ctr run`'s start, phase by phase: the shim's `pod start phases` log line (see
//! `husk_shim::start_phases`) placed between the client's own clock readings, so the table
//! runs from spawning `ctr` to its first output byte.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// What the shim logs, and the client's phases around it.
const SHIM_LINE: &str = "pod start phases";
const CLIENT_TO_SHIM: &str = "client → shim up (ctr, containerd, shim spawn)";
const TO_CLIENT: &str = "process started → first byte at the client";
/// The shim's phase names and what they cover, in order.
const SHIM_PHASES: &[(&str, &str)] = &[
    ("shim", "shim up → pod requested (containerd's Create)"),
    ("host_setup", "pod directory, cgroup, network"),
    ("helpers", "virtiofsd and vsock backend running"),
    ("vmm_spawn", "VMM spawned"),
    ("firmware", "VMM spawned → guest kernel entry"),
    ("kernel", "kernel entry → /init"),
    ("init", "/init → agent serving"),
    ("connect", "agent serving → host connected"),
    ("sandbox", "guest sandbox created"),
    ("container_create", "container created"),
    ("process_start", "process started"),
];

/// One run: the client's clock readings and the shim's line.
pub struct Run {
    pub spawned: SystemTime,
    pub first_byte: SystemTime,
    pub shim: ShimPhases,
}

/// The parsed `pod start phases` line.
#[derive(Debug, Default, PartialEq)]
pub struct ShimPhases {
    pub phases: Vec<(String, u64)>,
    pub total_ms: u64,
    pub first_mark_unix_us: u64,
}

/// The last `pod start phases` line of pod `id` in `log`.
pub fn find(log: &str, id: &str) -> Result<ShimPhases> {
    let tag = format!("sandbox: {id}");
    let names_pod = |l: &str| l.contains(&format!("{tag},")) || l.ends_with(&tag);
    let line = log
        .lines()
        .rfind(|l| l.contains(SHIM_LINE) && names_pod(l))
        .with_context(|| format!("no `{SHIM_LINE}` line for pod {id} in the containerd log"))?;
    parse(line)
}

fn parse(line: &str) -> Result<ShimPhases> {
    let mut out = ShimPhases::default();
    for token in line.split([' ', ',']) {
        if let Some((name, value)) = token.split_once("_ms=") {
            out.phases.push((name.to_owned(), value.parse()?));
        }
    }
    let number = |key: &str| -> Result<u64> {
        let rest = line
            .split_once(key)
            .with_context(|| format!("no {key} in {line:?}"))?
            .1;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Ok(digits.parse()?)
    };
    out.total_ms = number("total_ms: ")?;
    out.first_mark_unix_us = number("first_mark_unix_us: ")?;
    Ok(out)
}

/// The Markdown table: each phase's median and range over `runs`, the slowest in bold.
pub fn table(runs: &[Run]) -> String {
    let mut samples: BTreeMap<usize, (String, Vec<u64>)> = BTreeMap::new();
    let mut add = |order: usize, what: &str, ms: u64| {
        samples
            .entry(order)
            .or_insert_with(|| (what.to_owned(), Vec::new()))
            .1
            .push(ms);
    };
    for run in runs {
        let shim_up = UNIX_EPOCH + Duration::from_micros(run.shim.first_mark_unix_us);
        add(0, CLIENT_TO_SHIM, millis_between(run.spawned, shim_up));
        for (name, ms) in &run.shim.phases {
            let order = SHIM_PHASES.iter().position(|(n, _)| n == name);
            let what = order.map_or(name.as_str(), |i| SHIM_PHASES[i].1);
            add(1 + order.unwrap_or(SHIM_PHASES.len()), what, *ms);
        }
        let started = shim_up + Duration::from_millis(run.shim.total_ms);
        add(
            SHIM_PHASES.len() + 2,
            TO_CLIENT,
            millis_between(started, run.first_byte),
        );
        add(
            SHIM_PHASES.len() + 3,
            "**total: client spawn → first byte**",
            millis_between(run.spawned, run.first_byte),
        );
    }
    let rows: Vec<(String, u64, u64, u64)> = samples
        .into_values()
        .map(|(what, mut v)| {
            v.sort_unstable();
            let median = v[v.len() / 2];
            (what, median, v[0], v[v.len() - 1])
        })
        .collect();
    let slowest = rows
        .iter()
        .filter(|r| !r.0.starts_with("**"))
        .map(|r| r.1)
        .max()
        .unwrap_or_default();
    let mut t = String::from("| phase | median | range |\n|---|---|---|\n");
    for (what, median, min, max) in rows {
        let bold = if median == slowest && !what.starts_with("**") {
            "**"
        } else {
            ""
        };
        t.push_str(&format!(
            "| {what} | {bold}{median} ms{bold} | {min}–{max} ms |\n"
        ));
    }
    t
}

/// `to - from` in ms, 0 when the clocks put them the other way round.
fn millis_between(from: SystemTime, to: SystemTime) -> u64 {
    to.duration_since(from)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "Dec 07 13:10:01.234 INFO pod start phases, phases: shim_ms=31 \
        host_setup_ms=5 firmware_ms=300 kernel_ms=560 process_start_ms=20, total_ms: 1500, \
        first_mark: shim_started, first_mark_unix_us: 1765000000123456, runtime: husk, \
        sandbox: p1";

    #[test]
    fn parses_the_shim_line_of_the_right_pod() {
        let log = format!("noise\n{}\n{LINE}\n", LINE.replace("p1", "p2"));
        let p = find(&log, "p1").unwrap();
        assert!(
            find(&log, "p").is_err(),
            "a prefix of the id is another pod"
        );
        assert_eq!(p.phases[0], ("shim".to_owned(), 31));
        assert_eq!(p.phases.len(), 5);
        assert_eq!(p.total_ms, 1500);
        assert_eq!(p.first_mark_unix_us, 1_765_000_000_123_456);
        assert!(find(&log, "p3").is_err());
    }

    #[test]
    fn the_table_places_the_client_around_the_shim() {
        let shim = parse(LINE).unwrap();
        let up = UNIX_EPOCH + Duration::from_micros(shim.first_mark_unix_us);
        let run = Run {
            spawned: up - Duration::from_millis(80),
            first_byte: up + Duration::from_millis(1500 + 7),
            shim,
        };
        let t = table(&[run]);
        assert!(
            t.contains("| client → shim up (ctr, containerd, shim spawn) | 80 ms |"),
            "{t}"
        );
        assert!(t.contains("| kernel entry → /init | **560 ms** |"), "{t}");
        assert!(
            t.contains("| process started → first byte at the client | 7 ms |"),
            "{t}"
        );
        assert!(
            t.contains("| **total: client spawn → first byte** | 1587 ms |"),
            "{t}"
        );
    }
}

//! Container logs through CRI: the log file containerd writes for a husk container holds
//! exactly what the container printed, in CRI log format, including the lines it wrote
//! right before exiting — checked with a 10 000-line burst.

mod cri_common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cri_common::{stop_and_remove_pod, wait_exited};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::CriWorld;

const LINES: usize = 10_000;

/// One parsed CRI log line: `<RFC 3339 time> <stdout|stderr> <F|P> <content>`.
#[derive(Debug)]
struct LogLine<'a> {
    time: &'a str,
    stream: &'a str,
    full: bool,
    content: &'a str,
}

fn parse_line(line: &str) -> Result<LogLine<'_>> {
    let mut parts = line.splitn(4, ' ');
    let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("not a CRI log line: {line:?}");
    };
    let content = parts.next().unwrap_or_default();
    // 2026-11-28T11:27:26.432397875Z (or with a numeric offset).
    let bytes = time.as_bytes();
    ensure!(
        time.len() >= 20
            && bytes[4] == b'-'
            && bytes[7] == b'-'
            && bytes[10] == b'T'
            && bytes[13] == b':'
            && (time.ends_with('Z') || time[19..].contains(['+', '-'])),
        "bad timestamp {time:?} in {line:?}"
    );
    ensure!(
        stream == "stdout" || stream == "stderr",
        "bad stream {stream:?} in {line:?}"
    );
    let full = match tag {
        "F" => true,
        "P" => false,
        _ => bail!("bad tag {tag:?} in {line:?}"),
    };
    Ok(LogLine {
        time,
        stream,
        full,
        content,
    })
}

/// Reassembles (stdout, stderr) from a CRI log; checks times never go backwards per
/// stream.
fn reassemble(log: &str) -> Result<(String, String)> {
    let (mut out, mut err) = (String::new(), String::new());
    let (mut last_out, mut last_err) = ("", "");
    for line in log.lines() {
        let l = parse_line(line)?;
        let (buf, last) = if l.stream == "stdout" {
            (&mut out, &mut last_out)
        } else {
            (&mut err, &mut last_err)
        };
        // RFC 3339 times of one format compare as strings; CRI writes fixed-width UTC.
        ensure!(
            l.time.len() != last.len() || l.time >= *last,
            "log time goes backwards on {}: {last} then {}",
            l.stream,
            l.time
        );
        *last = l.time;
        buf.push_str(l.content);
        if l.full {
            buf.push('\n');
        }
    }
    Ok((out, err))
}

#[test]
fn cri_log_file_holds_exactly_what_the_container_printed() -> Result<()> {
    cri_log_file_holds_exactly_what_the_container_printed_on(ContainerdFlavour::System, "cri-logs")
}

#[test]
fn cri_log_file_holds_exactly_what_the_container_printed_sandbox_api() -> Result<()> {
    cri_log_file_holds_exactly_what_the_container_printed_on(
        ContainerdFlavour::V2SandboxApi,
        "cri-logs-sb",
    )
}

fn cri_log_file_holds_exactly_what_the_container_printed_on(
    flavour: ContainerdFlavour,
    name: &str,
) -> Result<()> {
    let w = CriWorld::start(name, flavour)?;
    let c = w.client();
    let (pod, cfg) = w.run_pod("logs")?;
    let script = format!(
        "seq 1 {LINES} | sed 's/^/out line /'; seq 1 100 | sed 's/^/err line /' >&2; \
         echo last-stdout-line; echo last-stderr-line >&2; exit 0"
    );
    let id = w.start_container(&pod, &cfg, "burst", &["sh", "-c", &script])?;
    let status = wait_exited(c, &id, Duration::from_secs(120))?;
    ensure!(
        status.exit_code == 0 && status.reason == "Completed",
        "the burst container ended with exit {} reason {:?}",
        status.exit_code,
        status.reason
    );
    let path = w.dir().join("pods/logs/burst.log");
    ensure!(
        status.log_path == path.to_string_lossy(),
        "ContainerStatus log_path {:?}, expected {}",
        status.log_path,
        path.display()
    );

    let mut expected_out: String = (1..=LINES).map(|i| format!("out line {i}\n")).collect();
    expected_out.push_str("last-stdout-line\n");
    let mut expected_err: String = (1..=100).map(|i| format!("err line {i}\n")).collect();
    expected_err.push_str("last-stderr-line\n");

    // containerd may still be writing the tail when the exit is reported: give it a
    // moment to show the last lines, then require the file to be exact.
    let start = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the CRI log {}", path.display()))?;
        let done = text.contains(" stdout F last-stdout-line\n")
            && text.contains(" stderr F last-stderr-line\n");
        if done || start.elapsed() > Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = reassemble(&text)?;
    let first_diff = |a: &str, b: &str| {
        a.lines()
            .zip(b.lines())
            .position(|(x, y)| x != y)
            .unwrap_or(a.lines().count().min(b.lines().count()))
    };
    ensure!(
        out == expected_out,
        "stdout in the log differs: {} lines vs {} expected, first difference at line {}; \
         last logged: {:?}",
        out.lines().count(),
        expected_out.lines().count(),
        first_diff(&out, &expected_out) + 1,
        out.lines().last()
    );
    ensure!(
        err == expected_err,
        "stderr in the log differs: {:?}",
        err.lines().rev().take(3).collect::<Vec<_>>()
    );

    c.remove_container(&id)?;
    stop_and_remove_pod(&w, &pod)?;
    w.finish()?;
    Ok(())
}

#[test]
fn cri_log_lines_parse() {
    let (o, e) = reassemble(
        "2026-11-28T11:27:26.432397875Z stdout F hello\n\
         2026-11-28T11:27:26.432397876Z stdout P par\n\
         2026-11-28T11:27:26.432397877Z stdout F tial\n\
         2026-11-28T11:27:26.432397878Z stderr F \n",
    )
    .unwrap();
    assert_eq!(o, "hello\npartial\n");
    assert_eq!(e, "\n");
    assert!(reassemble("garbage\n").is_err());
    assert!(reassemble("2026-11-28T11:27:26Z stdout X y\n").is_err());
}

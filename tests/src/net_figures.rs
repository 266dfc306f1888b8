//! A network benchmark's figures and their Markdown rows (no measuring here: see
//! `netperf`, which needs the drivers' features).

/// busybox ping's summary, in ms.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ping {
    pub min: f64,
    pub avg: f64,
    pub max: f64,
}

/// One path's figures: throughput runs and the ping summary.
#[derive(Debug, Clone)]
pub struct PathFigures {
    pub what: String,
    pub mib_per_s: Vec<f64>,
    pub ping: Ping,
}

impl PathFigures {
    /// `| what | median MiB/s (min–max) | avg ms (min–max) |`.
    /// A path without runs (not measured) shows dashes.
    pub fn row(&self) -> String {
        if self.mib_per_s.is_empty() {
            return format!("| {} | – | – |", self.what);
        }
        let mut v = self.mib_per_s.clone();
        v.sort_by(f64::total_cmp);
        let median = v.get(v.len() / 2).copied().unwrap_or_default();
        let (min, max) = (
            v.first().copied().unwrap_or_default(),
            v.last().copied().unwrap_or_default(),
        );
        format!(
            "| {} | {median:.1} MiB/s ({min:.1}–{max:.1}) | {:.3} ms ({:.3}–{:.3}) |",
            self.what, self.ping.avg, self.ping.min, self.ping.max
        )
    }
}

/// The header of a table of [`PathFigures::row`]s.
pub const TABLE_HEADER: &str =
    "| path | TCP throughput, median (range) | ping RTT avg (min–max) |\n|---|---|---|";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_show_median_and_range() {
        let f = PathFigures {
            what: "a → b".into(),
            mib_per_s: vec![3.0, 1.0, 2.0],
            ping: Ping {
                min: 0.1,
                avg: 0.2,
                max: 0.3,
            },
        };
        assert_eq!(
            f.row(),
            "| a → b | 2.0 MiB/s (1.0–3.0) | 0.200 ms (0.100–0.300) |"
        );
    }
}

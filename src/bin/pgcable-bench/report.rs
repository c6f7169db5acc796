//! Results: latency summaries, plain-text tables, and the machine-readable form (`--json`).

use serde::Serialize;

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Receipts measured.
    pub samples: usize,
    /// Receipts that should have arrived.
    pub expected: usize,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Receipts stamped before the writer saw its COMMIT acknowledged (see the scenario for
    /// where latency is measured from).
    pub before_commit_ack: usize,
}

impl Latency {
    /// Summarizes latencies given in nanoseconds (negative: before the commit was acknowledged).
    pub fn from_ns(mut ns: Vec<i64>, expected: usize) -> Latency {
        let early = ns.iter().filter(|v| **v < 0).count();
        for v in ns.iter_mut() {
            *v = (*v).max(0);
        }
        ns.sort_unstable();
        let pick = |q: f64| -> f64 {
            if ns.is_empty() {
                return f64::NAN;
            }
            // Nearest rank.
            let rank = ((q * ns.len() as f64).ceil() as usize).clamp(1, ns.len());
            ns[rank - 1] as f64 / 1e6
        };
        Latency {
            samples: ns.len(),
            expected,
            p50_ms: pick(0.50),
            p95_ms: pick(0.95),
            p99_ms: pick(0.99),
            max_ms: pick(1.0),
            before_commit_ack: early,
        }
    }
}

/// A number for a table: `-` when missing.
pub fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".into(),
    }
}

/// Milliseconds with sensible precision.
pub fn ms(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A ratio `a / b`, if both are usable.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

/// A table with a title, printed with aligned columns.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    /// What it shows.
    pub title: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<String>>,
    /// Lines printed under it.
    pub notes: Vec<String>,
}

impl Table {
    /// An empty table.
    pub fn new(title: &str, columns: &[&str]) -> Table {
        Table {
            title: title.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Adds a note.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The table as Markdown (what BENCHMARKS.md holds).
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|c| c.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        let line = |cells: &[String]| -> String {
            let mut s = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w.saturating_sub(cell.chars().count());
                if i == 0 {
                    s.push_str(&format!(" {cell}{} |", " ".repeat(pad)));
                } else {
                    s.push_str(&format!(" {}{cell} |", " ".repeat(pad)));
                }
            }
            s
        };
        let mut out = format!("### {}\n\n", self.title);
        out.push_str(&line(&self.columns));
        out.push('\n');
        out.push('|');
        for (i, w) in widths.iter().enumerate() {
            if i == 0 {
                out.push_str(&format!("{}|", "-".repeat(w + 2)));
            } else {
                out.push_str(&format!("{}:|", "-".repeat(w + 1)));
            }
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                out.push_str(&format!("{n}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let l = Latency::from_ns((1..=100).map(|v| v * 1_000_000).collect(), 100);
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
        let l = Latency::from_ns(vec![-5, 2_000_000], 3);
        assert_eq!(l.before_commit_ack, 1);
        assert_eq!(l.p50_ms, 0.0);
        assert_eq!(l.samples, 2);
    }

    #[test]
    fn renders_markdown() {
        let mut t = Table::new("T", &["a", "bb"]);
        t.row(vec!["x".into(), "1".into()]);
        assert_eq!(t.render(), "### T\n\n| a | bb |\n|---|---:|\n| x |  1 |\n");
    }
}

//! `writer`: what the triggers cost the application's writers. Runs `triggers/bench.sh` (which
//! measures single-row UPDATE throughput with pgbench and one UPDATE of 10,000 rows, with no
//! triggers, a bare NOTIFY, a FOR EACH ROW variant and the installed statement triggers) with a
//! shorter schedule, and reads its table.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::process::Command;

use crate::report::{num, Table};

/// One case of triggers/bench.sh.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// none, notify, row, stmt.
    pub case: String,
    /// Single-row UPDATE transactions per second.
    pub tps: Option<f64>,
    /// One UPDATE of 10,000 rows, ms.
    pub bulk_update_ms: Option<f64>,
    /// The same touching only updated_at, ms.
    pub bulk_touch_ms: Option<f64>,
    /// NOTIFYs the bulk UPDATE sent.
    pub bulk_notifies: Option<f64>,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct WriterResult {
    /// Per case.
    pub cases: Vec<Case>,
    /// TPS cost of the installed triggers, percent of the no-trigger TPS.
    pub tps_cost_pct: Option<f64>,
    /// What bench.sh printed.
    pub raw: String,
    /// pgbench clients, seconds, rounds; bulk runs.
    pub schedule: (usize, u64, usize, usize),
}

/// The first number in a cell ("123 (45)" → 123).
fn first_number(cell: &str) -> Option<f64> {
    cell.split_whitespace().next()?.parse().ok()
}

/// Reads bench.sh's table: `case | tps | update ms (triggers) | touch ms (triggers) | notifies`.
pub fn parse(raw: &str) -> Vec<Case> {
    raw.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() < 2 || !["none", "notify", "row", "stmt"].contains(&cells[0]) {
                return None;
            }
            Some(Case {
                case: cells[0].to_string(),
                tps: cells.get(1).and_then(|c| first_number(c)),
                bulk_update_ms: cells.get(2).and_then(|c| first_number(c)),
                bulk_touch_ms: cells.get(3).and_then(|c| first_number(c)),
                bulk_notifies: cells.get(4).and_then(|c| first_number(c)),
            })
        })
        .collect()
}

/// Runs triggers/bench.sh against the server of `admin_url`.
pub async fn run(
    crate_dir: &Path,
    admin_url: &str,
    clients: usize,
    seconds: u64,
    rounds: usize,
    runs: usize,
) -> Result<WriterResult, String> {
    let script = crate_dir.join("triggers/bench.sh");
    if !script.exists() {
        return Err(format!("{} not found", script.display()));
    }
    let (host, port, user) = pg_parts(admin_url);
    let child = Command::new("bash")
        .arg(&script)
        .current_dir(crate_dir)
        .env("PGHOST", host)
        .env("PGPORT", port)
        .env("PGUSER", user)
        .env("CLIENTS", clients.to_string())
        .env("DURATION", seconds.to_string())
        .env("ROUNDS", rounds.to_string())
        .env("RUNS", runs.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    // Bounded: pgbench time plus setup and the bulk runs.
    let limit =
        Duration::from_secs(120 + 4 * rounds as u64 * (seconds + 10) + 4 * runs as u64 * 10);
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| format!("triggers/bench.sh took longer than {} s", limit.as_secs()))?
        .map_err(|e| format!("triggers/bench.sh: {e}"))?;
    let raw = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "triggers/bench.sh failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let cases = parse(&raw);
    let tps = |name: &str| cases.iter().find(|c| c.case == name).and_then(|c| c.tps);
    let tps_cost_pct = match (tps("none"), tps("stmt")) {
        (Some(none), Some(stmt)) if none > 0.0 => Some((none - stmt) * 100.0 / none),
        _ => None,
    };
    Ok(WriterResult {
        cases,
        tps_cost_pct,
        raw,
        schedule: (clients, seconds, rounds, runs),
    })
}

/// Host, port and user of a postgres:// URL (defaults: 127.0.0.1, 5432, postgres).
fn pg_parts(url: &str) -> (String, String, String) {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (u, h),
        None => ("", authority),
    };
    let user = userinfo.split(':').next().filter(|u| !u.is_empty());
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (hostport, None),
    };
    (
        if host.is_empty() { "127.0.0.1" } else { host }.to_string(),
        port.unwrap_or("5432").to_string(),
        user.unwrap_or("postgres").to_string(),
    )
}

/// The writer table.
pub fn table(r: &WriterResult) -> Table {
    let (clients, seconds, rounds, runs) = r.schedule;
    let mut t = Table::new(
        "writer: what the triggers cost writers (triggers/bench.sh)",
        &[
            "case",
            "1-row UPDATE tps",
            "vs none",
            "10k-row UPDATE ms",
            "10k-row touch ms",
            "NOTIFYs per 10k UPDATE",
        ],
    );
    let none = r
        .cases
        .iter()
        .find(|c| c.case == "none")
        .and_then(|c| c.tps);
    for c in &r.cases {
        let vs = match (c.tps, none) {
            (Some(t), Some(n)) if n > 0.0 => format!("{:+.1} %", (t - n) * 100.0 / n),
            _ => "-".into(),
        };
        t.row(vec![
            c.case.clone(),
            num(c.tps, 0),
            vs,
            num(c.bulk_update_ms, 0),
            num(c.bulk_touch_ms, 0),
            num(c.bulk_notifies, 0),
        ]);
    }
    t.note(format!(
        "none: no triggers; notify: one bare NOTIFY per statement; row: a FOR EACH ROW variant; stmt: triggers/install.sql. \
         pgbench -c {clients}, best of {rounds} × {seconds} s; bulk: median of {runs} runs."
    ));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_table() {
        let raw = "case   | 1-row UPDATE tps | 10k UPDATE ms (triggers) | x | y\n\
                   ------ | --- | --- | --- | ---\n\
                   none   |             1234 |                 120 (0) | 80 (0) | 0\n\
                   stmt   |             1200 |                 150 (20) | 90 (5) | 15\n";
        let cases = parse(raw);
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[1].tps, Some(1200.0));
        assert_eq!(cases[1].bulk_update_ms, Some(150.0));
        assert_eq!(cases[1].bulk_notifies, Some(15.0));
    }

    #[test]
    fn url_parts() {
        assert_eq!(
            pg_parts("postgres://postgres@127.0.0.1:5432/postgres"),
            ("127.0.0.1".into(), "5432".into(), "postgres".into())
        );
        assert_eq!(
            pg_parts("postgres://u:p@db/x"),
            ("db".into(), "5432".into(), "u".into())
        );
    }
}

//! Process-level helpers: one clock that every bench process shares, the file-descriptor limit,
//! signals, and what `/proc` says about a process (resident memory, CPU time).
//!
//! Timestamps are `CLOCK_MONOTONIC` nanoseconds, so a receipt stamped in a load-client worker
//! and a commit stamped in the coordinator can be subtracted.

use std::fs;

/// Nanoseconds on the machine-wide monotonic clock.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into `ts`, which lives on our stack for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raises this process's open-file limit as far as it may go (children inherit it) and returns
/// the soft limit in force afterwards. With CAP_SYS_RESOURCE the hard limit is raised too.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass; no other memory is touched.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        let want = 1u64 << 20;
        if lim.rlim_max < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return want;
            }
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return lim.rlim_max;
            }
        }
        lim.rlim_cur
    }
}

/// The hard open-file limit (what no process here can go past without CAP_SYS_RESOURCE).
pub fn nofile_hard() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in raise_nofile.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    lim.rlim_max
}

/// Sends a signal to a process; errors (it is gone already) are ignored.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory effects; a stale pid only yields ESRCH.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Resident set size of a process, in KiB (`VmRSS` of /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// CPU seconds a process's live threads have used so far, to the microsecond (the sum of
/// `se.sum_exec_runtime` in /proc/<pid>/task/*/sched); falls back to the 10 ms ticks of
/// /proc/<pid>/stat where that is not available.
pub fn cpu_secs(pid: u32) -> Result<f64, String> {
    match sched_secs(pid) {
        Some(s) => Ok(s),
        None => stat_cpu_secs(pid),
    }
}

fn sched_secs(pid: u32) -> Option<f64> {
    let mut total = 0.0;
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(entry) = entry else { continue };
        let Ok(text) = fs::read_to_string(entry.path().join("sched")) else {
            continue;
        };
        let ms: f64 = text
            .lines()
            .find(|l| l.starts_with("se.sum_exec_runtime"))
            .and_then(|l| l.rsplit(':').next())
            .and_then(|v| v.trim().parse().ok())?;
        total += ms / 1000.0;
    }
    Some(total)
}

/// User + system CPU seconds a process has used so far (/proc/<pid>/stat, 10 ms ticks).
pub fn stat_cpu_secs(pid: u32) -> Result<f64, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // The command name may hold spaces and parentheses: count fields after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the full line, utime 14 and stime 15.
    let get = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| "malformed /proc stat".to_string())
    };
    let ticks = get(11)? + get(12)?;
    Ok(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// What the machine is: cores, memory, CPU model, kernel.
pub fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Machine {
        cores,
        mem_gib: mem_kib as f64 / (1024.0 * 1024.0),
        cpu: model,
        kernel,
        nofile_hard: nofile_hard(),
    }
}

/// The machine a run was made on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// Memory in GiB.
    pub mem_gib: f64,
    /// CPU model name.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
    /// Hard RLIMIT_NOFILE of the bench process (caps connections per process).
    pub nofile_hard: u64,
}

/// CPU seconds of every `postgres` process now running, by pid (10 ms ticks).
pub fn postgres_cpu() -> std::collections::HashMap<u32, f64> {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let is_pg = fs::read_to_string(entry.path().join("comm"))
            .map(|c| c.trim() == "postgres")
            .unwrap_or(false);
        if is_pg {
            if let Ok(s) = stat_cpu_secs(pid) {
                out.insert(pid, s);
            }
        }
    }
    out
}

/// CPU seconds each `postgres` process used since a [`postgres_cpu`] sample (processes that
/// started in between count from zero; ones that ended are not counted).
pub fn postgres_cpu_since(
    before: &std::collections::HashMap<u32, f64>,
) -> std::collections::HashMap<u32, f64> {
    postgres_cpu()
        .into_iter()
        .map(|(pid, now)| {
            (
                pid,
                (now - before.get(&pid).copied().unwrap_or(0.0)).max(0.0),
            )
        })
        .collect()
}

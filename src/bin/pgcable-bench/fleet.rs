//! The load client as the coordinator sees it: a fleet of worker processes
//! ([`crate::worker`]), each holding up to [`Fleet::per_worker`] connections from a source
//! address of its own (127.0.x.y), since one process may hold only so many file descriptors and
//! one source address gives only ~28k ephemeral ports.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::sys;

/// Source addresses handed out so far in this run. Each worker gets a fresh one (starting at a
/// random place, so that a run right after another does not meet its TIME_WAITs either).
static NEXT_SOURCE: AtomicU32 = AtomicU32::new(u32::MAX);

fn next_source() -> Ipv4Addr {
    let start = (uuid::Uuid::new_v4().as_u128() % 62_500) as u32;
    let _ = NEXT_SOURCE.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    let k = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % 62_500;
    Ipv4Addr::new(127, 0, 1 + (k / 250) as u8, 2 + (k % 250) as u8)
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    pid: u32,
    conns: usize,
}

/// What the workers have received since the last [`Fleet::collect`].
#[derive(Debug, Default)]
pub struct Collected {
    /// (sequence number, receipt ns) per marked frame.
    pub receipts: Vec<(u32, u64)>,
    /// Frames other than pings, in total so far.
    pub frames: u64,
    /// Frames without a marker (reloads), in total so far.
    pub other: u64,
    /// Payload bytes, in total so far.
    pub bytes: u64,
    /// Live connections now.
    pub live: usize,
    /// Encounters a connection received again (same sequence number as its previous one), in
    /// total so far.
    pub duplicates: u64,
    /// Encounters older than one the connection had already received, in total so far.
    pub stale: u64,
    /// Frames and bytes per [`crate::worker::KINDS`], in total so far.
    pub kinds: [(u64, u64); crate::worker::KINDS.len()],
}

/// The workers.
pub struct Fleet {
    addr: SocketAddr,
    path: String,
    self_bin: std::path::PathBuf,
    workers: Vec<Worker>,
    events: mpsc::UnboundedReceiver<(usize, String)>,
    events_tx: mpsc::UnboundedSender<(usize, String)>,
    /// Lines that arrived while waiting for something else, per worker.
    stash: HashMap<usize, Vec<String>>,
    /// Sequence number → workers that reported it done.
    done: HashMap<u32, usize>,
    /// Most connections one worker holds.
    pub per_worker: usize,
}

impl Fleet {
    /// A fleet (no workers yet) that will connect to `addr` with `path`.
    pub fn new(self_bin: &Path, addr: SocketAddr, path: String) -> Fleet {
        let soft = sys::raise_nofile() as usize;
        let (events_tx, events) = mpsc::unbounded_channel();
        Fleet {
            addr,
            path,
            self_bin: self_bin.to_path_buf(),
            workers: Vec::new(),
            events,
            events_tx,
            stash: HashMap::new(),
            done: HashMap::new(),
            per_worker: soft.saturating_sub(1000).clamp(500, 15_000),
        }
    }

    /// Connections held now.
    pub fn connections(&self) -> usize {
        self.workers.iter().map(|w| w.conns).sum()
    }

    /// Worker process ids (for their CPU time).
    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.pid).collect()
    }

    /// CPU seconds all workers have used so far.
    pub fn cpu_secs(&self) -> f64 {
        self.pids()
            .into_iter()
            .map(|p| sys::cpu_secs(p).unwrap_or(0.0))
            .sum()
    }

    fn spawn_worker(&mut self) -> Result<(), String> {
        let source = next_source();
        let mut child = Command::new(&self.self_bin)
            .arg("client-worker")
            .arg("--addr")
            .arg(self.addr.to_string())
            .arg("--source")
            .arg(source.to_string())
            .arg("--path")
            .arg(&self.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start a client worker: {e}"))?;
        let pid = child.id().ok_or("a client worker exited at once")?;
        let stdin = child.stdin.take().ok_or("no worker stdin")?;
        let stdout = child.stdout.take().ok_or("no worker stdout")?;
        let index = self.workers.len();
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send((index, line)).is_err() {
                    return;
                }
            }
            let _ = tx.send((index, "exited".into()));
        });
        self.workers.push(Worker {
            child,
            stdin,
            pid,
            conns: 0,
        });
        Ok(())
    }

    async fn send(&mut self, worker: usize, line: &str) -> Result<(), String> {
        let w = self.workers.get_mut(worker).ok_or("no such worker")?;
        let mut text = line.to_string();
        text.push('\n');
        w.stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|e| format!("client worker {worker} is gone: {e}"))
    }

    fn note(&mut self, worker: usize, line: String) {
        if let Some(seq) = line.strip_prefix("done ").and_then(|s| s.parse().ok()) {
            *self.done.entry(seq).or_default() += 1;
        } else {
            self.stash.entry(worker).or_default().push(line);
        }
    }

    /// The next line from `worker` that starts with `prefix` (others are kept), or an error at
    /// the deadline or if the worker exits.
    async fn reply(
        &mut self,
        worker: usize,
        prefix: &str,
        deadline: tokio::time::Instant,
    ) -> Result<String, String> {
        loop {
            if let Some(lines) = self.stash.get_mut(&worker) {
                if let Some(i) = lines.iter().position(|l| l.starts_with(prefix)) {
                    return Ok(lines.remove(i));
                }
                if lines.iter().any(|l| l == "exited") {
                    return Err(format!("client worker {worker} exited"));
                }
            }
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| format!("client worker {worker} did not answer {prefix:?} in time"))?
                .ok_or("client workers gone")?;
            self.note(ev.0, ev.1);
        }
    }

    /// Opens connections until `total` are held, `parallel` at a time per worker, all
    /// subscribed to `identifier`, within `budget`. Returns (opened, failed, first error).
    pub async fn grow_to(
        &mut self,
        total: usize,
        identifier: &str,
        parallel: usize,
        budget: Duration,
    ) -> Result<(usize, usize, String), String> {
        let deadline = tokio::time::Instant::now() + budget;
        let mut plan: Vec<(usize, usize)> = Vec::new();
        let mut need = total.saturating_sub(self.connections());
        let mut i = 0;
        while need > 0 {
            if i == self.workers.len() {
                self.spawn_worker()?;
            }
            let room = self.per_worker.saturating_sub(self.workers[i].conns);
            let take = room.min(need);
            if take > 0 {
                plan.push((i, take));
                need -= take;
            }
            i += 1;
        }
        let ms = budget.as_millis();
        for (w, n) in &plan {
            self.send(*w, &format!("open {n} {ms} {parallel} {identifier}"))
                .await?;
        }
        let (mut ok, mut failed, mut error) = (0, 0, String::new());
        for (w, _) in &plan {
            let line = self
                .reply(*w, "opened ", deadline + Duration::from_secs(10))
                .await?;
            let mut parts = line.splitn(4, ' ').skip(1);
            let o: usize = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let f: usize = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let e = parts.next().unwrap_or("").to_string();
            self.workers[*w].conns += o;
            ok += o;
            failed += f;
            if error.is_empty() && !e.is_empty() {
                error = e;
            }
        }
        Ok((ok, failed, error))
    }

    /// Tells every worker to report when all its connections have received `seq`.
    pub async fn expect(&mut self, seq: u32) -> Result<(), String> {
        for w in 0..self.workers.len() {
            if self.workers[w].conns > 0 {
                self.send(w, &format!("expect {seq}")).await?;
            }
        }
        Ok(())
    }

    /// Waits until every worker with connections reported `seq` done; false at the deadline.
    pub async fn wait_done(&mut self, seq: u32, deadline: tokio::time::Instant) -> bool {
        let want = self.workers.iter().filter(|w| w.conns > 0).count();
        loop {
            if self.done.get(&seq).copied().unwrap_or(0) >= want {
                self.done.remove(&seq);
                return true;
            }
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some((w, line))) => self.note(w, line),
                _ => return false,
            }
        }
    }

    /// Takes every receipt the workers have stamped since the last call.
    pub async fn collect(&mut self) -> Result<Collected, String> {
        let mut out = Collected::default();
        for w in 0..self.workers.len() {
            self.send(w, "collect").await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(lines) = self.stash.get_mut(&w) {
                    let mut end = None;
                    for line in lines.drain(..) {
                        if let Some(r) = line.strip_prefix("r ") {
                            let mut it = r.split(' ');
                            if let (Some(Ok(seq)), Some(Ok(at))) = (
                                it.next().map(str::parse::<u32>),
                                it.next().map(str::parse::<u64>),
                            ) {
                                out.receipts.push((seq, at));
                            }
                        } else if let Some(k) = line.strip_prefix("kinds ") {
                            let v: Vec<u64> = k.split(' ').filter_map(|x| x.parse().ok()).collect();
                            for (i, pair) in v.chunks_exact(2).enumerate() {
                                if let Some(slot) = out.kinds.get_mut(i) {
                                    slot.0 += pair[0];
                                    slot.1 += pair[1];
                                }
                            }
                        } else if let Some(e) = line.strip_prefix("end ") {
                            end = Some(e.to_string());
                        } else if line == "exited" {
                            return Err(format!("client worker {w} exited"));
                        }
                    }
                    if let Some(e) = end {
                        let v: Vec<u64> = e.split(' ').filter_map(|x| x.parse().ok()).collect();
                        if v.len() >= 5 {
                            out.frames += v[0];
                            out.other += v[2];
                            out.bytes += v[3];
                            out.live += v[4] as usize;
                        }
                        if v.len() >= 7 {
                            out.duplicates += v[5];
                            out.stale += v[6];
                        }
                        break;
                    }
                }
                let ev = tokio::time::timeout_at(deadline, self.events.recv())
                    .await
                    .map_err(|_| format!("client worker {w} did not answer collect"))?
                    .ok_or("client workers gone")?;
                self.note(ev.0, ev.1);
            }
        }
        Ok(out)
    }

    /// How many live connections' newest encounter carries `seq`, and how many are live.
    pub async fn at_last(&mut self, seq: u32) -> Result<(usize, usize), String> {
        let mut asked = Vec::new();
        for w in 0..self.workers.len() {
            if self.workers[w].conns > 0 {
                self.send(w, &format!("last {seq}")).await?;
                asked.push(w);
            }
        }
        let (mut at, mut live) = (0, 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for w in asked {
            let line = self.reply(w, "last ", deadline).await?;
            let mut parts = line.split(' ').skip(1);
            at += parts.next().and_then(|v| v.parse().ok()).unwrap_or(0usize);
            live += parts.next().and_then(|v| v.parse().ok()).unwrap_or(0usize);
        }
        Ok((at, live))
    }

    /// Closes every connection and ends the workers.
    pub async fn close(mut self) {
        for w in 0..self.workers.len() {
            let _ = self.send(w, "close").await;
        }
        for mut w in self.workers.drain(..) {
            if tokio::time::timeout(Duration::from_secs(8), w.child.wait())
                .await
                .is_err()
            {
                let _ = w.child.kill().await;
            }
        }
    }
}

//! A measured child process: CPU time and resident memory read from `/proc`
//! while it runs (and from its zombie entry once it has exited, before it is
//! reaped), so every number belongs to exactly one process.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One resident-memory sample.
#[derive(Debug, Clone, Copy)]
pub struct RssSample {
    /// Time since the process started.
    pub at: Duration,
    /// Events processed when the sample was taken (as the caller counts them).
    pub progress: u64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
}

/// What a process used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Peak resident set size (VmHWM), KiB.
    pub peak_rss_kib: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage { cpu: self.cpu + o.cpu, peak_rss_kib: self.peak_rss_kib + o.peak_rss_kib }
    }
}

/// A running child under measurement.
pub struct Proc {
    /// Short name for messages.
    pub name: String,
    child: Child,
    started: Instant,
    /// Resident-memory samples taken by [`Proc::sample`].
    pub samples: Vec<RssSample>,
    last: Usage,
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU time used so far by a process we did not start (e.g. the broker), when readable.
pub fn cpu_of(pid: u32) -> Option<Duration> {
    stat(pid).map(|(_, cpu)| cpu)
}

/// CPU time used so far by a server and every process it started: its own,
/// that of its children now alive, and that of children that exited (which
/// the kernel adds to the parent's `cutime`/`cstime` once reaped). PostgreSQL
/// runs one backend process per connection, so its postmaster alone says little.
pub fn tree_cpu_of(pid: u32) -> Option<Duration> {
    let (_, own) = stat(pid)?;
    let reaped = children_cpu(pid).unwrap_or_default();
    let mut live = Duration::ZERO;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if parent_of(child) == Some(pid) {
            live += tree_cpu_of(child).unwrap_or_default();
        }
    }
    Some(own + reaped + live)
}

/// The parent pid from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    text[text.rfind(')')? + 2..].split_whitespace().nth(1)?.parse().ok()
}

/// `cutime + cstime`: CPU of the process's children that exited and were reaped.
fn children_cpu(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = text[text.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: f64 = f.get(13)?.parse::<f64>().ok()? + f.get(14)?.parse::<f64>().ok()?;
    thread_local!(static TCK: f64 = clock_ticks_per_second());
    Some(Duration::from_secs_f64(ticks / TCK.with(|t| *t)))
}

/// `(state, utime + stime)` from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, Duration)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    thread_local!(static TCK: f64 = clock_ticks_per_second());
    Some((state, Duration::from_secs_f64(ticks / TCK.with(|t| *t))))
}

/// `(VmRSS, VmHWM)` in KiB; absent once the process has exited.
fn memory(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

impl Proc {
    /// Starts `cmd` with `stdout` (a pipe is read by [`Proc::finish`]); stderr goes to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, stdout: Stdio, log: &std::path::Path) -> Result<Self, String> {
        let err = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child =
            cmd.stdin(Stdio::null()).stdout(stdout).stderr(err).spawn().map_err(|e| format!("starting {name}: {e}"))?;
        Ok(Self { name: name.to_owned(), child, started: Instant::now(), samples: Vec::new(), last: Usage::default() })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads CPU and memory now and records a resident-memory sample.
    /// Returns false once the process has exited (it is then a zombie, not reaped).
    pub fn sample(&mut self, progress: u64) -> bool {
        let pid = self.pid();
        let Some((state, cpu)) = stat(pid) else { return false };
        self.last.cpu = cpu;
        if let Some((rss, hwm)) = memory(pid) {
            self.last.peak_rss_kib = self.last.peak_rss_kib.max(hwm);
            self.samples.push(RssSample { at: self.started.elapsed(), progress, rss_kib: rss });
        }
        !matches!(state, 'Z' | 'X')
    }

    /// What the process used up to the last sample.
    pub fn usage(&self) -> Usage {
        self.last
    }

    /// Waits (up to `limit`) for the process to exit by itself; returns its usage and stdout.
    pub fn finish(mut self, limit: Duration) -> Result<(Usage, String), String> {
        let deadline = Instant::now() + limit;
        while self.sample(0) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err(format!("{} did not finish within {limit:?}", self.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut stdout = String::new();
        if let Some(mut pipe) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stdout).map_err(|e| e.to_string())?;
        }
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("{} exited with {status}", self.name));
        }
        Ok((self.last, stdout))
    }

    /// Takes a last sample (at `progress`), then stops the process (SIGTERM,
    /// SIGKILL after 15 s). The usage is as of that sample: shutdown is not counted.
    pub fn stop(mut self, progress: u64) -> (Usage, Vec<RssSample>) {
        self.sample(progress);
        let usage = self.last;
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        (usage, std::mem::take(&mut self.samples))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

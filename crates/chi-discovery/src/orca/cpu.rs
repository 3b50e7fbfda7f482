//! This process's CPU utilization, from `/proc/self/stat` (Linux).
//!
//! The kernel counts a process's user and system CPU time in `utime` and `stime` (fields 14 and
//! 15 of `/proc/self/stat`, proc(5)) in clock ticks of `USER_HZ`, which is 100 on every Linux
//! architecture chi builds for (it is part of the kernel's ABI; only Alpha differs). The
//! utilization over a window is the CPU time used in it divided by the window times the CPUs
//! the process may use (`std::thread::available_parallelism`, which follows CPU affinity and a
//! cgroup quota), so one busy thread on a 4-CPU allowance reads 0.25. It is sampled at most once
//! a second (a tick is 10 ms, so a shorter window is mostly noise); between samples the last
//! value is read. Where `/proc` is missing it reads 0: set the value with
//! [`ServerMetrics::set_cpu_utilization`](super::ServerMetrics::set_cpu_utilization) instead.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Ticks per second of `utime` and `stime`.
const USER_HZ: f64 = 100.0;
/// The shortest window a sample covers.
const WINDOW: Duration = Duration::from_secs(1);

/// The CPU time this process has used, user and system, if `/proc` says.
pub(super) fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&stat)
}

/// `utime + stime` of a `/proc/PID/stat` line.
pub(super) fn parse_stat(stat: &str) -> Option<Duration> {
    // Field 2, the command, is in parentheses and may hold spaces and parentheses: the fields
    // that follow start after the last `)`, at field 3.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_secs_f64(
        utime.saturating_add(stime) as f64 / USER_HZ,
    ))
}

/// The last sample: when, and the CPU time then.
struct Sample {
    at: Instant,
    cpu: Duration,
}

/// A sampler of this process's CPU utilization; see the module docs.
pub(super) struct Cpu {
    last: Mutex<Option<Sample>>,
    /// The utilization of the last complete window, `f64` bits.
    value: AtomicU64,
    cpus: f64,
}

impl Cpu {
    pub(super) fn new() -> Self {
        Cpu {
            last: Mutex::new(process_cpu_time().map(|cpu| Sample {
                at: Instant::now(),
                cpu,
            })),
            value: AtomicU64::new(0f64.to_bits()),
            cpus: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
        }
    }

    /// The utilization over the last window of at least a second (0 before the first one).
    pub(super) fn utilization(&self) -> f64 {
        // Whoever holds the sample is updating it: the last value is as good.
        if let Ok(mut last) = self.last.try_lock() {
            let now = Instant::now();
            let due = last
                .as_ref()
                .is_none_or(|s| now.duration_since(s.at) >= WINDOW);
            if due && let Some(cpu) = process_cpu_time() {
                if let Some(s) = last.as_ref() {
                    let wall = now.duration_since(s.at).as_secs_f64() * self.cpus;
                    let used = cpu.saturating_sub(s.cpu).as_secs_f64();
                    if wall > 0.0 {
                        self.value.store((used / wall).to_bits(), Ordering::Relaxed);
                    }
                }
                *last = Some(Sample { at: now, cpu });
            }
        }
        f64::from_bits(self.value.load(Ordering::Relaxed))
    }
}

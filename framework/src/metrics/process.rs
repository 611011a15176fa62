//! The process's own metrics, read from `/proc/self` at each scrape: CPU
//! time, memory, open file descriptors, start time and uptime, and the build
//! info. Where `/proc` is missing (not Linux), only uptime and build info
//! are exported.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;

/// Clock ticks per second in `/proc/self/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;
/// The page size `/proc/self/statm` counts in.
const PAGE_SIZE: u64 = 4096;

/// Exports the process metrics; see the [module docs](self).
#[derive(Debug)]
pub(super) struct ProcessCollector {
    pub(super) started: Instant,
    pub(super) started_unix: f64,
    pub(super) service: &'static str,
    pub(super) version: &'static str,
}

impl ProcessCollector {
    pub(super) fn new(service: &'static str, version: &'static str) -> Self {
        let started_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        ProcessCollector { started: Instant::now(), started_unix, service, version }
    }
}

/// What `/proc/self` says now.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ProcStats {
    pub(super) cpu_seconds: f64,
    pub(super) virtual_bytes: u64,
    pub(super) resident_bytes: u64,
    pub(super) open_fds: u64,
    pub(super) max_fds: Option<u64>,
}

pub(super) fn read_proc() -> Option<ProcStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name is in parentheses and may hold spaces: fields follow the last `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name, field 3 (state) is index 0; utime is field 14, stime 15, vsize 23.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let cpu_seconds = (field(14)? + field(15)?) as f64 / TICKS_PER_SECOND;
    let virtual_bytes = field(23)?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|limits| {
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
    });
    Some(ProcStats {
        cpu_seconds,
        virtual_bytes,
        resident_bytes: resident_pages * PAGE_SIZE,
        open_fds,
        max_fds,
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let info = Info::new([
            ("service", self.service),
            ("version", self.version),
            ("trellis_version", env!("CARGO_PKG_VERSION")),
        ]);
        info.encode(encoder.encode_descriptor(
            "trellis_build",
            "The service's name and version and the Trellis version it was built with",
            None,
            info.metric_type(),
        )?)?;
        let gauge = |encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: f64| {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        };
        gauge(
            &mut encoder,
            "process_uptime_seconds",
            "Seconds since the process started serving metrics",
            self.started.elapsed().as_secs_f64(),
        )?;
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process, Unix seconds",
            self.started_unix,
        )?;
        let Some(stats) = read_proc() else { return Ok(()) };
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            stats.resident_bytes as f64,
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            stats.virtual_bytes as f64,
        )?;
        gauge(&mut encoder, "process_open_fds", "Open file descriptors", stats.open_fds as f64)?;
        if let Some(max) = stats.max_fds {
            gauge(&mut encoder, "process_max_fds", "The limit on open file descriptors", max as f64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn proc_is_read() {
        let stats = read_proc().expect("/proc/self");
        assert!(stats.resident_bytes > 0 && stats.virtual_bytes >= stats.resident_bytes, "{stats:?}");
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let more = read_proc().unwrap();
        assert!(more.open_fds > 0 && more.open_fds >= stats.open_fds, "{stats:?} {more:?}");
        drop(file);
    }
}

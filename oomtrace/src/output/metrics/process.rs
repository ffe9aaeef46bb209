//! The collector's own cost, read from /proc at each scrape: CPU time and
//! resident memory of the whole process (the usual `process_*` names, so
//! that existing dashboards show them), and CPU time per thread, which
//! splits it into the pipeline's, the memory sampler's (its walk of every
//! memcg), the writer's, the kernel log reader's and the event loop's.

use std::path::Path;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A /proc that cannot be read (it always can, for ourselves) leaves
        // the series out rather than report a wrong zero.
        if let Some(cpu) = cpu_seconds(Path::new("/proc/self/stat")) {
            let metric = encoder.encode_descriptor(
                "process_cpu",
                "CPU time the collector used, user and system",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            ConstCounter::new(cpu).encode(metric)?;
        }
        if let Some(rss) = resident_bytes() {
            let metric = encoder.encode_descriptor(
                "process_resident_memory",
                "The collector's resident memory",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            ConstGauge::new(rss as i64).encode(metric)?;
        }
        let threads = thread_cpu_seconds();
        if !threads.is_empty() {
            let mut family = encoder.encode_descriptor(
                "oomtrace_thread_cpu",
                "CPU time per collector thread: pipeline, sampler (memory sampling), writer, \
                 kmsg (kernel log), oomtrace (the event loop draining the ring buffer), \
                 tiny_http's for the metrics server",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            for (name, seconds) in threads {
                let labels = [("thread", name)];
                ConstCounter::new(seconds).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn clock_ticks() -> Option<f64> {
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then_some(ticks as f64)
}

/// A task's comm and its user + system CPU seconds, from a /proc stat file.
fn stat(path: &Path) -> Option<(String, f64)> {
    let text = std::fs::read_to_string(path).ok()?;
    // The comm is in parentheses and may hold spaces or parentheses itself:
    // the fields start after the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // Fields 14 and 15 of proc_pid_stat(5), utime and stime; `fields`
    // starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) as f64 / clock_ticks()?))
}

fn cpu_seconds(path: &Path) -> Option<f64> {
    stat(path).map(|(_, seconds)| seconds)
}

fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// CPU seconds by thread name; threads of one name (tiny_http's) add up.
fn thread_cpu_seconds() -> Vec<(String, f64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut by_name: std::collections::BTreeMap<String, f64> = Default::default();
    for task in tasks.flatten() {
        if let Some((comm, seconds)) = stat(&task.path().join("stat")) {
            *by_name.entry(comm).or_default() += seconds;
        }
    }
    by_name.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stat_reads() {
        let (comm, seconds) = stat(Path::new("/proc/self/stat")).expect("stat");
        assert!(!comm.is_empty());
        assert!(seconds >= 0.0);
        assert!(resident_bytes().expect("statm") > 0);
        assert!(!thread_cpu_seconds().is_empty());
    }
}

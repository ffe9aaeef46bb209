//! `oomtrace run --metrics-addr`: Prometheus metrics, kept up to date by a
//! listener on the pipeline (beside the output) and served by a small HTTP
//! server on threads of its own ([`server`]).
//!
//! The listener only bumps counters (an atomic add on a series that exists;
//! a map insert under a write lock for a new one) and copies the pipeline's
//! totals at each tick: it never does I/O. A scrape encodes the registry on
//! the server's thread. Neither runs on the event loop that drains the ring
//! buffer, so a slow scraper can hold up nothing but itself.

mod health;
mod labels;
mod process;
pub mod server;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use oomtrace_record::{Counters, Record, StallPhase};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

pub use health::{Health, STALE_AFTER};
pub use labels::KillLabels;

use crate::pipeline::{Delivery, Listener};

/// The default `--metrics-max-series`.
pub const DEFAULT_MAX_SERIES: u32 = 2000;

/// The metrics and what serves them.
pub struct Metrics {
    registry: Registry,
    shared: Shared,
    health: Arc<Health>,
    max_series: usize,
}

/// What the listener writes and a scrape reads.
#[derive(Clone)]
struct Shared {
    kills: Family<KillLabels, Counter>,
    folded: Counter,
    probes: Family<ProbeLabels, Gauge>,
    totals: Arc<Mutex<Counters>>,
    stalls: Family<StallLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    probe: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StallLabels {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

impl Metrics {
    /// `max_series`: how many distinct namespace/pod/container series
    /// `oomtrace_kills_total` keeps before it folds new ones into
    /// [`OVERFLOW`].
    pub fn new(max_series: usize) -> Self {
        let shared = Shared {
            kills: Family::default(),
            folded: Counter::default(),
            probes: Family::default(),
            totals: Arc::default(),
            stalls: Family::default(),
        };
        let mut registry = Registry::default();
        registry.register(
            "oomtrace_kills",
            "Processes killed: by the kernel's OOM killer (cause=\"oom_kill\") or by a SIGKILL \
             from userspace (cause=\"signal_kill\"), by the Kubernetes namespace, pod and \
             container name (outside Kubernetes: the runtime's container name, else the systemd \
             unit, else the cgroup path), never the container id, so that a restarted container \
             continues its series",
            shared.kills.clone(),
        );
        registry.register(
            "oomtrace_kills_folded",
            "Kills counted in the _overflow series of oomtrace_kills_total because \
             --metrics-max-series distinct containers already had one",
            shared.folded.clone(),
        );
        registry.register(
            "oomtrace_probe_attached",
            "1 for each kernel hook attached, in the mode it attached with; 0 (mode=\"none\") \
             for a hook that could not be attached",
            shared.probes.clone(),
        );
        registry.register(
            "oomtrace_oom_stalls",
            "OOMs that killed nobody while a memcg stayed at its limit (oom_stall records \
             with phase start), by cause",
            shared.stalls.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("oomtrace_build_info", "oomtrace's version", build);
        registry.register_collector(Box::new(TotalsCollector(Arc::clone(&shared.totals))));
        registry.register_collector(Box::new(process::ProcessCollector));
        Self {
            registry,
            shared,
            health: Arc::new(Health::new()),
            max_series,
        }
    }

    /// The pipeline's listener that keeps these metrics.
    pub fn listener(&self) -> MetricsListener {
        MetricsListener {
            shared: self.shared.clone(),
            health: Arc::clone(&self.health),
            named: HashSet::new(),
            max_series: self.max_series,
        }
    }

    /// What `/healthz` answers from.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// The registry in the Prometheus text format (0.0.4), or in OpenMetrics.
    pub fn encode(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        }
        Ok(text)
    }
}

/// The pipeline's end of the metrics.
pub struct MetricsListener {
    shared: Shared,
    health: Arc<Health>,
    /// The namespace/pod/container keys with a series of their own, at most
    /// `max_series`.
    named: HashSet<(String, String, String)>,
    max_series: usize,
}

impl MetricsListener {
    fn count_kill(&mut self, mut labels: KillLabels) {
        let key = labels.subject();
        if !self.named.contains(&key) {
            if self.named.len() < self.max_series {
                self.named.insert(key);
            } else {
                labels.fold();
                self.shared.folded.inc();
            }
        }
        self.shared.kills.get_or_create(&labels).inc();
    }
}

impl Listener for MetricsListener {
    fn record(&mut self, record: &Record) -> Delivery {
        match record {
            Record::OomKill(kill) => self.count_kill(KillLabels::of_oom_kill(kill)),
            Record::SignalKill(kill) => {
                if let Some(labels) = KillLabels::of_signal_kill(kill) {
                    self.count_kill(labels);
                }
            }
            Record::OomStall(stall) if stall.phase == StallPhase::Start => {
                let cause = labels::snake_name(&stall.cause);
                self.shared
                    .stalls
                    .get_or_create(&StallLabels { cause })
                    .inc();
            }
            Record::Start(start) => {
                for probe in &start.probes {
                    let labels = ProbeLabels {
                        probe: labels::snake_name(&probe.name),
                        mode: probe
                            .mode
                            .map_or_else(|| "none".to_string(), |m| labels::snake_name(&m)),
                    };
                    self.shared
                        .probes
                        .get_or_create(&labels)
                        .set(i64::from(probe.mode.is_some()));
                }
            }
            _ => {}
        }
        Delivery::Taken
    }

    fn tick(&mut self, counters: &Counters) {
        self.health.stamp_pipeline();
        let mut totals = self.shared.totals.lock().unwrap_or_else(|p| p.into_inner());
        totals.clone_from(counters);
    }
}

/// The pipeline's totals as of its last tick (every 100 ms): losses, and the
/// sampler's cap.
#[derive(Debug)]
struct TotalsCollector(Arc<Mutex<Counters>>);

impl Collector for TotalsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let totals = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let lost = [
            ("kills", totals.lost_kills),
            ("exits", totals.lost_exits),
            ("signal_kills", totals.lost_signal_kills),
            ("untracked_victims", totals.untracked_victims),
            ("events_dropped", totals.events_dropped),
            ("records_dropped", totals.records_dropped),
        ];
        let mut family = encoder.encode_descriptor(
            "oomtrace_lost_records",
            "What was lost, by kind, as in the `lost` record's fields: kills, exits and \
             signal_kills the kernel side could not queue, untracked_victims, events_dropped \
             (read but not processed), records_dropped (the output could not take)",
            None,
            MetricType::Counter,
        )?;
        for (kind, value) in lost {
            let labels = [("kind", kind)];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        let single = [
            (
                "oomtrace_sampler_evictions",
                "Memcgs the memory sampler stopped following to make room at its cap",
                totals.sampler_evictions,
            ),
            (
                "oomtrace_sampler_refusals",
                "Memcgs the memory sampler did not follow: its cap was full of growing ones",
                totals.sampler_refusals,
            ),
            (
                "oomtrace_exits_never_seen",
                "Kills written without their exit whose victim was never seen to exit",
                totals.exits_never_seen,
            ),
        ];
        for (name, help, value) in single {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! The labels of `oomtrace_kills_total`, from a kill record.

use oomtrace_record::{CgroupRef, Container, K8s, OomKill, SignalKill};
use prometheus_client::encoding::EncodeLabelSet;
use serde::Serialize;

/// The namespace, pod and container of kills folded together once
/// `--metrics-max-series` subjects have a series.
pub const OVERFLOW: &str = "_overflow";

/// One series of `oomtrace_kills_total`.
///
/// `namespace` and `pod` are empty outside Kubernetes (Prometheus drops an
/// empty label: the series simply has none). `container` names the subject
/// by what the record attributes it to, first found of: the Kubernetes
/// container name, the runtime's container name (`docker ps`), the systemd
/// unit, the victim's cgroup path. Never the container id: a restarted
/// container has a new id and the same name, and must continue its series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KillLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// `oom.constraint` (`memcg`, `global`, ...); `unknown` when null; empty
    /// for a signal kill, which has none.
    pub constraint: String,
    /// `oom.limit_scope` (`container`, `pod`, `cgroup`, `node`); `unknown`
    /// when null; empty for a signal kill.
    pub limit_scope: String,
    /// The record's type: `oom_kill` or `signal_kill`.
    pub cause: &'static str,
    /// The record's `container_survives`: `true` when a lesser process died
    /// and its container kept running (nothing else reports it), `false`
    /// when the container went down with it, `unknown` when null.
    pub container_survives: &'static str,
}

impl KillLabels {
    pub fn of_oom_kill(kill: &OomKill) -> Self {
        let (namespace, pod, container) = subject(
            kill.k8s.as_ref(),
            kill.container.as_ref(),
            kill.systemd_unit.as_deref(),
            &kill.victim.cgroup,
        );
        Self {
            namespace,
            pod,
            container,
            constraint: kill
                .oom
                .constraint
                .map_or_else(|| "unknown".to_string(), |c| snake_name(&c)),
            limit_scope: kill
                .oom
                .limit_scope
                .map_or_else(|| "unknown".to_string(), |s| snake_name(&s)),
            cause: "oom_kill",
            container_survives: survives(kill.container_survives),
        }
    }

    /// None for the OOM killer's kill of a process that shares its victim's
    /// memory (`part_of_oom_kill`): the victim's `oom_kill` counts that OOM
    /// kill once, as the kernel's own `oom_kill` counters do.
    pub fn of_signal_kill(kill: &SignalKill) -> Option<Self> {
        if kill.part_of_oom_kill.is_some() {
            return None;
        }
        let (namespace, pod, container) = subject(
            kill.k8s.as_ref(),
            kill.container.as_ref(),
            kill.systemd_unit.as_deref(),
            &kill.target.cgroup,
        );
        Some(Self {
            namespace,
            pod,
            container,
            constraint: String::new(),
            limit_scope: String::new(),
            cause: "signal_kill",
            container_survives: survives(kill.container_survives),
        })
    }

    /// The namespace, pod and container: what the series cap counts.
    pub fn subject(&self) -> (String, String, String) {
        (
            self.namespace.clone(),
            self.pod.clone(),
            self.container.clone(),
        )
    }

    /// Into the overflow series, keeping the small-valued labels.
    pub fn fold(&mut self) {
        for label in [&mut self.namespace, &mut self.pod, &mut self.container] {
            *label = OVERFLOW.to_string();
        }
    }
}

fn subject(
    k8s: Option<&K8s>,
    container: Option<&Container>,
    systemd_unit: Option<&str>,
    cgroup: &CgroupRef,
) -> (String, String, String) {
    let namespace = k8s.and_then(|k| k.namespace.clone()).unwrap_or_default();
    let pod = k8s.and_then(|k| k.pod.clone()).unwrap_or_default();
    let name = k8s
        .and_then(|k| k.container.clone())
        .or_else(|| container.and_then(|c| c.name.clone()))
        .or_else(|| systemd_unit.map(str::to_string))
        .or_else(|| cgroup.path.clone())
        .unwrap_or_default();
    (namespace, pod, name)
}

fn survives(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "true",
        Some(false) => "false",
        None => "unknown",
    }
}

/// An enum's name as the records write it (`memcg`, `raw_tracepoint`).
pub fn snake_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "unknown".to_string(),
    }
}

//! One recommendation per subject, from its evidence, in one line.
//!
//! In this order: a userspace OOM killer's kills, a runtime's stop
//! timeout, a node OOM of a BestEffort or Burstable pod, then the growth
//! verdict of the latest kernel OOM kill (`memory.growth.kind`): leak,
//! spike, shmem, at_limit; without one, what is known and how to know
//! more.

use oomtrace_record::text::human_bytes;

use super::{
    model::{Action, Advice, Subject},
    subject::SubjectState,
};

pub fn placeholder() -> Advice {
    Advice {
        action: Action::Investigate,
        text: String::new(),
    }
}

fn limit_text(s: &Subject) -> String {
    match (s.limit_bytes, s.limit_scope.as_deref()) {
        (Some(limit), Some(scope)) => format!("the {scope} limit of {}", human_bytes(limit)),
        (Some(limit), None) => format!("the limit of {}", human_bytes(limit)),
        _ => "the limit".to_string(),
    }
}

/// Rounded up to a whole MiB.
fn mib_up(bytes: f64) -> u64 {
    const MIB: f64 = 1048576.0;
    ((bytes / MIB).ceil() as u64) << 20
}

pub fn advise(s: &Subject, state: &SubjectState) -> Advice {
    let advice = |action, text: String| Advice { action, text };
    let causes = &s.causes;
    if causes.userspace_oom_killer > 0 && s.kills == 0 {
        let mut names: Vec<&String> = state.killers.keys().collect();
        names.sort();
        let by = names
            .first()
            .map_or("a userspace OOM killer", |n| n.as_str());
        return advice(
            Action::UserspaceKiller,
            format!(
                "{by} killed it, not the kernel: its thresholds decided; tune them or give the workload room"
            ),
        );
    }
    if causes.runtime_stop > 0 && s.kills == 0 && causes.userspace_oom_killer == 0 {
        return advice(
            Action::StopTimeout,
            "the runtime SIGKILLed it at its stop timeout: exit on SIGTERM sooner, or raise the grace period".into(),
        );
    }
    let qos = s.qos.as_deref();
    if state.node_ooms > 0 && matches!(qos, Some("besteffort" | "burstable")) {
        return advice(
            Action::GuaranteedQos,
            format!(
                "set requests = limits (Guaranteed QoS): a node OOM took this {} pod",
                qos.unwrap_or("?")
            ),
        );
    }
    let slope = s
        .growth_slope_bytes_per_s
        .filter(|v| *v > 0.0 && v.is_finite())
        .map(|v| format!(" at {}/s", human_bytes(v as u64)))
        .unwrap_or_default();
    match s.growth.as_str() {
        "leak" => advice(
            Action::FixLeak,
            format!(
                "fix the leak: it grew steadily{slope} to {}; more only delays the kill",
                limit_text(s)
            ),
        ),
        "spike" => advice(
            Action::BoundBatch,
            format!(
                "stream or bound the batch: flat, then one jump to {}",
                limit_text(s)
            ),
        ),
        "shmem" => advice(
            Action::BoundShmem,
            format!(
                "cap the tmpfs (sizeLimit) or keep its files on disk: shmem filled {}",
                limit_text(s)
            ),
        ),
        "at_limit" => {
            let seen = s
                .max_working_set_bytes
                .into_iter()
                .chain(s.max_rss_bytes)
                .max();
            let text = match seen {
                Some(ws) => format!(
                    "raise the limit above the observed working set {}: to {} or more",
                    human_bytes(ws),
                    human_bytes(mib_up(ws as f64 * 1.25))
                ),
                None => "raise the limit: the workload is sized at it".to_string(),
            };
            advice(Action::RaiseLimit, text)
        }
        _ if state.node_ooms > 0 => advice(
            Action::Investigate,
            "the node ran out of memory: give every pod a limit, and reserve memory for the system"
                .into(),
        ),
        _ if s.kills > 0 => advice(
            Action::Investigate,
            format!(
                "no memory history for a verdict (sampling off, or the cgroup died before its first sample): hit {}{}",
                limit_text(s),
                s.max_rss_bytes
                    .map(|r| format!(", victim RSS {}", human_bytes(r)))
                    .unwrap_or_default()
            ),
        ),
        _ => advice(
            Action::Investigate,
            "killed by SIGKILL from outside (see its causes): check who sent it".into(),
        ),
    }
}

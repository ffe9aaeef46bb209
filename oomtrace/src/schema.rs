//! The output records: oomtrace's public contract (schema version 1).
//!
//! One JSON object per line. Every record has `type` and `schema`. Sizes are
//! bytes, times are RFC 3339 UTC with nanoseconds plus `boot_ns`
//! (CLOCK_BOOTTIME, the clock of `bpf_ktime_get_boot_ns`). Every documented
//! field is always present: a value this kernel or attach mode cannot give is
//! `null`, never left out and never made up. `oomtrace schema` prints the JSON
//! Schema generated from these types; docs/schema.md explains each field.
//!
//! Compatibility: fields may be added within a schema version; renaming,
//! removing or changing the meaning of one bumps `schema`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::attribution::{Container, LimitScope, Qos};
use crate::host::HostFacts;

pub const SCHEMA_VERSION: u32 = 1;

/// One line of output.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Start(Box<Start>),
    OomKill(Box<OomKill>),
    Lost(Lost),
    Stop(Stop),
}

/// Written once, when every probe is attached or has definitively failed:
/// the ready signal.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Start {
    pub schema: u32,
    pub time: String,
    pub boot_ns: u64,
    /// oomtrace's version.
    pub version: String,
    pub host: HostFacts,
    /// One entry per hook, with how it attached or why it did not.
    pub probes: Vec<ProbeStatus>,
    pub collector: CollectorStatus,
    /// Things the operator should know: fields this kernel cannot give, a
    /// fallback taken, a protection that could not be applied.
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ProbeStatus {
    /// `mark_victim`, `oom_kill_process` or `process_exit`.
    pub name: String,
    /// The mode in use (`raw_tracepoint`, `tracepoint`, `fentry`, `kprobe`),
    /// or null when the hook is not attached.
    pub mode: Option<String>,
    /// Every mode tried, in order, with the error of each that failed.
    pub attempts: Vec<AttachAttempt>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct AttachAttempt {
    pub mode: String,
    /// Null when this mode attached.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct CollectorStatus {
    pub pid: u32,
    /// How long a kill waits for its victim's exit before it is written with
    /// `exit.observed = false`.
    pub exit_wait_ms: u64,
    pub oom_score_adj: SelfSetting,
    pub nice: SelfSetting,
}

/// A setting the collector applies to itself at start: its oom_score_adj
/// (so the OOM killer it records spares it; lowering needs
/// CAP_SYS_RESOURCE) and its nice value (so records keep up while the CPUs
/// are busy with the processes being killed; raising priority needs
/// CAP_SYS_NICE).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct SelfSetting {
    pub requested: i32,
    /// The value in effect now (/proc/self/oom_score_adj, getpriority(2)).
    pub applied: Option<i32>,
    /// Why the requested value could not be set.
    pub error: Option<String>,
}

/// One OOM kill.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct OomKill {
    pub schema: u32,
    /// The kernel's sequence number for this kill, from 0 at load. Records are
    /// written when the exit is joined, so `seq` can be out of line order.
    pub seq: u64,
    /// When the victim was marked, RFC 3339 UTC with nanoseconds.
    pub time: String,
    pub boot_ns: u64,
    /// The hook that saw the kill: `raw_tracepoint` or `tracepoint`.
    pub source: String,
    pub victim: Victim,
    pub trigger: Trigger,
    pub oom: Oom,
    /// The victim's memory cgroup at the kill. Null when not readable in this
    /// attach mode.
    pub memcg: Option<Memcg>,
    pub exit: Exit,
    /// The container the victim ran in, from its cgroup path (`id`, and
    /// `runtime` where the path's naming tells). Null outside a container,
    /// for a layout oomtrace does not know, and when the cgroup is unknown.
    pub container: Option<Container>,
    /// The Kubernetes pod, when the victim's cgroup is a kubelet pod's.
    pub k8s: Option<K8s>,
    /// The innermost systemd unit in the victim's cgroup path that is not a
    /// container's own scope (`nginx.service`, `session-3.scope`).
    pub systemd_unit: Option<String>,
    /// Whether the victim's container keeps running: false when the victim
    /// was its PID 1 (`victim.container_init`) or `memory.oom.group` takes
    /// the whole container; true when a lesser process died and the
    /// container (and its pod's status) carries on as if nothing happened.
    /// Null outside a container, or when either fact is unknown.
    pub container_survives: Option<bool>,
}

/// Kubernetes names: the pod UID and QoS class from the cgroup path, and the
/// namespace, pod and container names from the kubelet's log directories
/// under `--host-root` (null when not found there).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct K8s {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    /// The container's name in the pod spec.
    pub container: Option<String>,
    pub qos: Option<Qos>,
}

/// How `oom.memcg_path` is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemcgSource {
    /// From `oom_kill_process`'s `oc->memcg`: the kernel's own answer.
    OomKillProcess,
    /// Derived: the nearest of the victim's memcg and its ancestors whose
    /// usage, read in the kernel at the kill, was at its limit.
    UsageAtLimit,
}

/// The process the kernel killed, as it was at the moment it was marked.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Victim {
    /// Process id (thread-group id), as /proc and `kill` use it.
    pub pid: Option<u32>,
    /// The thread the kernel marked (usually equal to `pid`).
    pub tid: Option<u32>,
    /// The process id inside its own pid namespace.
    pub ns_pid: Option<u32>,
    /// Whether the victim was PID 1 of its pid namespace (a container's
    /// init): then the container itself dies.
    pub container_init: Option<bool>,
    /// Task name (`comm`). Bytes that are not UTF-8 are replaced by U+FFFD;
    /// `comm_hex` then has the exact bytes.
    pub comm: Option<String>,
    /// The exact comm bytes as lowercase hex, only when `comm` is not valid
    /// UTF-8; otherwise null.
    pub comm_hex: Option<String>,
    pub uid: Option<u32>,
    pub oom_score_adj: Option<i16>,
    pub total_vm_bytes: Option<u64>,
    pub pgtables_bytes: Option<u64>,
    pub rss: Rss,
    pub cgroup: CgroupRef,
}

/// Resident memory by kind, as `get_mm_counter()` (and dmesg) counts it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Rss {
    pub anon_bytes: Option<u64>,
    pub file_bytes: Option<u64>,
    pub shmem_bytes: Option<u64>,
}

/// A cgroup, read inside the kernel at the kill (it survives the cgroup's
/// removal).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct CgroupRef {
    /// The cgroup's kernfs id (the inode number of its directory).
    pub id: Option<u64>,
    /// The path inside its hierarchy, as /proc/PID/cgroup shows it.
    pub path: Option<String>,
}

/// The task whose allocation ran out of memory (`current` at the kill).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Trigger {
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub comm: Option<String>,
    pub comm_hex: Option<String>,
}

/// Why this victim: from `oom_kill_process`, when fentry or kprobe attached.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Oom {
    /// `memcg` (a cgroup limit), `global` (the node), `cpuset` or `mempolicy`.
    pub constraint: Option<String>,
    /// The memory cgroup whose limit fired, for a memcg OOM.
    pub memcg_path: Option<String>,
    /// The badness the kernel gave the chosen process (oom_badness(): pages
    /// of RSS + swap + page tables, plus oom_score_adj × totalpages / 1000).
    pub points: Option<i64>,
    /// The memory the OOM was judged against, in pages: the limit of the
    /// cgroup for a memcg OOM, RAM + swap for a global one.
    pub totalpages: Option<u64>,
    /// The process the kernel chose; with `memory.oom.group`, the other
    /// members of the group are killed with it and differ from it.
    pub chosen_pid: Option<u32>,
    /// How `memcg_path` is known; null when it is not.
    pub memcg_source: Option<MemcgSource>,
    /// Whose limit fired: `container`, `pod`, `cgroup` (any other cgroup:
    /// a slice, a QoS level, one made by hand) or `node` (a global OOM).
    pub limit_scope: Option<LimitScope>,
}

/// The victim's memory cgroup, read in the kernel at the kill.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Memcg {
    pub path: Option<String>,
    pub usage_bytes: u64,
    /// Null when the cgroup has no limit.
    pub limit_bytes: Option<u64>,
    /// The memcg and every ancestor up to the root, leaf first.
    pub levels: Vec<MemcgLevel>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct MemcgLevel {
    pub path: Option<String>,
    pub usage_bytes: u64,
    /// Null when this level has no limit.
    pub limit_bytes: Option<u64>,
    /// `memory.oom.group`: when set (Kubernetes sets it on cgroup v2
    /// containers since 1.28), an OOM kill takes every process under this
    /// cgroup. Null when this kernel's BTF lacks `mem_cgroup::oom_group`.
    pub oom_group: Option<bool>,
}

/// The victim's exit, joined to the kill.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Exit {
    /// Whether the exit was seen within `exit_wait_ms`.
    pub observed: bool,
    /// The shell's view: 128 + signal for a signal death (137 for SIGKILL),
    /// else the exit status.
    pub code: Option<i32>,
    /// The signal that ended it (9 for SIGKILL), null for a normal exit.
    pub signal: Option<i32>,
    /// Milliseconds from the kill to the exit.
    pub delay_ms: Option<f64>,
}

/// The kernel could not queue some records since the last `lost` record.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Lost {
    pub schema: u32,
    pub time: String,
    pub boot_ns: u64,
    /// Kill records dropped because the ring buffer was full.
    pub kills: u64,
    /// Exit records dropped; their kills are written with
    /// `exit.observed = false`.
    pub exits: u64,
    /// Victims whose exit could not be tracked (the join map was full).
    pub untracked_victims: u64,
}

/// Written last, on SIGINT or SIGTERM or when the output closes.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Stop {
    pub schema: u32,
    pub time: String,
    pub boot_ns: u64,
    /// `SIGTERM`, `SIGINT`.
    pub reason: String,
    pub counters: Counters,
}

/// Totals since start.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Counters {
    /// `oom_kill` records written.
    pub kills: u64,
    /// Of those, how many had their exit observed.
    pub exits_observed: u64,
    pub lost_kills: u64,
    pub lost_exits: u64,
    pub untracked_victims: u64,
}

/// The JSON Schema of one output line, as `oomtrace schema` prints it.
///
/// Every property is listed as required: a field oomtrace cannot fill is
/// `null`, never absent (schemars would otherwise make `Option` fields
/// optional).
pub fn json_schema() -> serde_json::Value {
    use schemars::{Schema, generate::SchemaSettings, transform::RecursiveTransform};
    let mut settings = SchemaSettings::draft2020_12();
    settings
        .transforms
        .push(Box::new(RecursiveTransform(|schema: &mut Schema| {
            let keys: Option<Vec<serde_json::Value>> = schema
                .get("properties")
                .and_then(|p| p.as_object())
                .map(|p| p.keys().cloned().map(Into::into).collect());
            if let Some(keys) = keys {
                schema.insert("required".into(), keys.into());
            }
        })));
    let schema = settings.into_generator().into_root_schema_for::<Record>();
    serde_json::to_value(schema).unwrap_or_default()
}

/// `comm` as a string, plus its exact bytes in hex when they are not UTF-8.
pub fn comm_fields(raw: &[u8]) -> (String, Option<String>) {
    let bytes = raw.split(|b| *b == 0).next().unwrap_or_default();
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            Some(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_round_trips_through_json() {
        let raw = b"a\"b\\c\nd\xffe\0\0\0";
        let (comm, hex) = comm_fields(raw);
        assert_eq!(comm, "a\"b\\c\nd\u{fffd}e");
        assert_eq!(hex.as_deref(), Some("6122625c630a64ff65"));
        let line = serde_json::to_string(&serde_json::json!({ "comm": comm, "comm_hex": hex }))
            .expect("serialize");
        assert!(!line.contains('\n'), "one line: {line}");
        let back: serde_json::Value = serde_json::from_str(&line).expect("parse");
        let hex = back["comm_hex"].as_str().expect("hex");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
            .collect();
        assert_eq!(bytes, b"a\"b\\c\nd\xffe");
        assert_eq!(comm_fields(b"stress\0\0"), ("stress".into(), None));
    }

    #[test]
    fn schema_names_every_record_type() {
        let text = json_schema().to_string();
        for t in ["start", "oom_kill", "lost", "stop"] {
            assert!(text.contains(&format!("\"{t}\"")), "{t} missing");
        }
    }

    #[test]
    fn every_property_is_required_even_nullable_ones() {
        let schema = json_schema();
        let victim = &schema["$defs"]["Victim"];
        let required: Vec<&str> = victim["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for field in ["pid", "comm_hex", "container_init", "rss", "cgroup"] {
            assert!(
                required.contains(&field),
                "{field} not required: {required:?}"
            );
        }
    }
}

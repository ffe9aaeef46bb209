//! `oom_kill` and `late_exit`: one kill, and the exit that closes it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Memcg, Memory, Origin};

/// One process the kernel's OOM killer marked as a victim.
///
/// Written when the victim's exit is seen, or after the collector's exit
/// wait (`start.collector.exit_wait_ms`) without it: records are therefore
/// in exit order, and `seq` gives the kernel's order.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct OomKill {
    /// Always 1 in this version of the format.
    pub schema: u32,
    #[serde(flatten)]
    pub origin: Origin,
    /// The kernel's sequence number of this kill, from 0 at each collector
    /// start (`run_id`).
    pub seq: u64,
    /// When `mark_victim` fired, RFC 3339 UTC with nanoseconds.
    pub time: String,
    /// The same instant in CLOCK_BOOTTIME nanoseconds.
    pub boot_ns: u64,
    /// The hook that saw the kill.
    pub source: KillSource,
    pub victim: Victim,
    pub trigger: Trigger,
    pub oom: Oom,
    /// The victim's memory cgroup at the kill. Null in classic tracepoint
    /// mode, where the victim's task is out of reach, and when the victim's
    /// memcg is more than 32 levels below the root memcg.
    pub memcg: Option<Memcg>,
    pub exit: Exit,
    /// The container the victim ran in, from its cgroup path. Null outside
    /// a container, for a layout oomtrace does not know (then only the raw
    /// `victim.cgroup.path` tells), and in classic tracepoint mode.
    pub container: Option<Container>,
    /// The Kubernetes pod, when the victim's cgroup is a kubelet pod's.
    pub k8s: Option<K8s>,
    /// The innermost systemd unit in the victim's cgroup path that is not a
    /// container's own scope: `nginx.service`, `session-3.scope`,
    /// `user@1000.service`. Null when not under a unit.
    pub systemd_unit: Option<String>,
    /// Whether the victim's container keeps running. `false` when the kill
    /// takes it down: the victim was its PID 1 (`victim.container_init`), or
    /// `memory.oom.group` on the container's cgroup or above it (up to the
    /// memcg that fired) makes the kernel kill every process in it. `true`
    /// when a lesser process died and the container carries on: the runtime
    /// reports nothing and `kubectl describe pod` shows no OOMKilled. Null
    /// outside a container, when `container_init` or `oom_group` is unknown,
    /// or when a group set below the container's cgroup may or may not hold
    /// PID 1.
    pub container_survives: Option<bool>,
    /// The victim's memory before the kill, from the collector's sampler.
    /// Null when sampling is off (`--sample-interval 0`) or the victim's
    /// memcg path is unknown.
    #[serde(default)]
    pub memory: Option<Memory>,
}

/// The hook that saw a kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KillSource {
    /// The raw tracepoint `mark_victim`, reading the victim's task_struct.
    RawTracepoint,
    /// The classic tracepoint `oom:mark_victim`, with only its format's
    /// fields.
    Tracepoint,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// The process the kernel killed, as it was at the moment it was marked.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Victim {
    /// Process id (thread-group id), as /proc and `kill` use it. Null in
    /// classic tracepoint mode, which knows only the thread.
    pub pid: Option<u32>,
    /// The thread the kernel marked, normally equal to `pid`.
    pub tid: Option<u32>,
    /// The process id inside the victim's own pid namespace. Null in classic
    /// tracepoint mode.
    pub ns_pid: Option<u32>,
    /// Whether the victim was PID 1 of its pid namespace (a container's
    /// init), so that its container died with it. False for a process in the
    /// host's pid namespace (`pid_ns` equal to `start.host.pid_ns`), where no
    /// process is a container's PID 1. Null in classic tracepoint mode.
    pub container_init: Option<bool>,
    /// The inode number of the victim's pid namespace, as
    /// `readlink /proc/PID/ns/pid` shows it (`pid:[N]`). Equal to
    /// `start.host.pid_ns` for a process in the host's pid namespace: a
    /// container run with `--pid=host` or Kubernetes `hostPID: true` has
    /// no init of its own. Null in classic tracepoint mode, or where BTF
    /// lacks the field.
    #[serde(default)]
    pub pid_ns: Option<u64>,
    /// Task name. Bytes that are not UTF-8 are replaced by U+FFFD and
    /// `comm_hex` then has the exact bytes. Null where the classic
    /// tracepoint has only `pid` (kernels before 6.9).
    pub comm: Option<String>,
    /// The exact `comm` bytes as lowercase hex, only when they are not valid
    /// UTF-8; otherwise null.
    pub comm_hex: Option<String>,
    /// Real uid, as dmesg prints it.
    pub uid: Option<u32>,
    /// -1000…1000, from `signal_struct`.
    pub oom_score_adj: Option<i16>,
    /// `mm->total_vm`.
    pub total_vm_bytes: Option<u64>,
    /// `mm_pgtables_bytes(mm)`.
    pub pgtables_bytes: Option<u64>,
    pub rss: Rss,
    pub cgroup: CgroupRef,
}

/// Resident memory by kind, as `get_mm_counter()` counts it for
/// MM_ANONPAGES, MM_FILEPAGES and MM_SHMEMPAGES: the numbers dmesg prints.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Rss {
    /// Anonymous memory (heap, stacks, private mappings).
    pub anon_bytes: Option<u64>,
    /// Mapped file pages (binaries, libraries, mmapped files).
    pub file_bytes: Option<u64>,
    /// Shared memory and tmpfs pages mapped by the process.
    pub shmem_bytes: Option<u64>,
}

/// The victim's cgroup, read inside the kernel at the kill, so it is right
/// even when the runtime removes the cgroup right after.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct CgroupRef {
    /// The cgroup's kernfs id (the inode number of its directory). Null in
    /// classic tracepoint mode, and when the kernel's walk up from it could
    /// not be read. Known for a path too deep or too long to carry.
    pub id: Option<u64>,
    /// Its path inside the hierarchy with the memory controller, as
    /// /proc/PID/cgroup shows it. Bytes that are not UTF-8 are replaced by
    /// U+FFFD and `path_hex` then has the exact bytes. Null when `id` is, and
    /// for a path the kernel's walk cannot carry whole: more than 32 levels
    /// below the root, or longer than 4,095 bytes (PATH_MAX less its NUL;
    /// /proc/PID/cgroup cannot show a longer one whole either). Never cut
    /// short.
    pub path: Option<String>,
    /// The exact `path` bytes, `/` separators included, as lowercase hex,
    /// only when they are not valid UTF-8; otherwise null.
    #[serde(default)]
    pub path_hex: Option<String>,
}

/// The task whose allocation ran out of memory (`current` at the kill).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Trigger {
    /// Its process id. The trigger is often not the victim: the kernel
    /// kills the biggest task, not the one that asked last.
    pub pid: Option<u32>,
    /// Its thread id.
    pub tid: Option<u32>,
    /// As `victim.comm`; null only if unreadable.
    pub comm: Option<String>,
    /// As `victim.comm_hex`.
    pub comm_hex: Option<String>,
}

/// Why this victim, and which limit: from `oom_kill_process` when fentry or
/// a kprobe is attached there (see `start.probes`), else from the kernel's
/// own `oom-kill:` log line, else derived.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Oom {
    /// The kind of OOM (`oc->constraint`), from `oom_kill_process` when it
    /// is hooked, else from the kernel's `oom-kill:constraint=…` log line.
    /// Null when neither is there.
    pub constraint: Option<Constraint>,
    /// The memory cgroup whose limit fired, in this order of evidence (see
    /// `memcg_source`): `oom_kill_process`'s `oc->memcg` when it is hooked;
    /// the kernel's `oom-kill:…,oom_memcg=…` line for this victim; else
    /// derived, as the nearest memcg at its limit (usage within 8 pages + 65
    /// pages per CPU, at most 1/8 of the limit, read in the kernel at the
    /// kill) among those that hold *both* the victim and the task whose
    /// allocation failed: the kernel charges the allocating task's memcg and
    /// its ancestors, so the limit that fired is one of theirs. Null for a
    /// global OOM, and when no evidence settles it (`memcg_unknown` says
    /// why). Not UTF-8: as `victim.cgroup.path`.
    pub memcg_path: Option<String>,
    /// As `victim.cgroup.path_hex`, for `memcg_path`.
    #[serde(default)]
    pub memcg_path_hex: Option<String>,
    /// The chosen process's badness (`oom_badness()`: pages of RSS, swap and
    /// page tables, plus oom_score_adj × totalpages / 1000).
    pub points: Option<i64>,
    /// Pages the OOM was judged against: the memcg's limit, or RAM + swap.
    pub totalpages: Option<u64>,
    /// The process the kernel chose; other members of a `memory.oom.group`
    /// kill differ from it.
    pub chosen_pid: Option<u32>,
    /// How `memcg_path` is known; null when it is not.
    pub memcg_source: Option<MemcgSource>,
    /// Why `memcg_path` is null for an OOM that is not global; null
    /// otherwise.
    #[serde(default)]
    pub memcg_unknown: Option<MemcgUnknown>,
    /// What the kernel log (/dev/kmsg) said about this kill: whether its
    /// `oom-kill:` summary line was read and matched this victim.
    #[serde(default)]
    pub kernel_log: Option<KernelLog>,
    /// Whose limit fired. Null when neither the fired memcg nor a global
    /// constraint is known.
    pub limit_scope: Option<LimitScope>,
    /// Whether the OOM killer sent this victim SIGKILL itself just before
    /// marking it (seen by the `signal_generate` hook). `false`: the kernel
    /// marked a task that was already dying (task_will_free_mem() in
    /// oom_kill_process() or out_of_memory()) without killing it, so this
    /// record is not an OOM kill: the death's cause is a `signal_kill` (see
    /// `signal_kill_seq`) or the task's own exit. Null when the signal hook
    /// is not attached (`--signal-kills off`).
    #[serde(default)]
    pub killed: Option<bool>,
    /// When `killed` is false because an earlier SIGKILL (a `kill -9`, a
    /// userspace OOM killer) was already killing the task: the `seq` of that
    /// `signal_kill` record (same `run_id`). Null otherwise.
    #[serde(default)]
    pub signal_kill_seq: Option<u64>,
    /// Whether the kill is part of a `memory.oom.group` kill: a level from
    /// the victim's memcg up to the one that fired (the root memcg for a
    /// global OOM) has `memory.oom.group` set, so the kernel kills every
    /// task under the highest such level, each with its own `oom_kill`
    /// record. Always false on cgroup v1, which has no group kill. Null
    /// where a level's `oom_group`, or the memcg that fired, is unknown.
    #[serde(default)]
    pub group_kill: Option<bool>,
    /// The `memory.stat` of the memcg whose limit fired, as the kernel
    /// printed it at this kill (see [`KernelStat`]). Null when the kernel
    /// printed none for it: its OOM report is ratelimited (10 per 5 s with
    /// `oom-kill:`), off for global OOMs, and not read with
    /// `--kernel-log off`.
    #[serde(default)]
    pub kernel_stat: Option<crate::KernelStat>,
}

/// `enum oom_constraint` (include/linux/oom.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    /// CONSTRAINT_NONE: the whole node ran out of memory.
    Global,
    /// CONSTRAINT_CPUSET: the allowed NUMA nodes of a cpuset.
    Cpuset,
    /// CONSTRAINT_MEMORY_POLICY: an mbind/set_mempolicy node set.
    Mempolicy,
    /// CONSTRAINT_MEMCG: a memory cgroup's limit.
    Memcg,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// How `oom.memcg_path` is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemcgSource {
    /// From `oom_kill_process`'s `oc->memcg`: the kernel's own answer.
    OomKillProcess,
    /// Derived: the nearest memcg holding both the victim and the allocating
    /// task whose usage, read in the kernel at the kill, was at its limit.
    UsageAtLimit,
    /// From the kernel's own log line for this kill
    /// (`oom-kill:constraint=…,oom_memcg=…,task_memcg=…,task=…,pid=…`, printed
    /// by dump_oom_victim() and read from /dev/kmsg), after checking that its
    /// task, pid and task_memcg are this victim's.
    KernelLog,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// Why `oom.memcg_path` is null.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemcgUnknown {
    /// The kernel's walk of the victim's memcg levels did not reach the root
    /// memcg (deeper than the walk's limit, or this kernel's BTF lacks a
    /// field it needs), or the attach mode cannot walk it (classic
    /// tracepoint).
    LevelsUnknown,
    /// The allocating task's memcg ancestry is unknown, so no level can be
    /// shown to hold both it and the victim.
    TriggerUnknown,
    /// The memcg that fired is known, but its path is not carried whole
    /// (deeper than 32 levels or longer than 4,095 bytes; see
    /// `victim.cgroup.path`).
    PathNotCarried,
    /// No memcg holding both the victim and the allocating task was at its
    /// limit when read: e.g. a v1 `memsw` limit fired, memory was freed
    /// before mark_victim, or the charge was made on another memcg's behalf.
    NoSharedLevelAtLimit,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// What the kernel log said about a kill. The kernel prints the
/// `oom-kill:` summary before the kill and `Killed process PID` after
/// mark_victim; oomtrace reads /dev/kmsg from its start onwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KernelLog {
    /// The `oom-kill:` line for this victim was read, and its task, pid and
    /// task_memcg matched the record: `constraint` and `memcg_path` come
    /// from it unless `oom_kill_process` was hooked.
    Matched,
    /// The kernel logged `Killed process` for this victim with no
    /// `oom-kill:` summary before it: oom_kill_process() prints the summary
    /// at most 10 times per 5 s (its `oom_rs` ratelimit), and not at all for
    /// the other members of a `memory.oom.group` kill.
    Absent,
    /// An `oom-kill:` line was there but could not be shown to be this
    /// victim's (printk truncates records past about 1 KiB, so very long
    /// cgroup paths cut it short).
    Unverified,
    /// No `Killed process` line for this victim was read within 1 s (or
    /// `--exit-wait`, if shorter): the kernel prints none when the task it
    /// chose was already exiting (oom_kill_process() and out_of_memory()
    /// then only mark it), and lines are lost when the kernel's log buffer
    /// overruns this reader.
    Missing,
    /// /dev/kmsg is not read by this collector (see `start.collector.kernel_log`).
    NotRead,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// Whose memory limit the kill enforced, named as an operator reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// The victim's container's own limit (`docker run --memory`, a
    /// Kubernetes container's `resources.limits.memory`): the memcg that
    /// fired is the container's cgroup or one inside it.
    Container,
    /// The Kubernetes pod's limit: the kubelet's pod cgroup, which has one
    /// when every container in the pod has a memory limit.
    Pod,
    /// Any other cgroup's limit: a systemd slice or service (`MemoryMax=`),
    /// the kubelet's QoS or `kubepods` level (node allocatable), a cgroup an
    /// operator made, or the victim's own cgroup when it is in no container.
    Cgroup,
    /// No cgroup's limit: the whole machine ran out of memory.
    Node,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// A victim's exit, as the kernel's `sched_process_exit` saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Exit {
    /// In `oom_kill` and `signal_kill`: the exit was seen within the
    /// collector's exit wait. Always true in `late_exit` and
    /// `container_exit`.
    pub observed: bool,
    /// As a shell reports it: 128 + signal for a signal death (137 for
    /// SIGKILL), else the exit status. Null when not observed, and with
    /// `--no-btf` (exit_code unreadable).
    pub code: Option<i32>,
    /// The signal that ended the process (9 for SIGKILL); null for a normal
    /// exit and when `code` is.
    pub signal: Option<i32>,
    /// Milliseconds from the kill (in `signal_kill`, the signal's send) to
    /// the exit (for a multi-threaded victim, to its last thread's exit).
    /// Always null in `container_exit`.
    pub delay_ms: Option<f64>,
}

/// The exit of a victim whose `oom_kill` record was written before the exit
/// came (`exit.observed: false` there): a victim slower to die than the
/// collector's exit wait, such as one the OOM reaper had to help, or one
/// stuck in the kernel. The collector keeps watching for such exits for
/// `start.collector.exit_retention_ms`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct LateExit {
    /// Always 1 in this version of the format.
    pub schema: u32,
    #[serde(flatten)]
    pub origin: Origin,
    /// The `seq` of the `oom_kill` or `signal_kill` record (same `run_id`)
    /// this exit closes.
    pub seq: u64,
    /// When the exit happened, RFC 3339 UTC with nanoseconds.
    pub time: String,
    /// The same instant in CLOCK_BOOTTIME nanoseconds.
    pub boot_ns: u64,
    /// The victim's `pid` (or, in classic tracepoint mode, `tid`) as in its
    /// `oom_kill` record.
    pub pid: Option<u32>,
    /// The victim's `tid` as in its `oom_kill` record.
    pub tid: Option<u32>,
    pub exit: Exit,
}

/// A container: its runtime's id from the cgroup path, and its name and
/// image from the runtime's state files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Container {
    /// The full 64-hex-digit id, as in the cgroup path (`docker ps
    /// --no-trunc`, `crictl ps -o json`).
    pub id: String,
    /// From the cgroup path's naming. Where the path cannot tell (a kubelet
    /// cgroupfs path, `/kubepods/…/pod<uid>/<id>`, is the same for every CRI
    /// runtime), from the runtime whose state files hold the id (see
    /// `name`); null when none does.
    pub runtime: Option<Runtime>,
    /// The container's name as its runtime lists it (`docker ps`, `podman
    /// ps`, `crictl ps`), read from the runtime's state files under
    /// `--host-root`: Docker's `containers/<id>/config.v2.json` (`Name`,
    /// without its leading `/`), Podman's `<driver>-containers/
    /// containers.json` (`names[0]`), and for a CRI container (containerd's
    /// task bundle, CRI-O's `userdata/config.json`) the name in the pod spec
    /// from the OCI annotations. Null when no state file has the id (the
    /// container was removed before its first record, the runtime keeps its
    /// state elsewhere: see `oomtrace run --docker-root` and the like) or
    /// the file does not say (plain containerd keeps names in its database).
    #[serde(default)]
    pub name: Option<String>,
    /// The image the container was created from, as it was asked for
    /// (`nginx:1.27`, `docker.io/library/redis:7`), from the same state files:
    /// Docker's `Config.Image`, the CRI annotations' image name, Podman's
    /// `image-name` (else its image id). Null as `name`.
    #[serde(default)]
    pub image: Option<String>,
}

/// The container engine whose naming the cgroup path follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Runtime {
    #[serde(rename = "docker")]
    Docker,
    /// Kubernetes' CRI plugin (`cri-containerd-`) and nerdctl.
    #[serde(rename = "containerd")]
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    #[serde(rename = "podman")]
    Podman,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// Kubernetes names: the pod UID and QoS class from the kubelet's pod
/// cgroup, and the namespace, pod and container names from the kubelet's
/// log directories under `--host-root`, else from the container runtime's
/// state files there (see `container.name`); null when found in neither
/// (the logs are elsewhere, or the pod was deleted before its first kill
/// was seen). oomtrace talks to no API server: no labels, annotations or
/// owners.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct K8s {
    /// The pod's namespace.
    pub namespace: Option<String>,
    /// The pod's name.
    pub pod: Option<String>,
    /// In dashed form. For a static pod this is the kubelet's hash of its
    /// manifest, not the mirror pod's UID.
    pub pod_uid: Option<String>,
    /// The container's name in the pod spec; null when only the pod is
    /// known.
    pub container: Option<String>,
    pub qos: Option<Qos>,
}

/// The pod's QoS class, from the kubelet's cgroup level above the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    /// The pod cgroup sits directly under `kubepods`.
    Guaranteed,
    Burstable,
    /// Serialized `besteffort`, the kubelet's own spelling.
    BestEffort,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// `comm` as the record carries it: the name, and its exact bytes in hex
/// when they are not UTF-8. `raw` is the kernel's NUL-padded array.
pub fn comm_fields(raw: &[u8]) -> (String, Option<String>) {
    text_fields(raw.split(|b| *b == 0).next().unwrap_or_default())
}

/// A kernel string as the record carries it (`comm`, a cgroup path): the
/// text, each byte that is not UTF-8 replaced by U+FFFD, and, only then,
/// the exact bytes as lowercase hex (the `*_hex` field).
pub fn text_fields(bytes: &[u8]) -> (String, Option<String>) {
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
    fn paths_keep_their_separators_in_hex() {
        let (path, hex) = text_fields(b"/a/bad\xff\xfe");
        assert_eq!(path, "/a/bad\u{fffd}\u{fffd}");
        assert_eq!(hex.as_deref(), Some("2f612f626164fffe"));
        assert_eq!(
            text_fields(b"/kubepods/pod1"),
            ("/kubepods/pod1".into(), None)
        );
        // An added field: records written before it still read.
        let old: CgroupRef = serde_json::from_str(r#"{"id": 7, "path": "/a"}"#).expect("read");
        assert_eq!((old.id, old.path_hex), (Some(7), None));
    }

    #[test]
    fn containers_written_before_name_and_image_still_read() {
        let old: Container =
            serde_json::from_str(r#"{"id": "ab", "runtime": "docker"}"#).expect("read");
        assert_eq!(old.runtime, Some(Runtime::Docker));
        assert_eq!((old.name, old.image), (None, None));
        let new = Container {
            id: "ab".into(),
            runtime: None,
            name: Some("web".into()),
            image: None,
        };
        let json = serde_json::to_value(&new).expect("serialize");
        // Unknown is written as null, never left out.
        assert_eq!(
            json,
            serde_json::json!({"id": "ab", "runtime": null, "name": "web", "image": null})
        );
    }

    #[test]
    fn closed_sets_keep_their_spelling() {
        fn json(value: impl Serialize) -> String {
            serde_json::to_string(&value).expect("serialize")
        }
        assert_eq!(json(LimitScope::Pod), "\"pod\"");
        assert_eq!(json(Constraint::Memcg), "\"memcg\"");
        assert_eq!(json(MemcgSource::UsageAtLimit), "\"usage_at_limit\"");
        assert_eq!(json(KillSource::RawTracepoint), "\"raw_tracepoint\"");
        assert_eq!(json(Runtime::Docker), "\"docker\"");
        assert_eq!(json(Runtime::Containerd), "\"containerd\"");
        assert_eq!(json(Runtime::CriO), "\"cri-o\"");
        assert_eq!(json(Runtime::Podman), "\"podman\"");
        assert_eq!(json(Qos::BestEffort), "\"besteffort\"");
    }

    #[test]
    fn values_from_a_newer_oomtrace_are_read() {
        let scope: LimitScope = serde_json::from_str("\"namespace\"").expect("read");
        assert_eq!(scope, LimitScope::Unknown);
        let runtime: Runtime = serde_json::from_str("\"kata\"").expect("read");
        assert_eq!(runtime, Runtime::Unknown);
    }
}

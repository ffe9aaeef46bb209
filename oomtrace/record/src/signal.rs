//! `signal_kill` and `container_exit`: the deaths that are not the kernel
//! OOM killer's, and the verdict on a container's end.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{CgroupRef, Container, Exit, K8s, Memcg, Origin, Victim};

/// One SIGKILL sent to a process that then died of it, other than the
/// kernel OOM killer's own kill of the victim it chose (that one is its
/// `oom_kill` record): a `kill -9`, a userspace OOM killer, a container
/// runtime, a write to `cgroup.kill`, or the OOM killer's kill of a process
/// sharing its victim's memory.
///
/// Written when the target's exit is seen, or after the collector's exit
/// wait (`start.collector.exit_wait_ms`) without it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct SignalKill {
    /// Always 1 in this version of the format.
    pub schema: u32,
    #[serde(flatten)]
    pub origin: Origin,
    /// The kernel's sequence number of this kill, from 0 at each collector
    /// start (`run_id`): one sequence with the `oom_kill` records of the
    /// same `run_id`, so it orders both kinds of kill.
    pub seq: u64,
    /// When the SIGKILL was sent, RFC 3339 UTC with nanoseconds.
    pub time: String,
    /// The same instant in CLOCK_BOOTTIME nanoseconds.
    pub boot_ns: u64,
    /// The hook that saw the signal.
    pub source: SignalSource,
    /// The process the SIGKILL was sent to, read in the kernel at the moment
    /// the signal was sent (the fields have the meanings of `oom_kill`'s
    /// `victim`).
    pub target: Victim,
    pub sender: Sender,
    /// The last SIGTERM the same thread group got before this SIGKILL,
    /// within 10 minutes of it: the polite request a runtime or a person
    /// makes first. Null when none was seen in that window (a plain
    /// `kill -9`, a userspace OOM killer).
    pub after_sigterm: Option<SigtermBefore>,
    /// For the OOM killer's extra kills: a process that shares the OOM
    /// victim's memory (CLONE_VM without CLONE_THREAD) is sent SIGKILL by
    /// __oom_kill_process() after the victim is marked, and this is the
    /// `seq` of that victim's `oom_kill` record (same `run_id`). Null for
    /// every other SIGKILL.
    pub part_of_oom_kill: Option<u64>,
    /// The target's memory cgroup when the signal was sent, with usage and
    /// limit per level: usage at or near a limit points to a userspace OOM
    /// kill, rather than a plain `kill -9`. Null when the target's memcg is
    /// more than 32 levels below the root memcg, or could not be read.
    pub memcg: Option<Memcg>,
    /// The target's exit; `delay_ms` counts from the signal's send.
    pub exit: Exit,
    /// The container the target ran in, from its cgroup path, as in
    /// `oom_kill`. Null outside a container and for a layout oomtrace does
    /// not know (then only the raw `target.cgroup.path` tells).
    pub container: Option<Container>,
    /// The Kubernetes pod, when the target's cgroup is a kubelet pod's.
    pub k8s: Option<K8s>,
    /// The innermost systemd unit in the target's cgroup path that is not a
    /// container's own scope, as in `oom_kill`. Null when not under a unit.
    pub systemd_unit: Option<String>,
    /// Whether the target's container keeps running: `false` when the
    /// target was its PID 1 (`target.container_init`), `true` when a lesser
    /// process died. A kill of the whole container (`cgroup.kill`, a
    /// runtime's `kill --all`) gives one record per process, and only PID
    /// 1's says `false`. Null outside a container, and when
    /// `container_init` is unknown.
    pub container_survives: Option<bool>,
}

/// The hook that saw a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignalSource {
    /// The raw tracepoint `signal_generate`, reading the target's
    /// task_struct.
    RawTracepoint,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// The task that sent a signal: `current` when the kernel generated it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Sender {
    /// Process id (thread-group id) of the task running when the signal was
    /// generated: the sender of a `kill(2)` or the writer to `cgroup.kill`;
    /// for a signal the kernel sends itself (`code: kernel`), whichever task
    /// it was running for, such as the one whose allocation ran the OOM
    /// killer. Null only if unreadable.
    pub pid: Option<u32>,
    /// Its thread id.
    pub tid: Option<u32>,
    /// Its real uid.
    pub uid: Option<u32>,
    /// Its task name, as `victim.comm`; null only if unreadable.
    pub comm: Option<String>,
    /// As `victim.comm_hex`.
    pub comm_hex: Option<String>,
    pub kind: SenderKind,
    /// How the signal was sent: siginfo's `si_code`.
    pub code: SignalCode,
    /// The sender's cgroup. `id` is read in the kernel when the signal is
    /// sent; `path` is read by the collector from /proc/PID/cgroup
    /// afterwards and kept only when that cgroup's id is `id`, so it is
    /// null when the sender exited or moved before it was read.
    pub cgroup: CgroupRef,
    /// What `kind` was decided on. Null when `kind` is `other`: nothing
    /// matched.
    pub kind_from: Option<KindEvidence>,
}

/// Who sent a SIGKILL, by this rule (the first that matches):
///
/// 1. `kernel`: siginfo's `si_code` is SI_KERNEL (no process can send that
///    code to another).
/// 2. `userspace_oom_killer`: the sender's task name is `earlyoom`,
///    `systemd-oomd`, `oomd` or `nohang`. When the target's cgroup (or an
///    ancestor) also carries the mark systemd-oomd and oomd leave on a
///    cgroup they act on (`user.oomd_ooms`, `user.oomd_kill`, or their
///    `trusted.` forms), `kind_from` is `cgroup_xattr`: confirmed. The mark
///    alone decides nothing: it stays on the cgroup, and a later `kill -9`
///    there is no OOM killer's.
/// 3. `container_runtime`: the sender's task name is `containerd-shim` or
///    starts with it (`containerd-shim-runc-v2` shows as `containerd-shim`,
///    task names being 15 bytes at most), or is `conmon`, `runc`, `crun`,
///    `dockerd`, `containerd`, `podman`, `crio`, `kubelet` or `docker`.
/// 4. `other`: anything else.
///
/// `kind_from` says which evidence matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SenderKind {
    /// A userspace OOM killer: it kills before the kernel's OOM killer
    /// would, on memory pressure (PSI) or low free memory, so its kills are
    /// out-of-memory kills the kernel never logs.
    UserspaceOomKiller,
    /// The container runtime or the kubelet: a stop, a liveness-probe
    /// restart, an eviction, a pod deletion.
    ContainerRuntime,
    /// The kernel itself (SI_KERNEL): the OOM killer's kill of a process
    /// sharing its victim's memory (see `part_of_oom_kill`), and the
    /// kernel's other kills.
    Kernel,
    /// Anything else: a person, a script, a supervisor, a writer to
    /// `cgroup.kill`.
    Other,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// The evidence `sender.kind` was decided on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KindEvidence {
    /// The sender's task name (`sender.comm`).
    Comm,
    /// The task name, confirmed by oomd's mark (`user.oomd_ooms`,
    /// `user.oomd_kill` or their `trusted.` forms) on the target's cgroup
    /// or an ancestor, which systemd-oomd and oomd set on a cgroup they
    /// act on.
    CgroupXattr,
    /// siginfo's `si_code` (`sender.code`).
    SiCode,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// siginfo's `si_code`: how a signal was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignalCode {
    /// SI_USER: `kill(2)`, `pidfd_send_signal(2)` without a siginfo, or a
    /// write to `cgroup.kill`.
    User,
    /// SI_TKILL: `tkill(2)` or `tgkill(2)`.
    Tkill,
    /// SI_QUEUE: `sigqueue(3)` (`rt_sigqueueinfo(2)`).
    Queue,
    /// SI_KERNEL: the kernel itself.
    Kernel,
    /// Any other code (a timer's, an I/O notification's, a fault's).
    Other,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// The SIGTERM that came before a SIGKILL.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SigtermBefore {
    /// Milliseconds from that SIGTERM's send to this SIGKILL's.
    pub ms_before: f64,
    /// The SIGTERM's sender's process id, as `sender.pid`. Null only if
    /// unreadable.
    pub sender_pid: Option<u32>,
    /// The SIGTERM's sender's task name, as `sender.comm`.
    pub sender_comm: Option<String>,
    /// As `victim.comm_hex`, for `sender_comm`.
    pub sender_comm_hex: Option<String>,
}

/// Task names of the userspace OOM killers (`SenderKind::UserspaceOomKiller`).
pub const USERSPACE_OOM_KILLERS: &[&str] = &["earlyoom", "systemd-oomd", "oomd", "nohang"];

/// Task names of container runtimes and the kubelet
/// (`SenderKind::ContainerRuntime`). Each is a whole name, except
/// `containerd-shim`, which is matched as a prefix (`containerd-shim-runc-v2`
/// and its kin, whole or cut to 15 bytes).
pub const CONTAINER_RUNTIMES: &[&str] = &[
    "containerd-shim",
    "conmon",
    "runc",
    "crun",
    "dockerd",
    "containerd",
    "podman",
    "crio",
    "kubelet",
    "docker",
];

/// The name part of the `SenderKind` rule: the kind a sender's task name
/// alone gives (`UserspaceOomKiller` or `ContainerRuntime`), or None when it
/// is neither, and the other evidence decides.
pub fn sender_kind_by_comm(comm: &str) -> Option<SenderKind> {
    const PREFIX: &str = "containerd-shim";
    if USERSPACE_OOM_KILLERS.contains(&comm) {
        Some(SenderKind::UserspaceOomKiller)
    } else if comm.starts_with(PREFIX) || CONTAINER_RUNTIMES.contains(&comm) {
        Some(SenderKind::ContainerRuntime)
    } else {
        None
    }
}

/// The end of a container: its PID 1 (the init of a pid namespace other
/// than the host's) exited. The verdict on why, where the runtime's
/// `OOMKilled` says only whether the kernel OOM-killed *some* process in the
/// container's cgroup: it misses a userspace OOM killer's kill of PID 1 and
/// blames the container for a lesser process's kill that it survived.
///
/// A container in the host's pid namespace (`--pid=host`, `hostPID: true`)
/// has no PID 1 of its own: its record is written when a kill (OOM or
/// signal) took the last process of its cgroup, found in userspace once
/// that process has exited; `pid` is then that process. One whose last
/// process exits by itself is not seen.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ContainerExit {
    /// Always 1 in this version of the format.
    pub schema: u32,
    #[serde(flatten)]
    pub origin: Origin,
    /// When PID 1 exited, RFC 3339 UTC with nanoseconds.
    pub time: String,
    /// The same instant in CLOCK_BOOTTIME nanoseconds.
    pub boot_ns: u64,
    /// PID 1's process id in the host's pid namespace (the collector's); in
    /// a container in the host's pid namespace, its last process's. Null
    /// only if unreadable.
    pub pid: Option<u32>,
    /// The inode number of the container's pid namespace, as
    /// `victim.pid_ns`. Null where BTF lacks the field.
    pub pid_ns: Option<u64>,
    /// PID 1's task name, as `victim.comm`; null only if unreadable.
    pub comm: Option<String>,
    /// As `victim.comm_hex`.
    pub comm_hex: Option<String>,
    /// PID 1's cgroup, read in the kernel at its exit.
    pub cgroup: CgroupRef,
    /// The container, from PID 1's cgroup path, as in `oom_kill`. Null for a
    /// layout oomtrace does not know (then only the raw `cgroup.path`
    /// tells).
    pub container: Option<Container>,
    /// The Kubernetes pod, when PID 1's cgroup is a kubelet pod's.
    pub k8s: Option<K8s>,
    /// The innermost systemd unit in PID 1's cgroup path that is not a
    /// container's own scope, as in `oom_kill`. Null when not under a unit.
    pub systemd_unit: Option<String>,
    /// PID 1's exit: `observed` is always true and `delay_ms` null.
    pub exit: Exit,
    /// Why PID 1 ended: `oom_kill` (the kernel OOM killer killed it),
    /// `signal_kill` (another SIGKILL: see `sender`), `signal` (another
    /// fatal signal: `exit.signal`) or `exit` (it exited by itself, with
    /// `exit.code` as its status: 143 from a SIGTERM it handled).
    pub cause: ExitCause,
    /// The `seq` (same `run_id`) of the record of the kill that ended PID 1:
    /// its `oom_kill` for `cause: oom_kill`, its `signal_kill` for `cause:
    /// signal_kill`. Null for the other causes, and when that kill was not
    /// seen (before the collector's start, with the signal hook off, or
    /// lost).
    pub cause_seq: Option<u64>,
    /// For `cause: signal_kill`, who sent the SIGKILL, as in its
    /// `signal_kill` record. Null for the other causes, and when the send
    /// was not seen.
    pub sender: Option<Sender>,
    pub other_oom_kills: OtherOomKills,
}

/// Why a container's PID 1 ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExitCause {
    /// PID 1 was the kernel OOM killer's victim, and the OOM killer killed
    /// it (`oom.killed` not false in its `oom_kill` record): the container
    /// ran out of memory.
    OomKill,
    /// PID 1 died of a SIGKILL that was not the kernel OOM killer's kill of
    /// it: from a userspace OOM killer, the runtime, a person or a
    /// `cgroup.kill` (see `sender`), or from the kernel (the OOM killer's
    /// kill of a process sharing its victim's memory). Also when PID 1 died
    /// of SIGKILL and its send was not seen (`cause_seq` and `sender`
    /// null): then it could have been any SIGKILL.
    SignalKill,
    /// PID 1 died of another fatal signal (`exit.signal`): a fault such as
    /// SIGSEGV, SIGBUS or SIGABRT, or a signal such as SIGTERM or SIGINT
    /// with its default action (not handled).
    Signal,
    /// PID 1 ended by itself, `exit.code` being its exit status: 0, an
    /// error, or 143 (130) from a SIGTERM (SIGINT) it handled by exiting
    /// with 128 + the signal, as shells do.
    Exit,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// The kernel OOM killer's kills of a container's other processes: those
/// the container survived, which neither the runtime nor `kubectl describe
/// pod` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OtherOomKills {
    /// `oom_kill` records this collector wrote for processes of this
    /// container's pid namespace (`victim.pid_ns`) other than PID 1, since
    /// `since`.
    pub count: u64,
    /// Their `seq`s (same `run_id`), oldest first: the newest 64 at most.
    pub seqs: Vec<u64>,
    /// Since when the collector has been watching this container, RFC 3339
    /// UTC with nanoseconds: the later of the collector's start and PID 1's
    /// start. Kills before it are not counted.
    pub since: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(value: impl Serialize) -> String {
        serde_json::to_string(&value).expect("serialize")
    }

    #[test]
    fn closed_sets_keep_their_spelling() {
        assert_eq!(json(SignalSource::RawTracepoint), "\"raw_tracepoint\"");
        assert_eq!(
            json(SenderKind::UserspaceOomKiller),
            "\"userspace_oom_killer\""
        );
        assert_eq!(json(SenderKind::ContainerRuntime), "\"container_runtime\"");
        assert_eq!(json(SenderKind::Kernel), "\"kernel\"");
        assert_eq!(json(SenderKind::Other), "\"other\"");
        assert_eq!(json(KindEvidence::Comm), "\"comm\"");
        assert_eq!(json(KindEvidence::CgroupXattr), "\"cgroup_xattr\"");
        assert_eq!(json(KindEvidence::SiCode), "\"si_code\"");
        assert_eq!(json(SignalCode::User), "\"user\"");
        assert_eq!(json(SignalCode::Tkill), "\"tkill\"");
        assert_eq!(json(SignalCode::Queue), "\"queue\"");
        assert_eq!(json(SignalCode::Kernel), "\"kernel\"");
        assert_eq!(json(SignalCode::Other), "\"other\"");
        assert_eq!(json(ExitCause::OomKill), "\"oom_kill\"");
        assert_eq!(json(ExitCause::SignalKill), "\"signal_kill\"");
        assert_eq!(json(ExitCause::Signal), "\"signal\"");
        assert_eq!(json(ExitCause::Exit), "\"exit\"");
    }

    #[test]
    fn values_from_a_newer_oomtrace_are_read() {
        fn read<T: serde::de::DeserializeOwned>(text: &str) -> T {
            serde_json::from_str(text).expect("read")
        }
        assert_eq!(read::<SignalSource>("\"fentry\""), SignalSource::Unknown);
        assert_eq!(read::<SenderKind>("\"scheduler\""), SenderKind::Unknown);
        assert_eq!(read::<KindEvidence>("\"bpf_lsm\""), KindEvidence::Unknown);
        assert_eq!(read::<SignalCode>("\"timer\""), SignalCode::Unknown);
        assert_eq!(read::<ExitCause>("\"freezer\""), ExitCause::Unknown);
    }

    #[test]
    fn sender_names_give_their_kind() {
        use SenderKind::{ContainerRuntime, UserspaceOomKiller};
        for name in USERSPACE_OOM_KILLERS {
            assert_eq!(
                sender_kind_by_comm(name),
                Some(UserspaceOomKiller),
                "{name}"
            );
        }
        for name in CONTAINER_RUNTIMES {
            assert_eq!(sender_kind_by_comm(name), Some(ContainerRuntime), "{name}");
        }
        // The shim is known by its prefix: whole, or cut to 15 bytes.
        for shim in [
            "containerd-shim-runc-v2",
            "containerd-shim",
            "containerd-shim-kata-v2",
        ] {
            assert_eq!(sender_kind_by_comm(shim), Some(ContainerRuntime), "{shim}");
        }
        // Everything else is a whole name: no other prefix, no substring, no
        // case folding.
        for other in [
            "bash",
            "kill",
            "",
            "runc:[2:INIT]",
            "dockerd-x",
            "oomd2",
            "Earlyoom",
            "my-earlyoom",
            "containerd-",
            "systemd",
        ] {
            assert_eq!(sender_kind_by_comm(other), None, "{other:?}");
        }
    }

    #[test]
    fn no_name_is_in_both_lists() {
        for name in USERSPACE_OOM_KILLERS {
            assert!(!CONTAINER_RUNTIMES.contains(name), "{name}");
            assert!(name.len() <= 15, "{name}: longer than a task name");
        }
        for name in CONTAINER_RUNTIMES {
            assert!(name.len() <= 15, "{name}: longer than a task name");
        }
    }
}

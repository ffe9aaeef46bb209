//! Kernel records of the signal hook and of containers' PID 1 exits →
//! `signal_kill` and the facts of a `container_exit` (whose cause the
//! pipeline settles: pipeline/containers.rs).

use oomtrace_ebpf::{ExitRecord, KillRecord, signal};
use oomtrace_record::{
    CgroupRef, ContainerExit, Exit, ExitCause, KindEvidence, Origin, OtherOomKills, SCHEMA_VERSION,
    Sender, SenderKind, SignalCode, SignalKill, SignalSource, SigtermBefore, sender_kind_by_comm,
};

use super::{CgroupChain, comm, exit, memcg, tracking, victim};
use crate::{kernel::clock, kernel::ring::KillEvent, pipeline::join::Tracking};

/// The `signal_kill` record for a SIGKILL whose target has not exited yet,
/// and how the kernel tracks the target.
pub fn signal_kill(kill: &KillEvent, origin: &Origin, page_size: u64) -> (SignalKill, Tracking) {
    let rec = &kill.rec;
    let chain = CgroupChain::from_record(kill);
    let target = victim(kill, chain.as_ref(), true);
    let sent = &rec.signal;
    let record = SignalKill {
        schema: SCHEMA_VERSION,
        origin: origin.clone(),
        seq: rec.seq,
        time: clock::rfc3339_from_boot_ns(rec.boot_ns),
        boot_ns: rec.boot_ns,
        source: SignalSource::RawTracepoint,
        target,
        sender: sender(rec),
        after_sigterm: sent.sigterm.get().map(|seen| {
            let (sender_comm, sender_comm_hex) = comm(Some(seen.sender_comm));
            let ms = rec.boot_ns.saturating_sub(seen.boot_ns) as f64 / 1e6;
            SigtermBefore {
                ms_before: (ms * 1000.0).round() / 1000.0,
                sender_pid: Some(seen.sender_tgid),
                sender_comm,
                sender_comm_hex,
            }
        }),
        part_of_oom_kill: sent.oom_seq.get(),
        memcg: memcg(rec, chain.as_ref(), page_size),
        exit: Exit::default(),
        // Filled by attribution::Attributor.
        container: None,
        k8s: None,
        systemd_unit: None,
        container_survives: None,
    };
    (record, tracking(rec))
}

/// The sender, as the kernel saw it: `current` when the signal was
/// generated. Its kind follows [`SenderKind`]'s rule as far as the record
/// tells (the kernel's code, then the task name); attribution may confirm
/// a userspace OOM killer from the target cgroup's extended attributes.
fn sender(rec: &KillRecord) -> Sender {
    let sent = &rec.signal;
    let (comm, comm_hex) = comm(rec.trigger_comm.get());
    let code = match sent.si_code {
        signal::SI_USER => SignalCode::User,
        signal::SI_TKILL => SignalCode::Tkill,
        signal::SI_QUEUE => SignalCode::Queue,
        signal::SI_KERNEL => SignalCode::Kernel,
        _ => SignalCode::Other,
    };
    let by_comm = comm.as_deref().and_then(sender_kind_by_comm);
    let (kind, kind_from) = if code == SignalCode::Kernel {
        (SenderKind::Kernel, Some(KindEvidence::SiCode))
    } else if let Some(kind) = by_comm {
        (kind, Some(KindEvidence::Comm))
    } else {
        (SenderKind::Other, None)
    };
    Sender {
        pid: Some(rec.trigger_tgid),
        tid: Some(rec.trigger_tid),
        uid: Some(sent.sender_uid),
        comm,
        comm_hex,
        kind,
        code,
        cgroup: CgroupRef {
            id: sent.sender_cgroup_id.get(),
            // Filled by attribution, from /proc, when the id matches.
            path: None,
            path_hex: None,
        },
        kind_from,
    }
}

/// The cause a wait status alone gives, before any kill is known to have
/// caused it.
pub fn status_cause(exit: &Exit) -> ExitCause {
    match (exit.signal, exit.code) {
        (Some(signal::SIGKILL), _) => ExitCause::SignalKill,
        (Some(_), _) => ExitCause::Signal,
        (None, Some(_)) => ExitCause::Exit,
        (None, None) => ExitCause::Unknown,
    }
}

/// A container PID 1's exit, with its cause still to settle: `exit_of` is
/// the kill (OOM or signal) the kernel had registered for it, if any.
pub fn container_exit(kill: &KillEvent, origin: &Origin) -> (ContainerExit, Option<u64>) {
    let rec = &kill.rec;
    let chain = CgroupChain::from_record(kill);
    let target = victim(kill, chain.as_ref(), true);
    let status = ExitRecord {
        boot_ns: rec.boot_ns,
        exit_code: rec.exit_code,
        ..ExitRecord::default()
    };
    let exit = Exit {
        delay_ms: None,
        ..exit(rec.boot_ns, &status)
    };
    let cause = status_cause(&exit);
    let record = ContainerExit {
        schema: SCHEMA_VERSION,
        origin: origin.clone(),
        time: clock::rfc3339_from_boot_ns(rec.boot_ns),
        boot_ns: rec.boot_ns,
        pid: target.pid,
        pid_ns: target.pid_ns,
        comm: target.comm,
        comm_hex: target.comm_hex,
        cgroup: target.cgroup,
        container: None,
        k8s: None,
        systemd_unit: None,
        exit,
        cause,
        cause_seq: None,
        sender: None,
        other_oom_kills: OtherOomKills {
            count: 0,
            seqs: Vec::new(),
            since: String::new(),
        },
    };
    (record, rec.exit_of.get())
}

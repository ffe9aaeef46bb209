//! The signal hook's part of the contract: the values it compares, and
//! the types its maps and records carry (see src/signals.rs, the programs).

use crate::{COMM_LEN, Known};

/// Signal numbers and `si_code` values the programs compare against
/// (include/uapi/asm-generic/signal.h, siginfo.h).
pub mod signal {
    pub const SIGKILL: i32 = 9;
    pub const SIGTERM: i32 = 15;
    /// kill(2), pidfd_send_signal(2), a write to cgroup.kill (`send_sig()`
    /// with SEND_SIG_NOINFO).
    pub const SI_USER: i32 = 0;
    /// The kernel itself (SEND_SIG_PRIV): the OOM killer among others.
    pub const SI_KERNEL: i32 = 0x80;
    /// sigqueue(3).
    pub const SI_QUEUE: i32 = -1;
    /// tkill(2), tgkill(2).
    pub const SI_TKILL: i32 = -6;
    /// `enum trace_sig_ret`'s TRACE_SIGNAL_DELIVERED: the `result` of a
    /// signal that was queued; a SIGKILL to a process already dying is
    /// TRACE_SIGNAL_IGNORED (prepare_signal() sees SIGNAL_GROUP_EXIT), so
    /// the first SIGKILL is the only one delivered.
    pub const TRACE_SIGNAL_DELIVERED: i32 = 0;
}

/// Value of `OOM_SIGKILLS` (the programs' src/signals.rs), keyed by
/// the target's tid: a SIGKILL the kernel sent (SI_KERNEL) that
/// `mark_victim` may claim. __oom_kill_process() sends its victim SIGKILL
/// *before* mark_oom_victim() fires `mark_victim`, from the same task, so
/// the mark that follows finds it and says the OOM killer did kill
/// ([`crate::KillRecord::oom_sigkill`]); no signal record is written for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelSigkill {
    /// `current`'s pid_tgid when it was sent.
    pub sender_pid_tgid: u64,
    pub boot_ns: u64,
}

/// Value of `OOM_MMS`, keyed by the victim's `mm_struct` address: written
/// by `mark_victim`, so that the SIGKILLs __oom_kill_process() then sends
/// to the other processes sharing that mm (CLONE_VM without CLONE_THREAD)
/// are recorded as part of this kill, matched by `mm` exactly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomMm {
    pub kill_seq: u64,
    /// The OOM killer's task (`current` at the mark): the extra SIGKILLs
    /// come from the same __oom_kill_process() call.
    pub killer_pid_tgid: u64,
    pub boot_ns: u64,
}

/// A SIGTERM a thread group got: value of `SIGTERMS`, keyed by its tgid,
/// so that a SIGKILL after it can be named a stop timeout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigtermSeen {
    pub boot_ns: u64,
    pub sender_tgid: u32,
    pub _pad: u32,
    pub sender_comm: [u8; COMM_LEN],
}

/// What a [`crate::SOURCE_SIGNAL`] record knows beyond the target (its victim
/// fields) and the sender (its trigger fields).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalSent {
    /// siginfo's `si_code` ([`signal`]'s SI_* values).
    pub si_code: i32,
    /// The sender's real uid.
    pub sender_uid: u32,
    /// The sender's cgroup (the memory hierarchy's, as for the victim):
    /// its kernfs id.
    pub sender_cgroup_id: Known<u64>,
    /// The last SIGTERM to the target's thread group, if one is remembered.
    pub sigterm: Known<SigtermSeen>,
    /// For the OOM killer's extra kills: the `seq` of the kill whose
    /// victim's mm the target shares.
    pub oom_seq: Known<u64>,
}

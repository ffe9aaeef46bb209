//! SIGKILLs that do not come from the OOM killer's kill of its chosen
//! victim, and the exits of containers' PID 1s: the programs that let the
//! collector explain every exit 137.
//!
//! `signal_generate` fires in __send_signal_locked() (kernel/signal.c) for
//! every signal generated on the node, with the target task and whether it
//! was queued (`result`). Only SIGKILL and SIGTERM get past its first
//! compare:
//! - a SIGTERM is remembered per thread group (`SIGTERMS`), so that a
//!   SIGKILL after it can be named a stop timeout;
//! - a SIGKILL the kernel sends (SI_KERNEL) is remembered per target
//!   (`OOM_SIGKILLS`) for `mark_victim` to claim: __oom_kill_process()
//!   sends its victim SIGKILL before mark_oom_victim(), from the same task.
//!   The OOM killer's extra SIGKILLs, to the processes sharing the victim's
//!   mm, come after the mark and are matched to it by `mm` (`OOM_MMS`);
//!   they are written as signal records naming that kill;
//! - any other delivered SIGKILL is written as a signal record, its target
//!   registered in `VICTIMS` like an OOM victim, so that its exit is joined
//!   the same way. Only the first SIGKILL to a process is delivered (the
//!   later ones find it dying and are ignored), so it is the one named.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, generated::bpf_ktime_get_boot_ns,
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use oomtrace_ebpf::{
    KernelSigkill, KillRecord, KillScratch, Known, OomMm, SIGNAL_RESERVE_DIVISOR,
    SOURCE_CONTAINER_EXIT, SOURCE_SIGNAL, SigtermSeen, counter, scratch_slot, signal,
};

/// bpf_ringbuf_query()'s flag for the ring's size (include/uapi/linux/bpf.h).
const BPF_RB_RING_SIZE: u64 = 1;

use crate::{
    kernel::{
        cgroup_kn, off, read, read_field, read_ptr_field, set, victim_cgroup, victim_key_rule,
    },
    maps::{EVENTS, KILL_SCRATCH, OOM_MMS, OOM_SIGKILLS, SIGTERMS, bump},
    programs::{begin_kill_record, fill_victim_from_task, fill_victim_ids, send_kill},
    registry,
};

/// How long a remembered kernel SIGKILL or OOM victim's mm can pair with
/// what follows it: both pairings happen within one __oom_kill_process()
/// call, microseconds; a second is far beyond it.
const PAIRING_MAX_NS: u64 = 1_000_000_000;

/// How far back a SIGTERM counts as the one before a SIGKILL: beyond any
/// stop timeout (the kubelet's default grace period is 30 s; docker stop's
/// 10 s).
const SIGTERM_MAX_NS: u64 = 600 * 1_000_000_000;

/// Raw tracepoint `signal_generate`: `TP_PROTO(int sig, struct
/// kernel_siginfo *info, struct task_struct *task, int group, int result)`
/// (include/trace/events/signal.h), fired by __send_signal_locked().
/// Runs for every signal on the node: anything but SIGKILL and SIGTERM
/// costs one compare.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn signal_generate_raw(ctx: RawTracePointContext) -> i32 {
    let sig = ctx.arg::<u64>(0) as i32;
    if sig != signal::SIGKILL && sig != signal::SIGTERM {
        return 0;
    }
    let task: *const u8 = ctx.arg(2);
    if sig == signal::SIGTERM {
        remember_sigterm(task);
    } else if ctx.arg::<u64>(4) as i32 == signal::TRACE_SIGNAL_DELIVERED {
        on_sigkill(&ctx, ctx.arg(1), task);
    }
    0
}

fn remember_sigterm(task: *const u8) {
    let Some(tgid) = read_field!(task, task_tgid) else {
        return;
    };
    let seen = SigtermSeen {
        // SAFETY: a plain helper call.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        sender_tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        sender_comm: bpf_get_current_comm().unwrap_or_default(),
    };
    let _ = SIGTERMS.insert(tgid as u32, seen, 0);
}

/// A delivered SIGKILL. `info` is a `struct kernel_siginfo *`, or one of
/// the kernel's two special values: SEND_SIG_NOINFO (0, a user's signal)
/// and SEND_SIG_PRIV (1, the kernel's).
#[inline(always)]
fn on_sigkill(ctx: &RawTracePointContext, info: u64, task: *const u8) {
    let si_code = match info {
        0 => Some(signal::SI_USER),
        1 => Some(signal::SI_KERNEL),
        _ => read_field!(info as *const u8, siginfo_code),
    };
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // A flag and a number, not an `Option<u64>`: a None's payload is never
    // written, yet the compiler copies it whole to the record, and kernels
    // before 6.5 refuse any read of unwritten stack ("invalid read from
    // stack": the program did not load on 6.1).
    let (mut part_of_oom_kill, mut oom_seq) = (false, 0u64);
    if si_code == Some(signal::SI_KERNEL) {
        if let Some(seq) = shares_oom_victims_mm(task, now) {
            (part_of_oom_kill, oom_seq) = (true, seq);
        } else {
            // Perhaps the OOM killer's kill of its victim: `mark_victim`,
            // next, claims it. Written by nobody otherwise.
            if let Some(tid) = read_field!(task, task_pid) {
                let sent = KernelSigkill {
                    sender_pid_tgid: bpf_get_current_pid_tgid(),
                    boot_ns: now,
                };
                let _ = OOM_SIGKILLS.insert(tid as u32, sent, 0);
            }
            return;
        }
    }
    let Some(scratch) = KILL_SCRATCH.get_ptr_mut(scratch_slot::SIGNAL) else {
        bump(counter::LOST_SIGNAL_KILLS);
        return;
    };
    // SAFETY: `scratch` is this CPU's scratch value for this program.
    let rec = unsafe { addr_of_mut!((*scratch).rec) };
    begin_kill_record(rec, SOURCE_SIGNAL);
    fill_victim_ids(rec, task);
    // SAFETY: as above.
    unsafe {
        let sent = addr_of_mut!((*rec).signal);
        (*sent).si_code = si_code.unwrap_or(i32::MIN);
        (*sent).sender_uid = bpf_get_current_uid_gid() as u32;
        set(
            addr_of_mut!((*sent).oom_seq),
            part_of_oom_kill.then_some(oom_seq),
        );
        set(addr_of_mut!((*sent).sender_cgroup_id), current_cgroup_id());
        if let Some(tgid) = (*rec).victim_tgid.get()
            && let Some(seen) = SIGTERMS.get_ptr(tgid)
            && now.saturating_sub((*seen).boot_ns) <= SIGTERM_MAX_NS
        {
            set(addr_of_mut!((*sent).sigterm), Some(*seen));
        }
    }
    let start_time = registry::process_start_time(task).unwrap_or(0);
    registry::register(rec, start_time);
    fill_victim_from_task(scratch, task);
    // A quarter of the ring stays free for OOM kills and exits.
    let keep_free = EVENTS.query(BPF_RB_RING_SIZE) / SIGNAL_RESERVE_DIVISOR;
    send_kill(ctx, scratch, counter::LOST_SIGNAL_KILLS, keep_free);
}

/// The `seq` of the OOM kill whose victim's mm `task` shares, when this
/// SIGKILL comes from that same __oom_kill_process() call.
#[inline(always)]
fn shares_oom_victims_mm(task: *const u8, now: u64) -> Option<u64> {
    let mm = read_ptr_field!(task, task_mm);
    if mm.is_null() {
        return None;
    }
    let victim = OOM_MMS.get_ptr(mm as u64)?;
    // SAFETY: a map value pointer from a successful lookup.
    let victim = unsafe { *victim };
    (victim.killer_pid_tgid == bpf_get_current_pid_tgid()
        && now.saturating_sub(victim.boot_ns) <= PAIRING_MAX_NS)
        .then_some(victim.kill_seq)
}

/// The kernfs id of `current`'s cgroup in the memory hierarchy.
#[inline(always)]
fn current_cgroup_id() -> Option<u64> {
    // SAFETY: a plain helper call.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let css_set = read_ptr_field!(task, task_cgroups);
    let memory_css = read_ptr_field!(css_set, css_set_memory_css);
    read_field!(cgroup_kn(victim_cgroup(css_set, memory_css)), kn_id)
}

/// In `mark_victim`, after the victim is registered: whether the OOM
/// killer's own SIGKILL to it came just before, from this same task
/// (`oom_sigkill`). Classic and raw modes both know the victim's tid.
#[inline(always)]
pub fn claim_oom_sigkill(rec: *mut KillRecord) {
    // SAFETY: `rec` is this CPU's scratch record.
    let (Some(tid), boot_ns) = (unsafe { ((*rec).victim_tid.get(), (*rec).boot_ns) }) else {
        return;
    };
    let Some(sent) = OOM_SIGKILLS.get_ptr(tid) else {
        return;
    };
    // SAFETY: a map value pointer from a successful lookup.
    let sent = unsafe { *sent };
    if sent.sender_pid_tgid == bpf_get_current_pid_tgid()
        && boot_ns.saturating_sub(sent.boot_ns) <= PAIRING_MAX_NS
    {
        // SAFETY: as above.
        unsafe { (*rec).oom_sigkill = 1 };
        let _ = OOM_SIGKILLS.remove(tid);
    }
}

/// In `mark_victim` (raw mode, which has the task): remembers the victim's
/// mm, for the extra SIGKILLs that follow.
#[inline(always)]
pub fn note_oom_mm(rec: *const KillRecord, task: *const u8) {
    let mm = read_ptr_field!(task, task_mm);
    if mm.is_null() {
        return;
    }
    // SAFETY: `rec` is this CPU's scratch record.
    let (kill_seq, boot_ns) = unsafe { ((*rec).seq, (*rec).boot_ns) };
    let victim = OomMm {
        kill_seq,
        killer_pid_tgid: bpf_get_current_pid_tgid(),
        boot_ns,
    };
    let _ = OOM_MMS.insert(mm as u64, victim, 0);
}

/// At `sched_process_exit`: when the exiting task ends a container's PID 1
/// (the last thread of the init of a pid namespace below the root one),
/// writes a [`SOURCE_CONTAINER_EXIT`] record. Every other exit costs two
/// reads (its `struct pid`'s level) and a compare.
#[inline(always)]
pub fn container_init_exit<C: EbpfContext>(ctx: &C) {
    // SAFETY: a plain helper call.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let pid = read_ptr_field!(task, task_thread_pid);
    match read_field!(pid, pid_level) {
        Some(level) if level > 0 && level <= MAX_PID_NS_LEVEL => {}
        _ => return,
    }
    if !is_last_thread_of_init(task) {
        return;
    }
    let Some(scratch) = KILL_SCRATCH.get_ptr_mut(scratch_slot::EXIT) else {
        bump(counter::LOST_EXITS);
        return;
    };
    write_container_exit(ctx, scratch, task);
}

/// MAX_PID_NS_LEVEL in include/linux/pid_namespace.h.
const MAX_PID_NS_LEVEL: u32 = 32;

/// The group's last thread (`signal->live` already 0), of a process that
/// is 1 in its own pid namespace: `group_leader->thread_pid->
/// numbers[level].nr`.
#[inline(always)]
fn is_last_thread_of_init(task: *const u8) -> bool {
    let live = read_field!(read_ptr_field!(task, task_signal), signal_live);
    if live != Some(0) {
        return false;
    }
    let leader = read_ptr_field!(task, task_group_leader);
    let pid = read_ptr_field!(leader, task_thread_pid);
    let (Some(level), Some(numbers), Some(nr), Some(upid_size)) = (
        read_field!(pid, pid_level),
        off!(pid_numbers),
        off!(upid_nr),
        off!(upid_size),
    ) else {
        return false;
    };
    if level > MAX_PID_NS_LEVEL {
        return false;
    }
    let upid = numbers + level as usize * upid_size;
    read::<oomtrace_ebpf::kernel_field_type::upid_nr>(pid, Some(upid + nr)) == Some(1)
}

#[inline(always)]
fn write_container_exit<C: EbpfContext>(ctx: &C, scratch: *mut KillScratch, task: *const u8) {
    // SAFETY: `scratch` is this CPU's scratch value for this program.
    let rec = unsafe { addr_of_mut!((*scratch).rec) };
    begin_kill_record(rec, SOURCE_CONTAINER_EXIT);
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: as above.
    unsafe {
        // Not a kill: it takes no number of the kill sequence, and the
        // exiting task is no trigger.
        (*rec).seq = 0;
        (*rec).trigger_comm = Known::default();
        (*rec).trigger_tid = 0;
        (*rec).trigger_tgid = 0;
        set(addr_of_mut!((*rec).victim_tid), Some(pid_tgid as u32));
        set(
            addr_of_mut!((*rec).victim_tgid),
            Some((pid_tgid >> 32) as u32),
        );
        set(
            addr_of_mut!((*rec).exit_code),
            read_field!(task, task_exit_code),
        );
        let key = match victim_key_rule() {
            oomtrace_ebpf::VictimKey::Tgid => (pid_tgid >> 32) as u32,
            oomtrace_ebpf::VictimKey::Tid => pid_tgid as u32,
        };
        set(addr_of_mut!((*rec).exit_of), registry::registered_seq(key));
    }
    fill_victim_from_task(scratch, task);
    crate::programs::send_record(ctx, scratch, counter::LOST_EXITS, 0);
}

//! The programs. See the crate docs in main.rs for the kernel prototypes
//! they depend on.

use core::ptr::{addr_of, addr_of_mut};

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str},
    },
    macros::{fentry, fexit, kprobe, kretprobe, raw_tracepoint, tracepoint},
    programs::{
        FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext,
        TracePointContext,
    },
};
use aya_log_ebpf::debug;
use oomtrace_ebpf::{
    COMM_LEN, ExitRecord, KILL_RECORD_MIN, KillRecord, KillScratch, OomContext, RECORD_EXIT,
    RECORD_KILL, SOURCE_RAW_TRACEPOINT, SOURCE_TRACEPOINT, cgroup_path_of, counter, scratch_slot,
};

use crate::{
    kernel::{
        MARK_VICTIM_LAYOUT, cgroup_kn, field, mm_counter_bytes, names_offset, off, page_shift,
        read, read_field, read_ptr_field, set, victim_cgroup, walk_cgroup_path, walk_memcg_levels,
        walk_trigger_memcg, zero,
    },
    maps::{EVENTS, KILL_SCRATCH, OOM_CONTEXTS, bump},
    registry, signals,
};

/// bpf_ringbuf_query() flags (include/uapi/linux/bpf.h).
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;

// ---------------------------------------------------------------------------
// mark_victim: one record per OOM victim.
// ---------------------------------------------------------------------------

/// Raw tracepoint `mark_victim`: arg0 is the victim's `struct task_struct *`,
/// so everything is read straight from the task at the moment it is marked.
#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn mark_victim_raw(ctx: RawTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    let Some(scratch) = KILL_SCRATCH.get_ptr_mut(scratch_slot::MARK_VICTIM) else {
        bump(counter::LOST_KILLS);
        return 0;
    };
    // SAFETY: `scratch` is this CPU's scratch value.
    let rec = unsafe { addr_of_mut!((*scratch).rec) };
    begin_kill_record(rec, SOURCE_RAW_TRACEPOINT);
    fill_victim_ids(rec, task);
    // SAFETY: as above.
    unsafe {
        if !(*rec).victim_tgid.is_known() {
            debug!(&ctx, "mark_victim: could not read the victim's task_struct");
        }
    }
    // Registered before the slow part of the record, so that the victim's
    // exit finds its entry even when one of its threads races to it (the
    // registry then holds the exit until the kill is written).
    let start_time = registry::process_start_time(task).unwrap_or(0);
    registry::register(rec, start_time);
    registry::claim_exit_before_mark(rec, start_time);
    signals::claim_oom_sigkill(rec);
    signals::note_oom_mm(rec, task);
    fill_victim_from_task(scratch, task);
    attach_oom_context(rec);
    walk_trigger_memcg(rec);
    send_kill(&ctx, scratch, counter::LOST_KILLS, 0);
    0
}

/// Classic tracepoint `oom:mark_victim`: fields at the offsets tracefs gave.
/// The victim's task is out of reach here, so its cgroup, tgid and pid
/// namespace stay unknown (null).
#[tracepoint(category = "oom", name = "mark_victim")]
pub fn mark_victim_tp(ctx: TracePointContext) -> u32 {
    let Some(scratch) = KILL_SCRATCH.get_ptr_mut(scratch_slot::MARK_VICTIM) else {
        bump(counter::LOST_KILLS);
        return 0;
    };
    // SAFETY: `scratch` is this CPU's scratch value.
    let rec = unsafe { addr_of_mut!((*scratch).rec) };
    begin_kill_record(rec, SOURCE_TRACEPOINT);
    fill_victim_from_tracepoint(&ctx, rec);
    registry::register(rec, 0);
    registry::claim_exit_before_mark(rec, 0);
    signals::claim_oom_sigkill(rec);
    attach_oom_context(rec);
    walk_oom_memcg_path(scratch);
    walk_trigger_memcg(rec);
    send_kill(&ctx, scratch, counter::LOST_KILLS, 0);
    0
}

/// Zeroes the record, numbers the kill, and fills in the header and the
/// trigger (`current`, the task whose allocation ran out).
#[inline(always)]
pub fn begin_kill_record(rec: *mut KillRecord, source: u32) {
    zero(rec);
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `rec` is this CPU's zeroed scratch record.
    unsafe {
        (*rec).kind = RECORD_KILL;
        (*rec).source = source;
        (*rec).seq = bump(counter::KILL_SEQ);
        (*rec).boot_ns = bpf_ktime_get_boot_ns();
        (*rec).trigger_tid = pid_tgid as u32;
        (*rec).trigger_tgid = (pid_tgid >> 32) as u32;
        set(
            addr_of_mut!((*rec).trigger_comm),
            bpf_get_current_comm().ok(),
        );
    }
}

/// Copies the record and the names its walk used into the ring buffer (the
/// fixed part and `cgroup_names_len` bytes: a short path makes a short
/// record), then settles the victim's registration: a kill that did not fit
/// is counted, and an exit that came while the record was being built is
/// written now, after it.
#[inline(always)]
pub fn send_kill<C: EbpfContext>(ctx: &C, scratch: *mut KillScratch, lost: u32, keep_free: u64) {
    let written = send_record(ctx, scratch, lost, keep_free);
    // SAFETY: `scratch` is this CPU's scratch value.
    if let Some(exit) = registry::settle(unsafe { addr_of!((*scratch).rec) }, written) {
        write_exit(ctx, &exit);
    }
}

/// Copies a record built in `scratch` into the ring buffer at its used
/// length, leaving at least `keep_free` bytes of the ring unused; when it
/// does not fit, counts it in `lost`.
#[inline(always)]
pub fn send_record<C: EbpfContext>(
    ctx: &C,
    scratch: *mut KillScratch,
    lost: u32,
    keep_free: u64,
) -> bool {
    // SAFETY: `scratch` is this CPU's scratch value; the record and its
    // names are adjacent in it (KillScratch is #[repr(C)]), and the mask
    // keeps the length inside it (cgroup_names_len <= CGROUP_PATH_MAX <
    // CGROUP_NAMES_LEN, a power of two), as the verifier must see.
    let written = unsafe {
        let names_len = names_offset((*scratch).rec.cgroup_names_len as usize);
        let len = KILL_RECORD_MIN + names_len;
        let room = keep_free == 0
            || EVENTS.query(BPF_RB_AVAIL_DATA) + len as u64 + keep_free
                <= EVENTS.query(BPF_RB_RING_SIZE);
        let bytes = core::slice::from_raw_parts(scratch as *const u8, len);
        room && EVENTS.output::<[u8]>(bytes, 0).is_ok()
    };
    if !written {
        bump(lost);
        debug!(ctx, "ring buffer full, record lost");
    }
    written
}

/// The victim's (or a signal's target's) tid and tgid, first: the registry
/// keys it by them.
#[inline(always)]
pub fn fill_victim_ids(rec: *mut KillRecord, task: *const u8) {
    // SAFETY: `rec` is this CPU's scratch record; `task` is only read
    // through bpf_probe_read_kernel.
    unsafe {
        set(
            addr_of_mut!((*rec).victim_tid),
            read_field!(task, task_pid).map(|p| p as u32),
        );
        set(
            addr_of_mut!((*rec).victim_tgid),
            read_field!(task, task_tgid).map(|p| p as u32),
        );
    }
}

#[inline(always)]
pub fn fill_victim_from_task(scratch: *mut KillScratch, task: *const u8) {
    // SAFETY: `scratch` is this CPU's scratch value; `task` is only read
    // through bpf_probe_read_kernel.
    unsafe {
        let rec = addr_of_mut!((*scratch).rec);
        set(
            addr_of_mut!((*rec).victim_comm),
            read_field!(task, task_comm),
        );
        // task_uid(): the real credentials, as the tracepoint and dmesg use.
        let cred = read_ptr_field!(task, task_real_cred);
        set(addr_of_mut!((*rec).victim_uid), read_field!(cred, cred_uid));
        let signal = read_ptr_field!(task, task_signal);
        set(
            addr_of_mut!((*rec).victim_oom_score_adj),
            read_field!(signal, signal_oom_score_adj).map(i32::from),
        );

        // The same counters __oom_kill_process() prints to dmesg.
        let mm = read_ptr_field!(task, task_mm);
        set(
            addr_of_mut!((*rec).total_vm_bytes),
            read_field!(mm, mm_total_vm).map(|pages| pages << page_shift()),
        );
        set(
            addr_of_mut!((*rec).pgtables_bytes),
            read_field!(mm, mm_pgtables_bytes).map(|bytes| bytes.max(0) as u64),
        );
        set(
            addr_of_mut!((*rec).rss_anon_bytes),
            mm_counter_bytes(read_field!(mm, mm_rss_anon)),
        );
        set(
            addr_of_mut!((*rec).rss_file_bytes),
            mm_counter_bytes(read_field!(mm, mm_rss_file)),
        );
        set(
            addr_of_mut!((*rec).rss_shmem_bytes),
            mm_counter_bytes(read_field!(mm, mm_rss_shmem)),
        );

        fill_pid_namespace(rec, task);

        let css_set = read_ptr_field!(task, task_cgroups);
        let memory_css = read_ptr_field!(css_set, css_set_memory_css);
        let cgroup = victim_cgroup(css_set, memory_css);
        (*rec).cgroup_path_of = cgroup_path_of::VICTIM;
        walk_cgroup_path(scratch, cgroup_kn(cgroup));
        if walk_memcg_levels(rec, memory_css) {
            (*rec).memcg_complete = 1;
        }
    }
}

/// The victim process's pid inside its own pid namespace:
/// `group_leader->thread_pid->numbers[level].nr` (1 means the victim was the
/// init of its namespace, a container's PID 1), and that namespace's inode
/// number, `numbers[level].ns->ns.inum`, which tells a container's own pid
/// namespace from the host's (`--pid=host`).
#[inline(always)]
fn fill_pid_namespace(rec: *mut KillRecord, task: *const u8) {
    /// MAX_PID_NS_LEVEL in include/linux/pid_namespace.h.
    const MAX_PID_NS_LEVEL: u32 = 32;
    let leader = read_ptr_field!(task, task_group_leader);
    let pid = read_ptr_field!(leader, task_thread_pid);
    let Some(level) = read_field!(pid, pid_level) else {
        return;
    };
    if level > MAX_PID_NS_LEVEL {
        return;
    }
    let (Some(numbers), Some(nr), Some(upid_size)) =
        (off!(pid_numbers), off!(upid_nr), off!(upid_size))
    else {
        return;
    };
    let upid = numbers + level as usize * upid_size;
    let ns_pid = read::<oomtrace_ebpf::kernel_field_type::upid_nr>(pid, Some(upid + nr));
    let ns =
        read::<oomtrace_ebpf::kernel_field_type::upid_ns>(pid, off!(upid_ns).map(|o| upid + o))
            .unwrap_or(core::ptr::null());
    let inum = read_field!(ns, pidns_inum);
    // SAFETY: `rec` is this CPU's scratch record.
    unsafe {
        set(addr_of_mut!((*rec).victim_ns_pid), ns_pid.map(|p| p as u32));
        set(addr_of_mut!((*rec).victim_pid_ns), inum);
    }
}

#[inline(always)]
fn fill_victim_from_tracepoint(ctx: &TracePointContext, rec: *mut KillRecord) {
    let layout = addr_of!(MARK_VICTIM_LAYOUT);
    let base = ctx.as_ptr() as *const u8;
    // SAFETY: `rec` is this CPU's scratch record; `base` is the tracepoint record,
    // read only through bpf_probe_read_kernel at tracefs-given offsets.
    unsafe {
        set(
            addr_of_mut!((*rec).victim_tid),
            read::<i32>(base, field(addr_of!((*layout).pid))).map(|p| p as u32),
        );
        // __data_loc: low 16 bits are the string's offset in the record.
        if let Some(loc) = read::<u32>(base, field(addr_of!((*layout).comm))) {
            let src = base.wrapping_add((loc & 0xffff) as usize);
            let dst = addr_of_mut!((*rec).victim_comm.value) as *mut u8;
            if bpf_probe_read_kernel_str(dst.cast(), COMM_LEN as u32, src.cast()) > 0 {
                (*rec).victim_comm.known = 1;
            }
        }
        let kb = |f| read::<u64>(base, field(f)).map(|kb| kb << 10);
        set(
            addr_of_mut!((*rec).total_vm_bytes),
            kb(addr_of!((*layout).total_vm)),
        );
        set(
            addr_of_mut!((*rec).rss_anon_bytes),
            kb(addr_of!((*layout).anon_rss)),
        );
        set(
            addr_of_mut!((*rec).rss_file_bytes),
            kb(addr_of!((*layout).file_rss)),
        );
        set(
            addr_of_mut!((*rec).rss_shmem_bytes),
            kb(addr_of!((*layout).shmem_rss)),
        );
        set(
            addr_of_mut!((*rec).pgtables_bytes),
            kb(addr_of!((*layout).pgtables)),
        );
        set(
            addr_of_mut!((*rec).victim_uid),
            read::<u32>(base, field(addr_of!((*layout).uid))),
        );
        set(
            addr_of_mut!((*rec).victim_oom_score_adj),
            read::<i16>(base, field(addr_of!((*layout).oom_score_adj))).map(i32::from),
        );
    }
}

/// Copies the context `oom_kill_process` left for this thread. An entry exists
/// only while that call runs (see `OomContext`), so it belongs to this kill.
#[inline(always)]
fn attach_oom_context(rec: *mut KillRecord) {
    let Some(context) = OOM_CONTEXTS.get_ptr(bpf_get_current_pid_tgid()) else {
        return;
    };
    // SAFETY: `rec` is this CPU's scratch record; `context` a map value pointer.
    unsafe { set(addr_of_mut!((*rec).oom), Some(*context)) };
}

/// The classic tracepoint gives no task, so the victim's cgroup is unknown;
/// the memcg whose limit fired still is, when `oom_kill_process` left its
/// kernfs node. Its path goes into the (otherwise unused) `cgroup_*` walk.
/// Not done in the raw tracepoint program, which fills that walk with the
/// victim's own path (and finds the fired memcg among its ancestors).
#[inline(always)]
fn walk_oom_memcg_path(scratch: *mut KillScratch) {
    // SAFETY: `scratch` is this CPU's scratch value.
    unsafe {
        let kn = (*scratch).rec.oom.value.memcg_kn as *const u8;
        if !kn.is_null() {
            (*scratch).rec.cgroup_path_of = cgroup_path_of::OOM_MEMCG;
            walk_cgroup_path(scratch, kn);
        }
    }
}

// ---------------------------------------------------------------------------
// oom_kill_process: why this victim, and which limit.
// ---------------------------------------------------------------------------

#[fentry(function = "oom_kill_process")]
pub fn oom_kill_process_fentry(ctx: FEntryContext) -> i32 {
    let oc: *const u8 = ctx.arg(0);
    save_oom_context(&ctx, oc);
    0
}

#[kprobe]
pub fn oom_kill_process_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(oc) = ctx.arg::<*const u8>(0) {
        save_oom_context(&ctx, oc);
    }
    0
}

#[fexit(function = "oom_kill_process")]
pub fn oom_kill_process_fexit(_ctx: FExitContext) -> i32 {
    let _ = OOM_CONTEXTS.remove(bpf_get_current_pid_tgid());
    0
}

#[kretprobe]
pub fn oom_kill_process_kretprobe(_ctx: RetProbeContext) -> u32 {
    let _ = OOM_CONTEXTS.remove(bpf_get_current_pid_tgid());
    0
}

#[inline(always)]
fn save_oom_context<C: EbpfContext>(ctx: &C, oc: *const u8) {
    let (Some(constraint), Some(points), Some(totalpages)) = (
        read_field!(oc, oc_constraint),
        read_field!(oc, oc_chosen_points),
        read_field!(oc, oc_totalpages),
    ) else {
        debug!(ctx, "oom_kill_process: could not read struct oom_control");
        return;
    };
    let chosen = read_ptr_field!(oc, oc_chosen);
    // oc->memcg is NULL for a global OOM.
    let memcg = read_ptr_field!(oc, oc_memcg);
    let (memcg_id, memcg_kn) = if memcg.is_null() {
        (0, 0)
    } else {
        let css = match off!(memcg_css) {
            Some(css) => memcg.wrapping_add(css),
            None => core::ptr::null(),
        };
        let kn = cgroup_kn(read_ptr_field!(css, css_cgroup));
        (read_field!(kn, kn_id).unwrap_or(0), kn as u64)
    };
    let context = OomContext {
        constraint,
        chosen_tgid: read_field!(chosen, task_tgid).unwrap_or(0) as u32,
        chosen_points: points,
        totalpages,
        memcg_id,
        memcg_kn,
    };
    if OOM_CONTEXTS
        .insert(bpf_get_current_pid_tgid(), context, 0)
        .is_err()
    {
        debug!(ctx, "oom_kill_process: OOM_CONTEXTS is full");
    }
}

// ---------------------------------------------------------------------------
// sched_process_exit: the victim's exit, joined to its kill.
// ---------------------------------------------------------------------------

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit_raw(ctx: RawTracePointContext) -> i32 {
    on_exit(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit_tp(ctx: TracePointContext) -> u32 {
    on_exit(&ctx);
    0
}

/// Runs on every exit on the node; only a registered victim's last exit
/// gets past the registry's lookup, and only a container's PID 1 past
/// `signals::container_init_exit`'s compare.
#[inline(always)]
fn on_exit<C: EbpfContext>(ctx: &C) {
    signals::container_init_exit(ctx);
    if let Some(exit) = registry::take_exiting() {
        write_exit(ctx, &exit);
    }
}

/// Writes the exit record that closes kill `exit.kill_seq`.
#[inline(always)]
pub fn write_exit<C: EbpfContext>(ctx: &C, exit: &registry::Exit) {
    let Some(mut slot) = EVENTS.reserve::<ExitRecord>(0) else {
        bump(counter::LOST_EXITS);
        debug!(ctx, "exit record lost: ring buffer full");
        return;
    };
    slot.write(ExitRecord {
        kind: RECORD_EXIT,
        _pad: 0,
        boot_ns: exit.boot_ns,
        kill_seq: exit.kill_seq,
        exit_code: exit.exit_code,
        _pad2: 0,
    });
    slot.submit(0);
}

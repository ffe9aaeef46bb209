//! The programs and maps. See the crate docs in main.rs for the kernel
//! prototypes they depend on.

use core::ptr::addr_of;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        generated::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str},
    },
    macros::{fentry, fexit, kprobe, kretprobe, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, RingBuf},
    programs::{
        FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext,
        TracePointContext,
    },
};
use aya_log_ebpf::debug;
use oomtrace_ebpf::{
    COMM_LEN, ExitRecord, KillRecord, OomContext, RECORD_EXIT, RECORD_KILL, SOURCE_RAW_TRACEPOINT,
    SOURCE_TRACEPOINT, VictimEntry, counter, exit_valid, kill_valid,
};

use crate::kernel::{
    CONFIG, MARK_VICTIM_LAYOUT, cgroup_kn, config_flag, field, off, page_shift, read,
    read_mm_counter_bytes, read_ptr, victim_cgroup, walk_cgroup_path, walk_memcg_levels,
};

/// The one ordered stream of records to the collector. 1 MiB holds ~100 kill
/// records; the collector can resize it (`map_max_entries`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Victims waiting for their exit: the only map the exit hook touches.
///
/// Every exit on the node looks itself up here and misses, and the miss
/// costs one read of a random bucket head (htab_map_lookup_elem). The bucket
/// array grows with max_entries, so it is kept small enough to stay in cache:
/// measured with `cargo xtask bench` (bpf_stats run time per exit, against
/// bpftrace's 4096-entry map in the same run, five runs each), 16384
/// entries ran 1.10-1.41x bpftrace's time (median 1.27), 4096 ran
/// 0.92-1.18x (median 1.05). 4096 victims still waiting for
/// their exits at once is far beyond any storm; past it, a kill is marked
/// `exit_untracked` and counted (VICTIMS_FULL), never dropped.
#[map]
static VICTIMS: HashMap<u32, VictimEntry> = HashMap::with_max_entries(4096, 0);

/// `oom_kill_process` context, keyed by the killing thread's pid_tgid.
#[map]
static OOM_CONTEXTS: HashMap<u64, OomContext> = HashMap::with_max_entries(1024, 0);

/// Loss counters and the kill sequence (see `oomtrace_ebpf::counter`).
#[map]
static COUNTERS: Array<u64> = Array::with_max_entries(counter::LEN, 0);

/// Adds one to a counter and returns its previous value.
#[inline(always)]
fn bump(index: u32) -> u64 {
    let Some(value) = COUNTERS.get_ptr_mut(index) else {
        return 0;
    };
    let mut previous: u64 = 1;
    // core's AtomicU64::fetch_add is not available on the bpf target (it has
    // no compare-and-swap), so this is the instruction itself: BPF_ATOMIC
    // BPF_ADD|BPF_FETCH (Linux 5.12+), atomic across CPUs.
    // SAFETY: `value` is an 8-byte aligned u64 in the array's value area.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
            p = in(reg) value,
            v = inout(reg) previous,
        );
    }
    previous
}

// ---------------------------------------------------------------------------
// mark_victim: one record per OOM victim.
// ---------------------------------------------------------------------------

/// Raw tracepoint `mark_victim`: arg0 is the victim's `struct task_struct *`,
/// so everything is read straight from the task at the moment it is marked.
#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn mark_victim_raw(ctx: RawTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    let Some(mut entry) = EVENTS.reserve::<KillRecord>(0) else {
        bump(counter::LOST_KILLS);
        debug!(&ctx, "mark_victim: ring buffer full, kill record lost");
        return 0;
    };
    let rec = entry.as_mut_ptr();
    begin_kill_record(rec, SOURCE_RAW_TRACEPOINT);
    fill_victim_from_task(rec, task);
    if !is_marked(rec, kill_valid::VICTIM_TGID) {
        debug!(&ctx, "mark_victim: could not read the victim's task_struct");
    }
    finish_kill_record(rec);
    entry.submit(0);
    0
}

/// Classic tracepoint `oom:mark_victim`: fields at the offsets tracefs gave.
/// The victim's task is out of reach here, so its cgroup, tgid and pid
/// namespace stay unknown (null).
#[tracepoint(category = "oom", name = "mark_victim")]
pub fn mark_victim_tp(ctx: TracePointContext) -> u32 {
    let Some(mut entry) = EVENTS.reserve::<KillRecord>(0) else {
        bump(counter::LOST_KILLS);
        debug!(&ctx, "mark_victim: ring buffer full, kill record lost");
        return 0;
    };
    let rec = entry.as_mut_ptr();
    begin_kill_record(rec, SOURCE_TRACEPOINT);
    fill_victim_from_tracepoint(&ctx, rec);
    finish_kill_record(rec);
    walk_oom_memcg_path(rec);
    entry.submit(0);
    0
}

/// Sets `valid` bits in the record itself. The bits stay in ring-buffer
/// memory (volatile, so the compiler cannot keep them in a register): to the
/// verifier they are then an unknown value, not one constant per path. With
/// a dozen optional reads, per-path constants would give it 2^12 states to
/// tell apart, and it gives up at a million instructions.
#[inline(always)]
fn mark(rec: *mut KillRecord, bits: u64) {
    // SAFETY: `rec` is a live reservation; `valid` is a plain u64.
    unsafe {
        let valid = core::ptr::addr_of_mut!((*rec).valid);
        core::ptr::write_volatile(valid, core::ptr::read_volatile(valid) | bits);
    }
}

#[inline(always)]
fn is_marked(rec: *mut KillRecord, bits: u64) -> bool {
    // SAFETY: as in `mark`.
    unsafe { core::ptr::read_volatile(addr_of!((*rec).valid)) & bits != 0 }
}

/// Header and trigger (`current`, the task whose allocation ran out); zeroes
/// every victim field so that nothing stale from the ring buffer leaks out.
#[inline(always)]
fn begin_kill_record(rec: *mut KillRecord, source: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let comm = bpf_get_current_comm();
    // SAFETY: `rec` is a live reservation; only plain integer fields are written.
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*rec).valid), 0);
        (*rec).kind = RECORD_KILL;
        (*rec).source = source;
        (*rec).boot_ns = bpf_ktime_get_boot_ns();
        (*rec).victim_tid = 0;
        (*rec).victim_tgid = 0;
        (*rec).victim_uid = 0;
        (*rec).victim_ns_pid = 0;
        (*rec).victim_pid_ns_level = 0;
        (*rec).victim_oom_score_adj = 0;
        (*rec).victim_comm = [0; COMM_LEN];
        (*rec).total_vm_bytes = 0;
        (*rec).rss_anon_bytes = 0;
        (*rec).rss_file_bytes = 0;
        (*rec).rss_shmem_bytes = 0;
        (*rec).pgtables_bytes = 0;
        (*rec).trigger_tid = pid_tgid as u32;
        (*rec).trigger_tgid = (pid_tgid >> 32) as u32;
        (*rec).trigger_comm = comm.unwrap_or([0; COMM_LEN]);
        (*rec).cgroup_depth = 0;
        (*rec).cgroup_names_len = 0;
        (*rec).memcg_depth = 0;
        (*rec)._pad = 0;
    }
    if comm.is_ok() {
        mark(rec, kill_valid::TRIGGER_COMM);
    }
}

/// Attaches the `oom_kill_process` context, numbers the kill, and registers
/// the victim for the exit hook.
#[inline(always)]
fn finish_kill_record(rec: *mut KillRecord) {
    attach_oom_context(rec);
    let seq = bump(counter::KILL_SEQ);
    // SAFETY: `rec` is a live reservation.
    let (key, known, boot_ns) = unsafe {
        (*rec).seq = seq;
        if config_flag(addr_of!(CONFIG.exit_key_is_tid)) {
            (
                (*rec).victim_tid,
                is_marked(rec, kill_valid::VICTIM_TID),
                (*rec).boot_ns,
            )
        } else {
            (
                (*rec).victim_tgid,
                is_marked(rec, kill_valid::VICTIM_TGID),
                (*rec).boot_ns,
            )
        }
    };
    let entry = VictimEntry {
        kill_seq: seq,
        kill_boot_ns: boot_ns,
    };
    if !known || VICTIMS.insert(key, entry, 0).is_err() {
        if known {
            bump(counter::VICTIMS_FULL);
        }
        mark(rec, kill_valid::EXIT_UNTRACKED);
    }
}

#[inline(always)]
fn fill_victim_from_task(rec: *mut KillRecord, task: *const u8) {
    // SAFETY: `rec` is a live reservation; `task` is only read through
    // bpf_probe_read_kernel.
    unsafe {
        if let Some(tid) = read::<i32>(task, off!(task_pid)) {
            (*rec).victim_tid = tid as u32;
            mark(rec, kill_valid::VICTIM_TID);
        }
        if let Some(tgid) = read::<i32>(task, off!(task_tgid)) {
            (*rec).victim_tgid = tgid as u32;
            mark(rec, kill_valid::VICTIM_TGID);
        }
        if let Some(comm) = read::<[u8; COMM_LEN]>(task, off!(task_comm)) {
            (*rec).victim_comm = comm;
            mark(rec, kill_valid::VICTIM_COMM);
        }
        // task_uid(): the real credentials, as the tracepoint and dmesg use.
        let cred = read_ptr(task, off!(task_real_cred));
        if let Some(uid) = read::<u32>(cred, off!(cred_uid)) {
            (*rec).victim_uid = uid;
            mark(rec, kill_valid::VICTIM_UID);
        }
        let signal = read_ptr(task, off!(task_signal));
        if let Some(adj) = read::<i16>(signal, off!(signal_oom_score_adj)) {
            (*rec).victim_oom_score_adj = i32::from(adj);
            mark(rec, kill_valid::VICTIM_OOM_SCORE_ADJ);
        }

        // The same counters __oom_kill_process() prints to dmesg.
        let mm = read_ptr(task, off!(task_mm));
        if let Some(pages) = read::<u64>(mm, off!(mm_total_vm)) {
            (*rec).total_vm_bytes = pages << page_shift();
            mark(rec, kill_valid::TOTAL_VM);
        }
        if let Some(bytes) = read::<i64>(mm, off!(mm_pgtables_bytes)) {
            (*rec).pgtables_bytes = bytes.max(0) as u64;
            mark(rec, kill_valid::PGTABLES);
        }
        if let Some(bytes) = read_mm_counter_bytes(mm, off!(mm_rss_anon)) {
            (*rec).rss_anon_bytes = bytes;
            mark(rec, kill_valid::RSS_ANON);
        }
        if let Some(bytes) = read_mm_counter_bytes(mm, off!(mm_rss_file)) {
            (*rec).rss_file_bytes = bytes;
            mark(rec, kill_valid::RSS_FILE);
        }
        if let Some(bytes) = read_mm_counter_bytes(mm, off!(mm_rss_shmem)) {
            (*rec).rss_shmem_bytes = bytes;
            mark(rec, kill_valid::RSS_SHMEM);
        }

        fill_pid_namespace(rec, task);

        let css_set = read_ptr(task, off!(task_cgroups));
        let memory_css = read_ptr(css_set, off!(css_set_memory_css));
        let cgroup = victim_cgroup(css_set, memory_css);
        if walk_cgroup_path(rec, cgroup_kn(cgroup)) {
            mark(rec, kill_valid::CGROUP_PATH);
        }
        if walk_memcg_levels(rec, memory_css) {
            mark(rec, kill_valid::MEMCG_LEVELS);
            if off!(memcg_oom_group).is_some() {
                mark(rec, kill_valid::MEMCG_OOM_GROUP);
            }
        }
    }
}

/// The victim process's pid inside its own pid namespace:
/// `group_leader->thread_pid->numbers[level].nr`. 1 means the victim was the
/// init of its namespace (a container's PID 1).
#[inline(always)]
fn fill_pid_namespace(rec: *mut KillRecord, task: *const u8) {
    /// MAX_PID_NS_LEVEL in include/linux/pid_namespace.h.
    const MAX_PID_NS_LEVEL: u32 = 32;
    let leader = read_ptr(task, off!(task_group_leader));
    let pid = read_ptr(leader, off!(task_thread_pid));
    let Some(level) = read::<u32>(pid, off!(pid_level)) else {
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
    let Some(ns_pid) = read::<i32>(pid, Some(numbers + level as usize * upid_size + nr)) else {
        return;
    };
    // SAFETY: `rec` is a live reservation.
    unsafe {
        (*rec).victim_ns_pid = ns_pid as u32;
        (*rec).victim_pid_ns_level = level;
    }
    mark(rec, kill_valid::VICTIM_NS_PID);
}

#[inline(always)]
fn fill_victim_from_tracepoint(ctx: &TracePointContext, rec: *mut KillRecord) {
    let layout = addr_of!(MARK_VICTIM_LAYOUT);
    let base = ctx.as_ptr() as *const u8;
    // SAFETY: `rec` is a live reservation; `base` is the tracepoint record,
    // read only through bpf_probe_read_kernel at tracefs-given offsets.
    unsafe {
        if let Some(pid) = read::<i32>(base, field(addr_of!((*layout).pid))) {
            (*rec).victim_tid = pid as u32;
            mark(rec, kill_valid::VICTIM_TID);
        }
        // __data_loc: low 16 bits are the string's offset in the record.
        if let Some(loc) = read::<u32>(base, field(addr_of!((*layout).comm))) {
            let src = base.wrapping_add((loc & 0xffff) as usize);
            let dst = addr_of!((*rec).victim_comm) as *mut u8;
            if bpf_probe_read_kernel_str(dst.cast(), COMM_LEN as u32, src.cast()) > 0 {
                mark(rec, kill_valid::VICTIM_COMM);
            }
        }
        let kb = |f| read::<u64>(base, field(f)).map(|kb| kb << 10);
        if let Some(bytes) = kb(addr_of!((*layout).total_vm)) {
            (*rec).total_vm_bytes = bytes;
            mark(rec, kill_valid::TOTAL_VM);
        }
        if let Some(bytes) = kb(addr_of!((*layout).anon_rss)) {
            (*rec).rss_anon_bytes = bytes;
            mark(rec, kill_valid::RSS_ANON);
        }
        if let Some(bytes) = kb(addr_of!((*layout).file_rss)) {
            (*rec).rss_file_bytes = bytes;
            mark(rec, kill_valid::RSS_FILE);
        }
        if let Some(bytes) = kb(addr_of!((*layout).shmem_rss)) {
            (*rec).rss_shmem_bytes = bytes;
            mark(rec, kill_valid::RSS_SHMEM);
        }
        if let Some(bytes) = kb(addr_of!((*layout).pgtables)) {
            (*rec).pgtables_bytes = bytes;
            mark(rec, kill_valid::PGTABLES);
        }
        if let Some(uid) = read::<u32>(base, field(addr_of!((*layout).uid))) {
            (*rec).victim_uid = uid;
            mark(rec, kill_valid::VICTIM_UID);
        }
        if let Some(adj) = read::<i16>(base, field(addr_of!((*layout).oom_score_adj))) {
            (*rec).victim_oom_score_adj = i32::from(adj);
            mark(rec, kill_valid::VICTIM_OOM_SCORE_ADJ);
        }
    }
}

/// Copies the context `oom_kill_process` left for this thread. An entry exists
/// only while that call runs (see `OomContext`), so it belongs to this kill.
#[inline(always)]
fn attach_oom_context(rec: *mut KillRecord) {
    // SAFETY: `rec` is a live reservation.
    unsafe {
        (*rec).oom_constraint = 0;
        (*rec).oom_chosen_tgid = 0;
        (*rec).oom_chosen_points = 0;
        (*rec).oom_totalpages = 0;
        (*rec).oom_memcg_id = 0;
        let Some(context) = OOM_CONTEXTS.get_ptr(bpf_get_current_pid_tgid()) else {
            return;
        };
        let context = *context;
        (*rec).oom_constraint = context.constraint;
        (*rec).oom_chosen_tgid = context.chosen_tgid;
        (*rec).oom_chosen_points = context.chosen_points;
        (*rec).oom_totalpages = context.totalpages;
        (*rec).oom_memcg_id = context.memcg_id;
    }
    mark(rec, kill_valid::OOM_CONTEXT);
}

/// The classic tracepoint gives no task, so the victim's cgroup is unknown;
/// the memcg whose limit fired still is, when `oom_kill_process` left its
/// kernfs node. Its path goes into the (otherwise unused) `cgroup_*` buffer.
/// Not done in the raw tracepoint program, which fills that buffer with the
/// victim's own path (and finds the fired memcg among its ancestors).
#[inline(always)]
fn walk_oom_memcg_path(rec: *mut KillRecord) {
    let Some(context) = OOM_CONTEXTS.get_ptr(bpf_get_current_pid_tgid()) else {
        return;
    };
    // SAFETY: a map value pointer, valid for this program run.
    let kn = unsafe { (*context).memcg_kn } as *const u8;
    if !kn.is_null() && walk_cgroup_path(rec, kn) {
        mark(rec, kill_valid::OOM_MEMCG_PATH);
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
        read::<u32>(oc, off!(oc_constraint)),
        read::<i64>(oc, off!(oc_chosen_points)),
        read::<u64>(oc, off!(oc_totalpages)),
    ) else {
        debug!(ctx, "oom_kill_process: could not read struct oom_control");
        return;
    };
    let chosen = read_ptr(oc, off!(oc_chosen));
    // oc->memcg is NULL for a global OOM.
    let memcg = read_ptr(oc, off!(oc_memcg));
    let (memcg_id, memcg_kn) = if memcg.is_null() {
        (0, 0)
    } else {
        let css = match off!(memcg_css) {
            Some(css) => memcg.wrapping_add(css),
            None => core::ptr::null(),
        };
        let cgroup = read_ptr(css, off!(css_cgroup));
        let kn = cgroup_kn(cgroup);
        (read::<u64>(kn, off!(kn_id)).unwrap_or(0), kn as u64)
    };
    let context = OomContext {
        constraint,
        chosen_tgid: read::<i32>(chosen, off!(task_tgid)).unwrap_or(0) as u32,
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
pub fn process_exit_raw(ctx: RawTracePointContext) -> i32 {
    on_exit(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn process_exit_tp(ctx: TracePointContext) -> u32 {
    on_exit(&ctx);
    0
}

/// Runs on every exit on the node, so the common case is one hash lookup
/// that misses. Only a registered victim gets further.
#[inline(always)]
fn on_exit<C: EbpfContext>(ctx: &C) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let by_tid = config_flag(addr_of!(CONFIG.exit_key_is_tid));
    let key = if by_tid {
        pid_tgid as u32
    } else {
        (pid_tgid >> 32) as u32
    };
    let Some(entry) = VICTIMS.get_ptr(key) else {
        return;
    };
    // SAFETY: a map value pointer from a successful lookup.
    let entry = unsafe { *entry };

    // current is the exiting task. do_exit() has already decremented
    // signal->live, so the last thread of the group reads 0.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let live = read::<i32>(read_ptr(task, off!(task_signal)), off!(signal_live));
    if !by_tid && live.is_some_and(|live| live != 0) {
        return; // not the last thread; the process is not gone yet
    }
    // Several threads can get here at once; whoever removes the entry reports.
    if VICTIMS.remove(key).is_err() {
        return;
    }
    let Some(mut slot) = EVENTS.reserve::<ExitRecord>(0) else {
        bump(counter::LOST_EXITS);
        debug!(
            ctx,
            "sched_process_exit: ring buffer full, exit record lost"
        );
        return;
    };
    let exit_code = read::<i32>(task, off!(task_exit_code));
    let mut valid = 0;
    if exit_code.is_some() {
        valid |= exit_valid::EXIT_CODE;
    }
    if live == Some(0) {
        valid |= exit_valid::GROUP_DEAD;
    }
    slot.write(ExitRecord {
        kind: RECORD_EXIT,
        valid,
        // SAFETY: a plain helper call.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        kill_seq: entry.kill_seq,
        tid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        exit_code: exit_code.unwrap_or(0),
        _pad: 0,
    });
    slot.submit(0);
}

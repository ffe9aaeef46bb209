//! Reads of kernel memory at offsets that userspace took from the running
//! kernel's BTF (`KERNEL_OFFSETS`). Every read goes through
//! `bpf_probe_read_kernel`, and every read of an absent field returns `None`
//! without touching memory: a field this kernel lacks is never read at a
//! guessed offset.

use core::ptr::{addr_of, addr_of_mut, read_volatile};

use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_probe_read_kernel,
    generated::{bpf_probe_read_kernel as bpf_probe_read_kernel_raw, bpf_probe_read_kernel_str},
};
use oomtrace_ebpf::{
    CGROUP_LEVELS, CGROUP_NAME_MAX, CGROUP_NAMES_LEN, CGROUP_PATH_MAX, Config, FAILCNT_UNTRACKED,
    FieldOffset, KernelOffsets, KillRecord, KillScratch, Known, MAX_CGROUP_DEPTH, MarkVictimLayout,
    MemcgEventCounts, VictimKey, cgroup_walk_end,
};

// Load-time globals, overridden by the collector (`EbpfLoader::override_global`).
// They are plain `static`s read field by field with volatile loads, rather than
// `aya_ebpf::Global<T>::load()`, which would copy the whole struct (300 bytes)
// onto the 512-byte eBPF stack. The volatile read is what keeps the compiler
// from folding in these all-absent defaults.
#[unsafe(no_mangle)]
pub static KERNEL_OFFSETS: KernelOffsets = KernelOffsets::ABSENT;

#[unsafe(no_mangle)]
pub static MARK_VICTIM_LAYOUT: MarkVictimLayout = MarkVictimLayout::ABSENT;

#[unsafe(no_mangle)]
pub static CONFIG: Config = Config {
    page_shift: 12,
    cgroup_v2_memory: 0,
    victim_key: VictimKey::Tgid as u32,
    _pad: 0,
};

/// Reads one field descriptor of a load-time global.
#[inline(always)]
pub fn field(f: *const FieldOffset) -> Option<usize> {
    // SAFETY: `f` points into one of the statics above.
    let f = unsafe { read_volatile(f) };
    if f.present != 0 {
        Some(f.offset as usize)
    } else {
        None
    }
}

/// The offset of kernel field `$name` (see oomtrace-ebpf/src/fields.rs), if
/// this kernel has it.
macro_rules! off {
    ($name:ident) => {
        $crate::kernel::field(core::ptr::addr_of!($crate::kernel::KERNEL_OFFSETS.$name))
    };
}
pub(crate) use off;

/// Reads kernel field `$name` of the struct at `$base`, as the type the
/// field table declares for it.
macro_rules! read_field {
    ($base:expr, $name:ident) => {
        $crate::kernel::read::<oomtrace_ebpf::kernel_field_type::$name>($base, off!($name))
    };
}
pub(crate) use read_field;

/// Reads pointer field `$name` of the struct at `$base`; null when absent or
/// unreadable.
macro_rules! read_ptr_field {
    ($base:expr, $name:ident) => {
        read_field!($base, $name).unwrap_or(core::ptr::null())
    };
}
pub(crate) use read_ptr_field;

#[inline(always)]
pub fn config_flag(f: *const u32) -> bool {
    // SAFETY: `f` points into `CONFIG`.
    unsafe { read_volatile(f) != 0 }
}

#[inline(always)]
pub fn page_shift() -> u32 {
    // SAFETY: reads the `CONFIG` static.
    unsafe { read_volatile(addr_of!(CONFIG.page_shift)) }
}

#[inline(always)]
pub fn victim_key_rule() -> VictimKey {
    // SAFETY: reads the `CONFIG` static.
    if unsafe { read_volatile(addr_of!(CONFIG.victim_key)) } == VictimKey::Tid as u32 {
        VictimKey::Tid
    } else {
        VictimKey::Tgid
    }
}

/// Reads a `T` at `base + offset`, if the field exists on this kernel and the
/// base pointer is not null.
#[inline(always)]
pub fn read<T>(base: *const u8, offset: Option<usize>) -> Option<T> {
    let offset = offset?;
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copes with any address; a bad one gives Err.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset).cast::<T>()).ok() }
}

/// A memory counter as get_mm_counter() returns it, in bytes: never
/// negative (per-CPU batching can leave the shared count briefly below zero).
#[inline(always)]
pub fn mm_counter_bytes(pages: Option<i64>) -> Option<u64> {
    Some((pages?.max(0) as u64) << page_shift())
}

/// Zeroes a whole record in one helper call: bpf_probe_read_kernel zeroes
/// its destination when the source cannot be read
/// (bpf_probe_read_kernel_common() in kernel/trace/bpf_trace.c), and
/// address 0 never can be. Then every `Known` starts unknown and nothing of
/// the previous record built in the same scratch buffer crosses over. (The
/// names after a [`KillRecord`] need no zeroing: only the bytes this kill's
/// walk wrote are sent.)
#[inline(always)]
pub fn zero<T>(rec: *mut T) {
    // SAFETY: `rec` points to size_of::<T>() writable bytes of a map value;
    // the helper writes exactly that many.
    unsafe {
        bpf_probe_read_kernel_raw(
            rec.cast(),
            core::mem::size_of::<T>() as u32,
            core::ptr::null(),
        );
    }
}

/// Sets a record's `Known` field.
#[inline(always)]
pub fn set<T: Copy + Default>(field: *mut Known<T>, value: Option<T>) {
    if let Some(value) = value {
        // SAFETY: `field` points into this CPU's scratch record.
        unsafe {
            (*field).value = value;
            (*field).known = 1;
        }
    }
}

/// The kernfs node of a cgroup: its `kn_id` is what /proc/PID/cgroup's path
/// resolves to, and what `name_to_handle_at()` returns for its directory.
#[inline(always)]
pub fn cgroup_kn(cgroup: *const u8) -> *const u8 {
    read_ptr_field!(cgroup, cgroup_kn)
}

/// The victim's own cgroup: on cgroup v2 the task's default-hierarchy cgroup
/// (`css_set->dfl_cgrp`, which /proc/PID/cgroup shows even where the memory
/// controller is enabled higher up); on cgroup v1 the memory css's cgroup.
#[inline(always)]
pub fn victim_cgroup(css_set: *const u8, memory_css: *const u8) -> *const u8 {
    if config_flag(addr_of!(CONFIG.cgroup_v2_memory)) {
        read_ptr_field!(css_set, css_set_dfl_cgrp)
    } else {
        read_ptr_field!(memory_css, css_cgroup)
    }
}

/// Reads a `T` at `base + offset`, giving zero when the read faults (the
/// helper zeroes its destination on failure). No branch: the cgroup walks
/// below run up to 33 levels, and a branch per read there multiplies the
/// paths the verifier has to explore.
#[inline(always)]
fn read_or_zero<T: Copy>(base: *const u8, offset: usize) -> T {
    let mut value = core::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: the helper writes at most size_of::<T>() bytes into `value`,
    // and any bit pattern is valid for the integer and pointer types used.
    unsafe {
        bpf_probe_read_kernel_raw(
            value.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            base.wrapping_add(offset).cast(),
        );
        value.assume_init()
    }
}

/// `value & (CGROUP_NAMES_LEN - 1)`, done by an instruction the compiler
/// cannot drop: it drops a mask it can prove changes nothing (after a
/// bounds check), but older verifiers (6.1) do not carry a bound learned
/// from a branch over to a copy of the value reloaded from the stack, and
/// then refuse the access ("R1 min value is negative") without the mask.
#[inline(always)]
pub fn names_offset(value: usize) -> usize {
    let mut value = value as u64;
    // SAFETY: one ALU instruction on a register.
    unsafe {
        core::arch::asm!(
            "{v} &= {mask}",
            v = inout(reg) value,
            mask = const CGROUP_NAMES_LEN - 1,
        );
    }
    value as usize
}

/// Walks kernfs names from `kn` up to (not including) the hierarchy's root,
/// inside the kernel at the moment of the kill: container runtimes remove the
/// cgroup right after the container dies, so a path resolved later from
/// userspace is often gone. Ids land leaf first in `rec.cgroup_ids`, names
/// leaf first, NUL-terminated, in `scratch.names`, and
/// `rec.cgroup_walk_end` says how it ended: a path is reported only when it
/// reached the root within [`MAX_CGROUP_DEPTH`] levels and
/// [`CGROUP_PATH_MAX`] bytes (kernfs_path_from_node() builds the same path
/// from the same `name`/`parent` links). Returns true when it did.
#[inline(always)]
pub fn walk_cgroup_path(scratch: *mut KillScratch, mut kn: *const u8) -> bool {
    use oomtrace_ebpf::kernel_field_type as ty;
    let (Some(parent_at), Some(name_at), Some(id_at)) =
        (off!(kn_parent), off!(kn_name), off!(kn_id))
    else {
        return false;
    };
    if kn.is_null() {
        return false;
    }
    let mut used: usize = 0;
    let mut depth: usize = 0;
    let mut end = cgroup_walk_end::UNREAD;
    // SAFETY: `scratch` is this CPU's scratch value, its record zeroed; every
    // index is bounded by CGROUP_LEVELS or masked into the names area, whose
    // slack covers one full name.
    unsafe {
        let rec = addr_of_mut!((*scratch).rec);
        let names = addr_of_mut!((*scratch).names) as *mut u8;
        let ids = addr_of_mut!((*rec).cgroup_ids) as *mut u64;
        for level in 0..CGROUP_LEVELS {
            let id: ty::kn_id = read_or_zero(kn, id_at);
            ids.add(level).write(id);
            let parent: ty::kn_parent = read_or_zero(kn, parent_at);
            if parent.is_null() {
                // `kn` is the hierarchy's root (its id stays in this slot).
                end = cgroup_walk_end::ROOT;
                break;
            }
            if level == MAX_CGROUP_DEPTH {
                // The last slot is the root's, and this is not the root.
                end = cgroup_walk_end::TOO_DEEP;
                break;
            }
            if used > CGROUP_PATH_MAX {
                end = cgroup_walk_end::TOO_LONG;
                break;
            }
            // The mask is a no-op at run time (used < CGROUP_NAMES_LEN, a power
            // of two) but lets the verifier prove the write stays in bounds.
            let start = names_offset(used);
            let name: ty::kn_name = read_or_zero(kn, name_at);
            let copied = bpf_probe_read_kernel_str(
                names.add(start).cast(),
                CGROUP_NAME_MAX as u32,
                name.cast(),
            );
            if copied <= 0 {
                break;
            }
            used = start + copied as usize;
            depth = level + 1;
            kn = parent;
        }
        // The last name may have taken the path past its limit.
        if end == cgroup_walk_end::ROOT && used > CGROUP_PATH_MAX {
            end = cgroup_walk_end::TOO_LONG;
        }
        if end != cgroup_walk_end::ROOT {
            // Nothing of a path that is not reported is sent.
            used = 0;
        }
        (*rec).cgroup_walk_end = end;
        (*rec).cgroup_depth = depth as u32;
        (*rec).cgroup_names_len = used as u32;
    }
    end == cgroup_walk_end::ROOT
}

/// Walks the memory cgroups from the victim's memcg up to the root memcg,
/// recording each one's kernfs id, `memory.usage` and `memory.max` (pages) as
/// they are at the kill: the limit that fired is the one at its max.
/// Returns true when the walk reached the root within [`CGROUP_LEVELS`]
/// memcgs (the root included), the same depth as the path walk.
#[inline(always)]
pub fn walk_memcg_levels(rec: *mut KillRecord, mut css: *const u8) -> bool {
    use oomtrace_ebpf::kernel_field_type as ty;
    let (Some(parent_at), Some(cgroup_at), Some(kn_at), Some(id_at), Some(usage_at), Some(max_at)) = (
        off!(css_parent),
        off!(css_cgroup),
        off!(cgroup_kn),
        off!(kn_id),
        off!(memcg_usage),
        off!(memcg_max),
    ) else {
        return false;
    };
    if css.is_null() {
        return false;
    }
    // Optional: when BTF lacks it the byte read is meaningless, and stays
    // unknown in the record. Read unconditionally to stay branch-free.
    let group_at = off!(memcg_oom_group);
    let group_read_at = group_at.unwrap_or(0);
    // The counters, each optional in the same way (see `memcg_counter`).
    let counters = MemcgCounterOffsets::of_this_kernel();
    let mut depth: usize = 0;
    let mut complete = false;
    // SAFETY: as in walk_cgroup_path.
    unsafe {
        let groups = addr_of_mut!((*rec).memcg_oom_group) as *mut u8;
        let ids = addr_of_mut!((*rec).memcg_ids) as *mut u64;
        let usages = addr_of_mut!((*rec).memcg_usage_pages) as *mut u64;
        let maxes = addr_of_mut!((*rec).memcg_max_pages) as *mut u64;
        for level in 0..CGROUP_LEVELS {
            let cgroup: ty::css_cgroup = read_or_zero(css, cgroup_at);
            let kn: ty::cgroup_kn = read_or_zero(cgroup, kn_at);
            ids.add(level).write(read_or_zero::<ty::kn_id>(kn, id_at));
            let usage: ty::memcg_usage = read_or_zero(css, usage_at);
            usages.add(level).write(usage.max(0) as u64);
            maxes
                .add(level)
                .write(read_or_zero::<ty::memcg_max>(css, max_at));
            groups
                .add(level)
                .write(read_or_zero::<ty::memcg_oom_group>(css, group_read_at));
            counters.read_level(rec, level, css);
            depth = level + 1;
            css = read_or_zero(css, parent_at);
            if css.is_null() {
                // That level was the root memcg, which has no parent.
                complete = true;
                break;
            }
        }
        (*rec).memcg_depth = depth as u32;
        if complete && group_at.is_some() {
            (*rec).memcg_oom_group_known = 1;
        }
        if complete {
            (*rec).memcg_counters_known = counters.known;
        }
    }
    complete
}

/// Where the memcg walk's counters are on this kernel; an absent one is
/// read at offset 0 (harmless, and branch-free) and its bit stays unset.
struct MemcgCounterOffsets {
    known: u32,
    failcnt: usize,
    track_failcnt: Option<usize>,
    watermark: usize,
    events: [usize; 5],
}

impl MemcgCounterOffsets {
    #[inline(always)]
    fn of_this_kernel() -> Self {
        use oomtrace_ebpf::memcg_counter as bit;
        let mut known = 0;
        let mut at = |offset: Option<usize>, flag: u32| match offset {
            Some(o) => {
                known |= flag;
                o
            }
            None => 0,
        };
        let failcnt = at(off!(memcg_failcnt), bit::FAILCNT);
        let watermark = at(off!(memcg_watermark), bit::WATERMARK);
        let events = [
            at(off!(memcg_event_high), bit::EVENT_HIGH),
            at(off!(memcg_event_max), bit::EVENT_MAX),
            at(off!(memcg_event_oom), bit::EVENT_OOM),
            at(off!(memcg_event_oom_kill), bit::EVENT_OOM_KILL),
            at(off!(memcg_event_oom_group_kill), bit::EVENT_OOM_GROUP_KILL),
        ];
        Self {
            known,
            failcnt,
            track_failcnt: off!(memcg_track_failcnt),
            watermark,
            events,
        }
    }

    /// Reads one level's counters from its memcg (`css`, the memcg's
    /// embedded css: the offsets are relative to it) into `rec`.
    ///
    /// SAFETY: `rec` is this CPU's scratch record and `level` is below
    /// `CGROUP_LEVELS`.
    #[inline(always)]
    unsafe fn read_level(&self, rec: *mut KillRecord, level: usize, css: *const u8) {
        use oomtrace_ebpf::kernel_field_type as ty;
        // With track_failcnt, a v2 memcg's page counter leaves failcnt at 0
        // (page_counter::track_failcnt false): unknown, not "never failed".
        let tracked = match self.track_failcnt {
            Some(at) => read_or_zero::<ty::memcg_track_failcnt>(css, at) != 0,
            None => true,
        };
        let failcnt = if tracked {
            read_or_zero::<ty::memcg_failcnt>(css, self.failcnt)
        } else {
            FAILCNT_UNTRACKED
        };
        let e = &self.events;
        let events = MemcgEventCounts {
            high: read_or_zero::<ty::memcg_event_high>(css, e[0]).max(0) as u64,
            max: read_or_zero::<ty::memcg_event_max>(css, e[1]).max(0) as u64,
            oom: read_or_zero::<ty::memcg_event_oom>(css, e[2]).max(0) as u64,
            oom_kill: read_or_zero::<ty::memcg_event_oom_kill>(css, e[3]).max(0) as u64,
            oom_group_kill: read_or_zero::<ty::memcg_event_oom_group_kill>(css, e[4]).max(0) as u64,
        };
        // SAFETY: per this function's contract.
        unsafe {
            (addr_of_mut!((*rec).memcg_failcnt) as *mut u64)
                .add(level)
                .write(failcnt);
            (addr_of_mut!((*rec).memcg_watermark_pages) as *mut u64)
                .add(level)
                .write(read_or_zero::<ty::memcg_watermark>(css, self.watermark));
            (addr_of_mut!((*rec).memcg_events) as *mut MemcgEventCounts)
                .add(level)
                .write(events);
        }
    }
}

/// The trigger's side of the same ancestry: the kernfs ids of `current`'s
/// memory cgroup (its css_set's memory css, on cgroup v1 and v2 alike) and
/// of every ancestor up to the root memcg, leaf first, in
/// `rec.trigger_memcg_ids`. With the victim's levels it tells which memcgs
/// are ancestors of both: only those can be the one whose limit fired.
#[inline(always)]
pub fn walk_trigger_memcg(rec: *mut KillRecord) {
    use oomtrace_ebpf::kernel_field_type as ty;
    let (Some(parent_at), Some(cgroup_at), Some(kn_at), Some(id_at)) = (
        off!(css_parent),
        off!(css_cgroup),
        off!(cgroup_kn),
        off!(kn_id),
    ) else {
        return;
    };
    // SAFETY: a plain helper call.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let css_set = read_ptr_field!(task, task_cgroups);
    let mut css = read_ptr_field!(css_set, css_set_memory_css);
    if css.is_null() {
        return;
    }
    let mut depth: usize = 0;
    let mut complete = false;
    // SAFETY: as in walk_cgroup_path.
    unsafe {
        let ids = addr_of_mut!((*rec).trigger_memcg_ids) as *mut u64;
        for level in 0..CGROUP_LEVELS {
            let cgroup: ty::css_cgroup = read_or_zero(css, cgroup_at);
            let kn: ty::cgroup_kn = read_or_zero(cgroup, kn_at);
            ids.add(level).write(read_or_zero::<ty::kn_id>(kn, id_at));
            depth = level + 1;
            css = read_or_zero(css, parent_at);
            if css.is_null() {
                complete = true;
                break;
            }
        }
        (*rec).trigger_memcg_depth = depth as u32;
        (*rec).trigger_memcg_complete = complete as u32;
    }
}

//! The kernel↔user contract of oomtrace: every type that crosses the ring
//! buffer, a map, or a load-time global is defined here, once.
//!
//! The eBPF programs (`src/main.rs`, built for `bpfel-unknown-none`) and the
//! collector (`oomtrace`, built for the host with the `user` feature) both
//! compile this file, so the two sides cannot drift apart. Every type is
//! `#[repr(C)]` with explicit padding, so its layout is the same on both.
//!
//! Units: sizes leave the kernel in bytes, times in CLOCK_BOOTTIME nanoseconds
//! (`bpf_ktime_get_boot_ns`). A field whose bit in `valid` is clear was not
//! read (this kernel or attach mode cannot give it, or the read failed), and
//! the collector writes it as `null`.
#![no_std]

/// `TASK_COMM_LEN` in include/linux/sched.h.
pub const COMM_LEN: usize = 16;
/// How many cgroup levels (leaf first) the programs walk before giving up.
/// Kubernetes paths are 4–6 levels deep; deeper ones are flagged truncated.
pub const MAX_CGROUP_DEPTH: usize = 16;
/// A kernfs name is at most `NAME_MAX` (255) bytes plus its NUL.
pub const CGROUP_NAME_MAX: usize = 256;
/// Bytes of cgroup names a record can carry (all levels, NUL-separated).
pub const CGROUP_NAMES_LEN: usize = 1024;
/// The names buffer has one name's worth of slack past `CGROUP_NAMES_LEN`, so
/// that the verifier can prove every `bpf_probe_read_kernel_str` stays inside.
pub const CGROUP_NAMES_SIZE: usize = CGROUP_NAMES_LEN + CGROUP_NAME_MAX;

/// Record kinds: the first `u32` of every ring-buffer record.
pub const RECORD_KILL: u32 = 1;
pub const RECORD_EXIT: u32 = 2;

/// Which program produced a [`KillRecord`].
pub const SOURCE_RAW_TRACEPOINT: u32 = 1;
pub const SOURCE_TRACEPOINT: u32 = 2;

/// Bits of [`KillRecord::valid`].
pub mod kill_valid {
    pub const VICTIM_TID: u64 = 1 << 0;
    pub const VICTIM_TGID: u64 = 1 << 1;
    pub const VICTIM_COMM: u64 = 1 << 2;
    pub const VICTIM_UID: u64 = 1 << 3;
    pub const VICTIM_OOM_SCORE_ADJ: u64 = 1 << 4;
    pub const TOTAL_VM: u64 = 1 << 5;
    pub const RSS_ANON: u64 = 1 << 6;
    pub const RSS_FILE: u64 = 1 << 7;
    pub const RSS_SHMEM: u64 = 1 << 8;
    pub const PGTABLES: u64 = 1 << 9;
    /// `victim_ns_pid` and `victim_pid_ns_level` were read from the
    /// thread-group leader's `struct pid`.
    pub const VICTIM_NS_PID: u64 = 1 << 10;
    /// The cgroup walk reached the root: `cgroup_*` is the complete path.
    pub const CGROUP_PATH: u64 = 1 << 11;
    /// The memcg walk reached the root: `memcg_*` covers every ancestor.
    pub const MEMCG_LEVELS: u64 = 1 << 12;
    /// `oom_*` came from `oom_kill_process` (fentry or kprobe).
    /// `oom_memcg_id` is 0 there for a global OOM.
    pub const OOM_CONTEXT: u64 = 1 << 13;
    pub const TRIGGER_COMM: u64 = 1 << 14;
    /// The victim could not be added to the exit-join map (it was full), so
    /// no exit will be reported for it.
    pub const EXIT_UNTRACKED: u64 = 1 << 15;
    /// `cgroup_*` holds the path of the memcg whose limit fired
    /// (`oom_memcg_id`), not the victim's: set by the classic tracepoint,
    /// which does not know the victim's task, when `oom_kill_process` is
    /// hooked. Never set together with `CGROUP_PATH`.
    pub const OOM_MEMCG_PATH: u64 = 1 << 16;
    /// `memcg_oom_group` was read (this kernel's BTF has
    /// `mem_cgroup::oom_group`).
    pub const MEMCG_OOM_GROUP: u64 = 1 << 17;
}

/// Bits of [`ExitRecord::valid`].
pub mod exit_valid {
    /// `exit_code` was read from `task_struct::exit_code`.
    pub const EXIT_CODE: u32 = 1 << 0;
    /// The exiting thread was the last of its thread group.
    pub const GROUP_DEAD: u32 = 1 << 1;
}

/// Indexes into the `COUNTERS` array map.
pub mod counter {
    /// Kill records the ring buffer had no room for.
    pub const LOST_KILLS: u32 = 0;
    /// Exit records the ring buffer had no room for.
    pub const LOST_EXITS: u32 = 1;
    /// Victims the `VICTIMS` map had no room for.
    pub const VICTIMS_FULL: u32 = 2;
    /// The next kill sequence number.
    pub const KILL_SEQ: u32 = 3;
    pub const LEN: u32 = 4;
}

/// A byte offset read from the running kernel's BTF. `present == 0` means the
/// field does not exist on this kernel: the program then skips the read and
/// leaves the record's `valid` bit clear, instead of reading a wrong offset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldOffset {
    pub offset: u32,
    pub present: u32,
}

impl FieldOffset {
    pub const ABSENT: Self = Self {
        offset: 0,
        present: 0,
    };
    pub const fn at(offset: u32) -> Self {
        Self { offset, present: 1 }
    }
    pub const fn is_present(&self) -> bool {
        self.present != 0
    }
}

/// Offsets of kernel struct fields, computed in userspace from the running
/// kernel's BTF and handed to the programs as the `KERNEL_OFFSETS` global.
/// Rust eBPF has no CO-RE relocations yet; this is the replacement.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    // struct task_struct
    pub task_pid: FieldOffset,
    pub task_tgid: FieldOffset,
    pub task_comm: FieldOffset,
    pub task_mm: FieldOffset,
    pub task_signal: FieldOffset,
    pub task_real_cred: FieldOffset,
    pub task_cgroups: FieldOffset,
    pub task_exit_code: FieldOffset,
    pub task_group_leader: FieldOffset,
    pub task_thread_pid: FieldOffset,
    // struct signal_struct
    pub signal_oom_score_adj: FieldOffset,
    pub signal_live: FieldOffset,
    // struct cred
    pub cred_uid: FieldOffset,
    // struct mm_struct. The RSS offsets point at the counter value that
    // get_mm_counter() reads: `rss_stat[i].count` (percpu_counter, 6.2+) or
    // `rss_stat.count[i]` (atomic_long_t, before 6.2).
    pub mm_total_vm: FieldOffset,
    pub mm_pgtables_bytes: FieldOffset,
    pub mm_rss_file: FieldOffset,
    pub mm_rss_anon: FieldOffset,
    pub mm_rss_shmem: FieldOffset,
    // struct css_set: `subsys[memory_cgrp_id]`, and the default-hierarchy cgroup.
    pub css_set_memory_css: FieldOffset,
    pub css_set_dfl_cgrp: FieldOffset,
    // struct cgroup_subsys_state
    pub css_cgroup: FieldOffset,
    pub css_parent: FieldOffset,
    // struct cgroup
    pub cgroup_kn: FieldOffset,
    // struct kernfs_node (`parent` became `__parent` in 6.15)
    pub kn_name: FieldOffset,
    pub kn_parent: FieldOffset,
    pub kn_id: FieldOffset,
    // struct mem_cgroup: where its `css` sits (oom_control holds a mem_cgroup
    // pointer), and usage/max relative to that css (css_set holds css pointers).
    pub memcg_css: FieldOffset,
    pub memcg_usage: FieldOffset,
    pub memcg_max: FieldOffset,
    /// `mem_cgroup::oom_group` (bool, `memory.oom.group`), relative to the css.
    pub memcg_oom_group: FieldOffset,
    // struct pid / struct upid
    pub pid_level: FieldOffset,
    pub pid_numbers: FieldOffset,
    pub upid_nr: FieldOffset,
    /// `sizeof(struct upid)`, carried as an offset so that it has a present flag.
    pub upid_size: FieldOffset,
    // struct oom_control
    pub oc_memcg: FieldOffset,
    pub oc_totalpages: FieldOffset,
    pub oc_chosen: FieldOffset,
    pub oc_chosen_points: FieldOffset,
    pub oc_constraint: FieldOffset,
}

/// Field offsets of the classic `oom:mark_victim` tracepoint record, read at
/// run time from tracefs (`events/oom/mark_victim/format`). The old format
/// (4.13–6.8) has only `pid`; 6.9 added the rest (sizes in kB there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkVictimLayout {
    pub pid: FieldOffset,
    /// A `__data_loc char[]`: a u32 whose low 16 bits are the string's
    /// offset in the record and high 16 bits its length.
    pub comm: FieldOffset,
    pub total_vm: FieldOffset,
    pub anon_rss: FieldOffset,
    pub file_rss: FieldOffset,
    pub shmem_rss: FieldOffset,
    pub uid: FieldOffset,
    pub pgtables: FieldOffset,
    pub oom_score_adj: FieldOffset,
}

/// Run-time switches, the `CONFIG` global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// log2 of the page size, for pages→bytes.
    pub page_shift: u32,
    /// The memory controller is on the cgroup2 (default) hierarchy, so the
    /// victim's cgroup is `css_set->dfl_cgrp`; on cgroup v1 it is the memory
    /// css's own cgroup.
    pub cgroup_v2_memory: u32,
    /// The exit hook keys `VICTIMS` by thread id (classic tracepoint mode,
    /// which knows only the victim thread's pid) instead of by tgid.
    pub exit_key_is_tid: u32,
    pub _pad: u32,
}

/// Value of the `VICTIMS` hash map, keyed by the victim's tgid (or tid, see
/// [`Config::exit_key_is_tid`]): lets the exit hook name the kill it closes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VictimEntry {
    pub kill_seq: u64,
    pub kill_boot_ns: u64,
}

/// What `oom_kill_process(struct oom_control *oc, const char *message)` knows
/// and `mark_victim` does not. Stored in `OOM_CONTEXTS`, keyed by the killing
/// thread's pid_tgid, by the entry probe (fentry or kprobe) and removed by the
/// return probe (fexit or kretprobe), which the collector only ever attaches
/// as a pair. So every `mark_victim` that finds an entry runs inside that very
/// call: the chosen victim, and with `memory.oom.group` the rest of its group.
/// (Calls are serialised by `oom_lock`, so kretprobe's maxactive never bites.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomContext {
    /// `enum oom_constraint`: 0 none (global), 1 cpuset, 2 mempolicy, 3 memcg.
    pub constraint: u32,
    /// Thread-group id of `oc->chosen`.
    pub chosen_tgid: u32,
    pub chosen_points: i64,
    pub totalpages: u64,
    /// kernfs id of `oc->memcg`'s cgroup; 0 for a global OOM.
    pub memcg_id: u64,
    /// Address of that cgroup's `struct kernfs_node` (0 for a global OOM),
    /// for `mark_victim` to walk its path. It is only dereferenced (with
    /// bpf_probe_read_kernel) inside the same `oom_kill_process` call, while
    /// `oc->memcg` is pinned by the OOM in progress.
    pub memcg_kn: u64,
}

/// One OOM kill, as `mark_victim` saw it. Built in place in the ring buffer
/// (it is far larger than the 512-byte eBPF stack).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KillRecord {
    pub kind: u32,
    pub source: u32,
    pub seq: u64,
    pub boot_ns: u64,
    /// `kill_valid` bits.
    pub valid: u64,

    pub victim_tid: u32,
    pub victim_tgid: u32,
    pub victim_uid: u32,
    /// The victim's tgid as seen inside its own pid namespace.
    pub victim_ns_pid: u32,
    pub victim_pid_ns_level: u32,
    pub victim_oom_score_adj: i32,
    pub victim_comm: [u8; COMM_LEN],
    pub total_vm_bytes: u64,
    pub rss_anon_bytes: u64,
    pub rss_file_bytes: u64,
    pub rss_shmem_bytes: u64,
    pub pgtables_bytes: u64,

    pub trigger_tid: u32,
    pub trigger_tgid: u32,
    pub trigger_comm: [u8; COMM_LEN],

    pub oom_constraint: u32,
    pub oom_chosen_tgid: u32,
    pub oom_chosen_points: i64,
    pub oom_totalpages: u64,
    pub oom_memcg_id: u64,

    /// The victim's cgroup, leaf first: `cgroup_depth` kernfs ids, and as many
    /// NUL-terminated names packed into `cgroup_names` (`cgroup_names_len`
    /// bytes used). The root cgroup has no name; when the walk reached it
    /// (`kill_valid::CGROUP_PATH`) and `cgroup_depth < MAX_CGROUP_DEPTH`, its
    /// id is `cgroup_ids[cgroup_depth]`.
    pub cgroup_depth: u32,
    pub cgroup_names_len: u32,
    pub cgroup_ids: [u64; MAX_CGROUP_DEPTH],
    pub cgroup_names: [u8; CGROUP_NAMES_SIZE],

    /// The victim's memory cgroup and its ancestors, leaf first, up to and
    /// including the root memcg: kernfs id, `memory.usage` and `memory.max`
    /// (pages) of each, read at the moment of the kill.
    pub memcg_depth: u32,
    pub _pad: u32,
    pub memcg_ids: [u64; MAX_CGROUP_DEPTH],
    pub memcg_usage_pages: [u64; MAX_CGROUP_DEPTH],
    pub memcg_max_pages: [u64; MAX_CGROUP_DEPTH],
    /// `memory.oom.group` of each level (1 = set): with it, the kernel kills
    /// every task under the highest such memcg between the victim's and the
    /// one whose limit fired (mem_cgroup_get_oom_group()).
    pub memcg_oom_group: [u8; MAX_CGROUP_DEPTH],
}

/// A victim's exit, from `sched_process_exit`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitRecord {
    pub kind: u32,
    /// `exit_valid` bits.
    pub valid: u32,
    pub boot_ns: u64,
    /// The `seq` of the [`KillRecord`] this exit closes.
    pub kill_seq: u64,
    pub tid: u32,
    pub tgid: u32,
    /// `task_struct::exit_code` as do_exit() set it: the wait status
    /// (signal number in bits 0–6, exit status in bits 8–15).
    pub exit_code: i32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are #[repr(C)], contain only integers and arrays of
    // integers, and have no implicit padding (see the layout tests below).
    unsafe impl aya::Pod for super::FieldOffset {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::MarkVictimLayout {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::VictimEntry {}
    unsafe impl aya::Pod for super::OomContext {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    /// No implicit padding: the size is exactly the sum of the fields, so both
    /// compilers agree on every offset and no uninitialised byte crosses over.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FieldOffset>(), 8);
        assert_eq!(size_of::<KernelOffsets>(), 39 * 8);
        assert_eq!(size_of::<MarkVictimLayout>(), 9 * 8);
        assert_eq!(size_of::<Config>(), 16);
        assert_eq!(size_of::<VictimEntry>(), 16);
        assert_eq!(size_of::<OomContext>(), 40);
        assert_eq!(size_of::<ExitRecord>(), 40);
        let kill_fixed = 4 + 4 + 8 + 8 + 8 // header
            + 6 * 4 + COMM_LEN + 5 * 8 // victim
            + 2 * 4 + COMM_LEN // trigger
            + 4 + 4 + 8 + 8 + 8 // oom context
            + 4 + 4 + 8 * MAX_CGROUP_DEPTH + CGROUP_NAMES_SIZE
            + 4 + 4 + 3 * 8 * MAX_CGROUP_DEPTH
            + MAX_CGROUP_DEPTH;
        assert_eq!(size_of::<KillRecord>(), kill_fixed);
        assert!(align_of::<KillRecord>() <= 8, "ring buffer aligns to 8");
    }
}

//! The kernel↔user contract of oomtrace: every type that crosses the ring
//! buffer, a map, or a load-time global is defined here, once.
//!
//! The eBPF programs (`src/main.rs`, built for `bpfel-unknown-none`) and the
//! collector (`oomtrace`, built for the host with the `user` feature) both
//! compile this file, so the two sides cannot drift apart. Every type is
//! `#[repr(C)]` with explicit padding, so its layout is the same on both.
//!
//! Units: sizes leave the kernel in bytes, times in CLOCK_BOOTTIME nanoseconds
//! (`bpf_ktime_get_boot_ns`). A value the programs could not read (this
//! kernel lacks the field, or the read failed) is a [`Known`] with `known`
//! clear, and the collector writes it as `null`.
#![no_std]

mod fields;
mod signal_abi;

pub use fields::{Anchor, FieldRule, KernelField, KernelOffsets, KernelPtr, kernel_field_type};
pub use signal_abi::{KernelSigkill, OomMm, SignalSent, SigtermSeen, signal};

/// `TASK_COMM_LEN` in include/linux/sched.h.
pub const COMM_LEN: usize = 16;
/// How many cgroup levels below the root the programs walk: a path of more
/// components (a deeper cgroup) is not reported (null), never cut short.
/// Both walks, the cgroup path and the memcg levels, stop at the same depth;
/// each array holds this many levels plus the root's. Kubernetes paths are
/// 4–6 levels deep; systemd nests slices a few levels more.
pub const MAX_CGROUP_DEPTH: usize = 32;
/// Slots of every per-level array: [`MAX_CGROUP_DEPTH`] levels and the root.
pub const CGROUP_LEVELS: usize = MAX_CGROUP_DEPTH + 1;
/// A kernfs name is at most `NAME_MAX` (255) bytes plus its NUL.
pub const CGROUP_NAME_MAX: usize = 256;
/// The longest cgroup path a record carries: `PATH_MAX` (4,096) less its
/// NUL, the longest path /proc/PID/cgroup shows whole (proc_cgroup_show()
/// formats into PATH_MAX bytes: 6.x kernels cut a longer path there, older
/// ones fail with ENAMETOOLONG). A longer path is null, never cut short.
/// The names of a path take exactly its length: each level's name and a NUL
/// (where the path has a `/` before it).
pub const CGROUP_PATH_MAX: usize = 4095;
/// The names area the walk writes into: one byte more than
/// [`CGROUP_PATH_MAX`], a power of two, so that masking an offset with
/// `CGROUP_NAMES_LEN - 1` proves to the verifier that it is in bounds.
pub const CGROUP_NAMES_LEN: usize = CGROUP_PATH_MAX + 1;
/// The programs' names buffer ([`KillScratch::names`]) has one name's worth
/// of slack past `CGROUP_NAMES_LEN`, so that the verifier can prove every
/// `bpf_probe_read_kernel_str` stays inside.
pub const CGROUP_NAMES_SIZE: usize = CGROUP_NAMES_LEN + CGROUP_NAME_MAX;
/// Bytes of a kill record in the ring buffer: the fixed [`KillRecord`] and
/// then `cgroup_names_len` bytes of names. A record with no path is
/// `KILL_RECORD_MIN` bytes, the largest is `KILL_RECORD_MAX`.
pub const KILL_RECORD_MIN: usize = core::mem::size_of::<KillRecord>();
pub const KILL_RECORD_MAX: usize = KILL_RECORD_MIN + CGROUP_PATH_MAX;

/// The share of the ring buffer a signal kill never takes: 1/4 of it is
/// kept free for OOM kills and exits, so that a burst of SIGKILLs (a
/// process group of thousands killed at once) cannot crowd out an OOM kill
/// of the same moment.
pub const SIGNAL_RESERVE_DIVISOR: u64 = 4;

/// Record kinds: the first `u32` of every ring-buffer record.
pub const RECORD_KILL: u32 = 1;
pub const RECORD_EXIT: u32 = 2;

/// Which program produced a [`KillRecord`], and so what it is.
/// `mark_victim`'s raw tracepoint: an OOM kill, read from the victim's task.
pub const SOURCE_RAW_TRACEPOINT: u32 = 1;
/// `oom:mark_victim`'s classic tracepoint: an OOM kill, from its format.
pub const SOURCE_TRACEPOINT: u32 = 2;
/// `signal_generate`'s raw tracepoint: a SIGKILL that is not the OOM
/// killer's kill of its chosen victim. The target is the record's victim,
/// the sender (`current`) its trigger, and [`KillRecord::signal`] the rest.
pub const SOURCE_SIGNAL: u32 = 3;
/// `sched_process_exit`: the exit of a container's PID 1 (the init of a
/// pid namespace other than the root one), read from the exiting task;
/// [`KillRecord::exit_code`] and [`KillRecord::exit_of`] say how it ended.
/// Its `seq` is 0: it is not a kill.
pub const SOURCE_CONTAINER_EXIT: u32 = 4;

/// Slots of the per-CPU scratch map (`KILL_SCRATCH`): one per program that
/// builds a record there, because a signal can be generated in an
/// interrupt on top of another program on the same CPU.
pub mod scratch_slot {
    pub const MARK_VICTIM: u32 = 0;
    pub const SIGNAL: u32 = 1;
    pub const EXIT: u32 = 2;
    pub const LEN: u32 = 3;
}

/// What [`KillRecord::cgroup_path_of`] says the `cgroup_*` walk holds.
pub mod cgroup_path_of {
    /// Nothing: the walk did not run.
    pub const NONE: u32 = 0;
    /// The victim's own cgroup, up to the root.
    pub const VICTIM: u32 = 1;
    /// The memcg whose limit fired (`oom_kill_process`'s `oc->memcg`), up to
    /// the root: what the classic tracepoint, which does not know the
    /// victim's task, can still name.
    pub const OOM_MEMCG: u32 = 2;
}

/// How the cgroup path walk ended: [`KillRecord::cgroup_walk_end`]. Only
/// [`cgroup_walk_end::ROOT`] gives a path.
pub mod cgroup_walk_end {
    /// Not walked, or a kernfs node could not be read.
    pub const UNREAD: u32 = 0;
    /// It reached the hierarchy's root: the path is complete.
    pub const ROOT: u32 = 1;
    /// More than `MAX_CGROUP_DEPTH` levels below the root.
    pub const TOO_DEEP: u32 = 2;
    /// Longer than `CGROUP_PATH_MAX` bytes.
    pub const TOO_LONG: u32 = 3;
}

/// Indexes into the `COUNTERS` array map.
pub mod counter {
    /// Kill records (OOM and signal kills) the ring buffer had no room for.
    pub const LOST_KILLS: u32 = 0;
    /// Exit records (a victim's, a container PID 1's) the ring buffer had no
    /// room for.
    pub const LOST_EXITS: u32 = 1;
    /// Victims the `VICTIMS` map had no room for: their kills are written
    /// without exits (`KillRecord::victim_key` unknown).
    pub const UNTRACKED_VICTIMS: u32 = 2;
    /// The next kill sequence number.
    pub const KILL_SEQ: u32 = 3;
    /// Signal kills not written: the ring buffer was full, or had less
    /// than [`crate::SIGNAL_RESERVE_DIVISOR`]'s share of it free, which is
    /// kept for OOM kills and exits.
    pub const LOST_SIGNAL_KILLS: u32 = 4;
    pub const LEN: u32 = 5;
}

/// A value the programs read, or not. `known == 0` means it was not read
/// (this kernel or attach mode cannot give it, or the read failed), and
/// `value` is then zero. The programs zero a whole record before filling
/// it, so nothing stale crosses over.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Known<T> {
    pub value: T,
    pub known: u32,
    pub _pad: u32,
}

impl<T: Copy + Default> Known<T> {
    pub fn new(value: T) -> Self {
        Self {
            value,
            known: 1,
            _pad: 0,
        }
    }

    pub fn from_option(value: Option<T>) -> Self {
        match value {
            Some(value) => Self::new(value),
            None => Self::default(),
        }
    }

    pub fn get(&self) -> Option<T> {
        (self.known != 0).then_some(self.value)
    }

    pub fn is_known(&self) -> bool {
        self.known != 0
    }
}

/// A byte offset read from the running kernel's BTF. `present == 0` means the
/// field does not exist on this kernel: the program then skips the read and
/// leaves the record's value unknown, instead of reading a wrong offset.
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
    /// How `VICTIMS` is keyed: a [`VictimKey`].
    pub victim_key: u32,
    pub _pad: u32,
}

/// How the `VICTIMS` map is keyed. The programs' victim registry
/// (`oomtrace-ebpf/src/registry.rs`) is the only code that applies this
/// rule: it registers each victim under its key, writes the key into the
/// kill record ([`KillRecord::victim_key`]), and looks every exiting task up
/// by the same rule. Userspace only ever uses the key the record carries.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VictimKey {
    /// The thread-group id: the process dies when its last thread exits.
    Tgid = 0,
    /// The thread id, for the classic tracepoint, which knows only the
    /// marked thread.
    Tid = 1,
}

/// How many victims `VICTIMS` holds at once. Every exit on the node looks
/// itself up there, so the map is kept small enough for its bucket array to
/// stay in cache (see the map's definition in registry.rs for the
/// measurements).
pub const VICTIMS_CAPACITY: u32 = 4096;

/// Value of the `VICTIMS` hash map: lets the exit hook name the kill it
/// closes, and tell the victim from a later process given the same pid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VictimEntry {
    pub kill_seq: u64,
    /// The victim's thread-group leader's `start_time`, or 0 when unknown
    /// (classic tracepoint mode): an exiting task with this key but another
    /// start time is a new process that reused the pid, not the victim.
    pub start_time: u64,
    /// [`victim_state`] bits, set with atomic fetch-or: who has done what,
    /// between the kill's program (which registers the victim before it
    /// writes the record) and the victim's exit.
    pub state: u64,
    /// The victim's exit, left here by the exit hook when it came before the
    /// kill record was written; the kill's program then writes it, after
    /// the kill (`victim_state::EXITED`).
    pub exit_boot_ns: u64,
    pub exit_code: Known<i32>,
    pub _pad: u32,
}

/// Bits of [`VictimEntry::state`]. A kill record is written with
/// `bpf_ringbuf_output` after its victim is registered, so the victim can
/// exit in between; its exit record must still follow the kill in the ring.
/// Each side sets its bit and reads the other's in one atomic step, so
/// exactly one of them sees both and finishes (removes the entry, and
/// writes the exit when the kill was written).
pub mod victim_state {
    /// The kill record is in the ring buffer.
    pub const WRITTEN: u64 = 1;
    /// The kill record could not be written (ring buffer full).
    pub const DROPPED: u64 = 2;
    /// The victim has exited; the entry holds its exit.
    pub const EXITED: u64 = 4;
}

/// Value of `EXITS_BEFORE_MARK` (oomtrace-ebpf/src/registry.rs): a process
/// that ended by SIGKILL, kept a moment in case it is an OOM victim whose
/// `mark_victim` has not run yet. Since Linux 6.13 do_exit() fires
/// `sched_process_exit` before exit_mm(), so a victim that
/// __oom_kill_process() has sent SIGKILL can pass it on another CPU before
/// the OOM killer reaches mark_oom_victim().
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitBeforeMark {
    /// The process's leader's `start_time` (0 when unknown).
    pub start_time: u64,
    pub boot_ns: u64,
    pub exit_code: Known<i32>,
    pub _pad: u32,
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

impl MarkVictimLayout {
    pub const ABSENT: Self = Self {
        pid: FieldOffset::ABSENT,
        comm: FieldOffset::ABSENT,
        total_vm: FieldOffset::ABSENT,
        anon_rss: FieldOffset::ABSENT,
        file_rss: FieldOffset::ABSENT,
        shmem_rss: FieldOffset::ABSENT,
        uid: FieldOffset::ABSENT,
        pgtables: FieldOffset::ABSENT,
        oom_score_adj: FieldOffset::ABSENT,
    };
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

/// Bits of [`KillRecord::memcg_counters_known`]: one per counter of the memcg
/// walk, set when BTF gave its offset on this kernel.
pub mod memcg_counter {
    pub const FAILCNT: u32 = 1 << 0;
    pub const WATERMARK: u32 = 1 << 1;
    pub const EVENT_HIGH: u32 = 1 << 2;
    pub const EVENT_MAX: u32 = 1 << 3;
    pub const EVENT_OOM: u32 = 1 << 4;
    pub const EVENT_OOM_KILL: u32 = 1 << 5;
    pub const EVENT_OOM_GROUP_KILL: u32 = 1 << 6;
}

/// A [`KillRecord::memcg_failcnt`] value: this level's page counter does not
/// count failures (`page_counter::track_failcnt` is false: the root memcg,
/// and cgroup v2 memcgs, where `memory.failcnt` does not exist).
pub const FAILCNT_UNTRACKED: u64 = u64::MAX;

/// One memcg's `memory.events` counters (`enum memcg_memory_event`):
/// hierarchical on cgroup v2, the memcg's own on v1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemcgEventCounts {
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    pub oom_kill: u64,
    pub oom_group_kill: u64,
}

/// One OOM kill, as `mark_victim` saw it: the fixed part. In the ring
/// buffer it is followed by `cgroup_names_len` bytes of cgroup names, so a
/// record is as long as its path needs ([`KILL_RECORD_MIN`] to
/// [`KILL_RECORD_MAX`] bytes). The programs build it in [`KillScratch`],
/// zeroed first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KillRecord {
    pub kind: u32,
    pub source: u32,
    pub seq: u64,
    pub boot_ns: u64,

    pub total_vm_bytes: Known<u64>,
    pub rss_anon_bytes: Known<u64>,
    pub rss_file_bytes: Known<u64>,
    pub rss_shmem_bytes: Known<u64>,
    pub pgtables_bytes: Known<u64>,
    /// From `oom_kill_process`, when it is hooked.
    pub oom: Known<OomContext>,
    /// The `seq` of an earlier kill that registered this same process and
    /// still waits for its exit: out_of_memory() marks a dying `current`
    /// again without a new kill (task_will_free_mem()). That kill's exit
    /// closes this one too.
    pub same_victim_as: Known<u64>,

    /// The key the victim is registered under in `VICTIMS`. Unknown when it
    /// is not registered by this kill: its pid is unknown, the map was full
    /// (then no exit will come for it), or `same_victim_as` holds it.
    pub victim_key: Known<u32>,
    pub victim_tid: Known<u32>,
    pub victim_tgid: Known<u32>,
    pub victim_uid: Known<u32>,
    /// The victim's tgid as seen inside its own pid namespace.
    pub victim_ns_pid: Known<u32>,
    /// The inode number of that pid namespace (`ns_common::inum`).
    pub victim_pid_ns: Known<u32>,
    pub victim_oom_score_adj: Known<i32>,
    pub victim_comm: Known<[u8; COMM_LEN]>,
    pub trigger_comm: Known<[u8; COMM_LEN]>,
    pub trigger_tid: u32,
    pub trigger_tgid: u32,

    /// Whose cgroup the walk below is of: a [`cgroup_path_of`] value.
    pub cgroup_path_of: u32,
    /// How that walk ended: a [`cgroup_walk_end`] value; only `ROOT` gives a
    /// path. Leaf first: `cgroup_ids` holds the kernfs id of each level it
    /// read (the root's too when it got there, at `cgroup_ids[cgroup_depth]`),
    /// and the names that follow the record hold `cgroup_depth`
    /// NUL-terminated names (the root has none), `cgroup_names_len` bytes.
    pub cgroup_walk_end: u32,
    pub cgroup_depth: u32,
    pub cgroup_names_len: u32,
    /// The memcg walk below reached the root memcg.
    pub memcg_complete: u32,
    /// The victim's memory cgroup and its ancestors, leaf first, up to and
    /// including the root memcg: kernfs id, `memory.usage` and `memory.max`
    /// (pages) of each, read at the moment of the kill.
    pub memcg_depth: u32,
    /// The trigger's (`current`'s) memory cgroup and its ancestors, leaf
    /// first, up to and including the root memcg: kernfs ids only.
    pub trigger_memcg_complete: u32,
    pub trigger_memcg_depth: u32,
    /// Which of the memcg counters below this kernel let the walk read: a
    /// set of [`memcg_counter`] bits (an unset bit's values are unknown).
    pub memcg_counters_known: u32,
    pub cgroup_ids: [u64; CGROUP_LEVELS],
    pub memcg_ids: [u64; CGROUP_LEVELS],
    pub memcg_usage_pages: [u64; CGROUP_LEVELS],
    pub memcg_max_pages: [u64; CGROUP_LEVELS],
    pub trigger_memcg_ids: [u64; CGROUP_LEVELS],
    /// Per memcg level, as the walk read them (see `walk_memcg_levels`):
    /// `page_counter::failcnt` ([`FAILCNT_UNTRACKED`] where the page counter
    /// does not track it), its `watermark` (pages), and the
    /// `memory_events[]` counters.
    pub memcg_failcnt: [u64; CGROUP_LEVELS],
    pub memcg_watermark_pages: [u64; CGROUP_LEVELS],
    pub memcg_events: [MemcgEventCounts; CGROUP_LEVELS],
    /// `memory.oom.group` of each memcg level (1 = set): with it, the kernel
    /// kills every task under the highest such memcg between the victim's
    /// and the one whose limit fired (mem_cgroup_get_oom_group()). Unknown
    /// (`memcg_oom_group_known` 0) where BTF lacks `mem_cgroup::oom_group`.
    pub memcg_oom_group: [u8; CGROUP_LEVELS],
    pub _pad_oom_group: [u8; 8 - CGROUP_LEVELS % 8],
    pub memcg_oom_group_known: u32,
    /// In a `mark_victim` record: 1 when the OOM killer's own SIGKILL to
    /// this victim was seen just before the mark ([`KernelSigkill`]), 0
    /// when not: the kernel marked a task already dying
    /// (task_will_free_mem()) without killing it. Meaningful only when the
    /// signal hook is attached, which the collector knows.
    pub oom_sigkill: u32,
    /// A [`SOURCE_SIGNAL`] record's signal.
    pub signal: SignalSent,
    /// A [`SOURCE_CONTAINER_EXIT`] record's: the `seq` of the kill (OOM or
    /// signal) registered for this process, whose exit this is.
    pub exit_of: Known<u64>,
    /// A [`SOURCE_CONTAINER_EXIT`] record's wait status.
    pub exit_code: Known<i32>,
    pub _pad_end: u32,
}

/// Where the programs build a kill record: the per-CPU scratch map's one
/// value (a record is far larger than the 512-byte eBPF stack). The record
/// and the names are adjacent, as they go into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KillScratch {
    pub rec: KillRecord,
    pub names: [u8; CGROUP_NAMES_SIZE],
}

/// A victim's exit, from `sched_process_exit`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitRecord {
    pub kind: u32,
    pub _pad: u32,
    pub boot_ns: u64,
    /// The `seq` of the [`KillRecord`] this exit closes.
    pub kill_seq: u64,
    /// `task_struct::exit_code` as do_exit() set it: the wait status
    /// (signal number in bits 0–6, exit status in bits 8–15).
    pub exit_code: Known<i32>,
    pub _pad2: u32,
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
    unsafe impl aya::Pod for super::KernelSigkill {}
    unsafe impl aya::Pod for super::OomMm {}
    unsafe impl aya::Pod for super::SigtermSeen {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    /// No implicit padding: each size is exactly the sum of its fields, so
    /// both compilers agree on every offset.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FieldOffset>(), 8);
        assert_eq!(size_of::<KernelOffsets>(), KernelOffsets::FIELDS.len() * 8);
        assert_eq!(size_of::<MarkVictimLayout>(), 9 * 8);
        assert_eq!(size_of::<Config>(), 16);
        assert_eq!(size_of::<VictimEntry>(), 8 * 4 + 12 + 4);
        assert_eq!(size_of::<ExitBeforeMark>(), 8 * 2 + 12 + 4);
        assert_eq!(size_of::<OomContext>(), 40);
        assert_eq!(size_of::<KernelSigkill>(), 16);
        assert_eq!(size_of::<OomMm>(), 24);
        assert_eq!(size_of::<SigtermSeen>(), 16 + COMM_LEN);
        assert_eq!(size_of::<SignalSent>(), 8 + 16 + (16 + COMM_LEN + 8) + 16);
        assert_eq!(size_of::<Known<u32>>(), 12);
        assert_eq!(size_of::<Known<u64>>(), 16);
        assert_eq!(size_of::<Known<[u8; COMM_LEN]>>(), COMM_LEN + 8);
        assert_eq!(size_of::<ExitRecord>(), 4 + 4 + 8 + 8 + 12 + 4);
        let known = |n: usize| n + 8;
        let kill_fixed = 4 + 4 + 8 + 8 // header
            + 6 * known(8) + known(40) // sizes, alias, oom context
            + 6 * known(4) + known(4) + 2 * known(COMM_LEN) + 2 * 4 // ids, names
            + 8 * 4 + 4 // walk headers and the counters' known bits
            + 7 * 8 * CGROUP_LEVELS // per-level arrays
            + 5 * 8 * CGROUP_LEVELS // memory.events per level
            + CGROUP_LEVELS.next_multiple_of(8) + 4 // oom groups
            + 4 // oom_sigkill
            + 8 + known(8) + known(16 + COMM_LEN) + known(8) // signal
            + known(8) + known(4) + 4; // container exit
        assert_eq!(size_of::<KillRecord>(), kill_fixed);
        assert_eq!(KILL_RECORD_MIN, kill_fixed);
        assert_eq!(
            size_of::<KillScratch>(),
            kill_fixed + CGROUP_NAMES_SIZE,
            "the names follow the record directly, as in the ring buffer"
        );
        assert!(CGROUP_NAMES_LEN.is_power_of_two());
        assert!(align_of::<KillRecord>() <= 8, "ring buffer aligns to 8");
    }

    #[test]
    fn every_kernel_field_is_listed_once() {
        let mut offsets = KernelOffsets::ABSENT;
        assert_eq!(offsets.slots_mut().count(), KernelOffsets::FIELDS.len());
        for (i, field) in KernelOffsets::FIELDS.iter().enumerate() {
            assert!(
                KernelOffsets::FIELDS[..i]
                    .iter()
                    .all(|f| f.name != field.name),
                "{} twice",
                field.name
            );
            assert_eq!(offsets.get(field.name), Some(FieldOffset::ABSENT));
        }
        // Slot order is FIELDS order: setting slot i sets field i.
        for (i, slot) in offsets.slots_mut().enumerate() {
            *slot = FieldOffset::at(i as u32);
        }
        for (i, field) in KernelOffsets::FIELDS.iter().enumerate() {
            assert_eq!(offsets.get(field.name), Some(FieldOffset::at(i as u32)));
        }
    }
}

//! Every kernel struct field the programs read, declared once: the type it is
//! read as and where BTF says it is.
//!
//! From this one table follow the `KernelOffsets` struct handed to the
//! programs (one `FieldOffset` per field), its all-absent default, the list
//! userspace resolves against the running kernel's BTF (`FIELDS`), and the
//! type each program read uses (`kernel_field_type::NAME`). Adding a field is
//! one line here; the resolver checks its size against BTF, so a field whose
//! type changed is left absent (null in the record), never misread.

/// A pointer read from kernel memory (8 bytes on every 64-bit kernel).
pub type KernelPtr = *const u8;

/// A field that is only an anchor for address arithmetic (an embedded
/// struct, a flexible array, a struct's size): its size is not checked.
pub type Anchor = ();

/// How userspace finds a field in BTF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldRule {
    /// `strukt` followed by `path`, one member per step, each step the first
    /// of its alternative names that exists (fields get renamed: kernfs_node's
    /// `parent` became `__parent` in 6.15). Anonymous struct and union
    /// members are looked through. With `relative_to`, the offset is taken
    /// from that member of the same struct instead of from its start (a
    /// `mem_cgroup` field relative to its embedded `css`, because the
    /// programs hold css pointers).
    Member {
        strukt: &'static str,
        path: &'static [&'static [&'static str]],
        relative_to: Option<&'static str>,
    },
    /// The value of `mm_struct`'s RSS counter `index` (MM_FILEPAGES = 0,
    /// MM_ANONPAGES = 1, MM_SHMEMPAGES = 3), where get_mm_counter() reads it:
    /// `rss_stat[index].count` (an array of percpu_counter, 6.2+) or
    /// `rss_stat.count[index]` (atomic_long_t, before).
    RssCounter { index: usize },
    /// `css_set::subsys[<value of enum cgroup_subsys_id::id>]`.
    CssSetSubsys { id: &'static str },
    /// `sizeof(struct strukt)`, carried as an offset to have a present flag.
    SizeOf { strukt: &'static str },
    /// `strukt.array[<value of enum enum_name::value>]`: one element of an
    /// array indexed by an enum (`mem_cgroup::memory_events[]` by `enum
    /// memcg_memory_event`), relative to `relative_to` as in `Member`. The
    /// enum's values are read from BTF, so an event added in the middle of
    /// the enum moves no read; a value this kernel lacks, or one past the
    /// array's length, leaves the field absent.
    EnumIndexed {
        strukt: &'static str,
        array: &'static str,
        relative_to: Option<&'static str>,
        enum_name: &'static str,
        value: &'static str,
    },
}

/// One entry of [`KernelOffsets::FIELDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelField {
    /// The `KernelOffsets` field's name.
    pub name: &'static str,
    /// Bytes the programs read there; 0 for an [`Anchor`].
    pub size: usize,
    pub rule: FieldRule,
}

/// `FieldRule::Member` for a plain `strukt.member`, under any of its names.
macro_rules! member {
    ($strukt:literal, [$($name:literal),+]) => {
        FieldRule::Member {
            strukt: $strukt,
            path: &[&[$($name),+]],
            relative_to: None,
        }
    };
}

/// `FieldRule::EnumIndexed` for one `mem_cgroup::memory_events[]` counter.
macro_rules! memcg_event {
    ($value:literal) => {
        FieldRule::EnumIndexed {
            strukt: "mem_cgroup",
            array: "memory_events",
            relative_to: Some("css"),
            enum_name: "memcg_memory_event",
            value: $value,
        }
    };
}

macro_rules! kernel_fields {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident: $ty:ty = $rule:expr;
    )*) => {
        /// Offsets of kernel struct fields, computed in userspace from the
        /// running kernel's BTF and handed to the programs as the
        /// `KERNEL_OFFSETS` global. Rust eBPF has no CO-RE relocations yet;
        /// this is the replacement.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct KernelOffsets {
            $( $(#[doc = $doc])* pub $name: FieldOffset, )*
        }

        impl KernelOffsets {
            /// Every field absent: what the programs see until userspace
            /// overrides the global.
            pub const ABSENT: Self = Self { $( $name: FieldOffset::ABSENT, )* };
            /// Every field, in declaration order, with how to find it.
            pub const FIELDS: &'static [KernelField] = &[
                $( KernelField {
                    name: stringify!($name),
                    size: core::mem::size_of::<$ty>(),
                    rule: $rule,
                }, )*
            ];

            /// The offsets in the order of [`Self::FIELDS`].
            pub fn slots_mut(&mut self) -> impl Iterator<Item = &mut FieldOffset> {
                [$( &mut self.$name, )*].into_iter()
            }

            /// The offset of the field named `name`.
            pub fn get(&self, name: &str) -> Option<FieldOffset> {
                match name {
                    $( stringify!($name) => Some(self.$name), )*
                    _ => None,
                }
            }
        }

        /// The type each field is read as, by field name.
        #[allow(non_camel_case_types)]
        pub mod kernel_field_type {
            #[allow(unused_imports)]
            use super::*;
            $( pub type $name = $ty; )*
        }
    };
}

use crate::{COMM_LEN, FieldOffset};

kernel_fields! {
    // struct task_struct
    task_pid: i32 = member!("task_struct", ["pid"]);
    task_tgid: i32 = member!("task_struct", ["tgid"]);
    task_comm: [u8; COMM_LEN] = member!("task_struct", ["comm"]);
    task_mm: KernelPtr = member!("task_struct", ["mm"]);
    task_signal: KernelPtr = member!("task_struct", ["signal"]);
    task_real_cred: KernelPtr = member!("task_struct", ["real_cred"]);
    task_cgroups: KernelPtr = member!("task_struct", ["cgroups"]);
    task_exit_code: i32 = member!("task_struct", ["exit_code"]);
    task_group_leader: KernelPtr = member!("task_struct", ["group_leader"]);
    task_thread_pid: KernelPtr = member!("task_struct", ["thread_pid"]);
    /// Monotonic start time (ns): with the tgid, it names a process even
    /// after its pid is reused. de_thread() hands the leader's to a thread
    /// that execs, so a process keeps it.
    task_start_time: u64 = member!("task_struct", ["start_time"]);
    // struct signal_struct
    signal_oom_score_adj: i16 = member!("signal_struct", ["oom_score_adj"]);
    /// `atomic_t live`: threads not yet past do_exit()'s decrement.
    signal_live: i32 = member!("signal_struct", ["live"]);
    // struct cred: `kuid_t uid`, a struct holding one uid_t.
    cred_uid: u32 = member!("cred", ["uid"]);
    // struct mm_struct
    mm_total_vm: u64 = member!("mm_struct", ["total_vm"]);
    /// `atomic_long_t pgtables_bytes`.
    mm_pgtables_bytes: i64 = member!("mm_struct", ["pgtables_bytes"]);
    mm_rss_file: i64 = FieldRule::RssCounter { index: 0 };
    mm_rss_anon: i64 = FieldRule::RssCounter { index: 1 };
    mm_rss_shmem: i64 = FieldRule::RssCounter { index: 3 };
    // struct css_set: the memory css, and the default-hierarchy cgroup.
    css_set_memory_css: KernelPtr = FieldRule::CssSetSubsys { id: "memory_cgrp_id" };
    css_set_dfl_cgrp: KernelPtr = member!("css_set", ["dfl_cgrp"]);
    // struct cgroup_subsys_state
    css_cgroup: KernelPtr = member!("cgroup_subsys_state", ["cgroup"]);
    css_parent: KernelPtr = member!("cgroup_subsys_state", ["parent"]);
    // struct cgroup
    cgroup_kn: KernelPtr = member!("cgroup", ["kn"]);
    // struct kernfs_node (`parent` became `__parent` in 6.15)
    kn_name: KernelPtr = member!("kernfs_node", ["name"]);
    kn_parent: KernelPtr = member!("kernfs_node", ["__parent", "parent"]);
    kn_id: u64 = member!("kernfs_node", ["id"]);
    /// Where `mem_cgroup` embeds its css: oom_control holds a mem_cgroup
    /// pointer, css_set holds css pointers.
    memcg_css: Anchor = member!("mem_cgroup", ["css"]);
    /// `memory.usage` in pages, relative to the css: the page_counter's
    /// `usage` (`count` before 5.x).
    memcg_usage: i64 = FieldRule::Member {
        strukt: "mem_cgroup",
        path: &[&["memory"], &["usage", "count"]],
        relative_to: Some("css"),
    };
    /// `memory.max` in pages, relative to the css (`limit` before 5.x).
    memcg_max: u64 = FieldRule::Member {
        strukt: "mem_cgroup",
        path: &[&["memory"], &["max", "limit"]],
        relative_to: Some("css"),
    };
    /// `memory.failcnt`: how often a charge hit `memory.max`, relative to
    /// the css. Counted on cgroup v1; on kernels with `track_failcnt` only
    /// where that flag is set (v1 memcgs: v2 does not show it).
    memcg_failcnt: u64 = FieldRule::Member {
        strukt: "mem_cgroup",
        path: &[&["memory"], &["failcnt"]],
        relative_to: Some("css"),
    };
    /// `page_counter::track_failcnt` (bool, recent kernels): whether `failcnt`
    /// counts. Absent on older kernels, where it always does.
    memcg_track_failcnt: u8 = FieldRule::Member {
        strukt: "mem_cgroup",
        path: &[&["memory"], &["track_failcnt"]],
        relative_to: Some("css"),
    };
    /// The peak usage in pages (`memory.peak` on v2,
    /// `memory.max_usage_in_bytes` on v1), relative to the css.
    memcg_watermark: u64 = FieldRule::Member {
        strukt: "mem_cgroup",
        path: &[&["memory"], &["watermark"]],
        relative_to: Some("css"),
    };
    /// `memory.events` counters, `atomic_long_t` each, relative to the css.
    /// memcg_memory_event() counts them up the tree on v2 (a level counts
    /// its descendants' events) and for the memcg alone on v1, where
    /// `memory.oom_control` shows `oom_kill` from this array.
    memcg_event_high: i64 = memcg_event!("MEMCG_HIGH");
    memcg_event_max: i64 = memcg_event!("MEMCG_MAX");
    memcg_event_oom: i64 = memcg_event!("MEMCG_OOM");
    memcg_event_oom_kill: i64 = memcg_event!("MEMCG_OOM_KILL");
    /// 5.16+.
    memcg_event_oom_group_kill: i64 = memcg_event!("MEMCG_OOM_GROUP_KILL");
    /// `memory.oom.group` (bool, 4.19+), relative to the css.
    memcg_oom_group: u8 = FieldRule::Member {
        strukt: "mem_cgroup",
        path: &[&["oom_group"]],
        relative_to: Some("css"),
    };
    // struct pid / struct upid
    pid_level: u32 = member!("pid", ["level"]);
    pid_numbers: Anchor = member!("pid", ["numbers"]);
    upid_nr: i32 = member!("upid", ["nr"]);
    upid_size: Anchor = FieldRule::SizeOf { strukt: "upid" };
    upid_ns: KernelPtr = member!("upid", ["ns"]);
    /// The namespace's inode number, as /proc/PID/ns/pid shows it.
    pidns_inum: u32 = FieldRule::Member {
        strukt: "pid_namespace",
        path: &[&["ns"], &["inum"]],
        relative_to: None,
    };
    /// `kernel_siginfo::si_code` (in its anonymous `__SIGINFO` struct).
    siginfo_code: i32 = member!("kernel_siginfo", ["si_code"]);
    // struct oom_control
    oc_memcg: KernelPtr = member!("oom_control", ["memcg"]);
    oc_totalpages: u64 = member!("oom_control", ["totalpages"]);
    oc_chosen: KernelPtr = member!("oom_control", ["chosen"]);
    oc_chosen_points: i64 = member!("oom_control", ["chosen_points"]);
    oc_constraint: u32 = member!("oom_control", ["constraint"]);
}

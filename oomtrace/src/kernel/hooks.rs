//! The hooks oomtrace attaches, each with its modes in order of preference:
//! one table, read by the attach chain (`attach.rs`), by the `start` record
//! and by `oomtrace check`. A new hook, or a new mode of one, is one entry
//! here plus its programs in oomtrace-ebpf/src/programs.rs.
//!
//! Each mode also lists the record fields it fills and what each needs from
//! this kernel ([`Gives`]): `oomtrace check` promises a field only when its
//! needs are met here (`promises.rs`), and the end-to-end tests hold every
//! promise against a real record of that mode.

use oomtrace_record::{AttachMode, Hook};

/// One hook: what it gives the records, and how it can be attached.
pub struct HookSpec {
    pub hook: Hook,
    /// What it is for, in a few words (for `oomtrace check`).
    pub purpose: &'static str,
    /// What the records lose without it, beyond the fields its modes give
    /// (`oomtrace check` prints it after them).
    pub without: &'static str,
    /// Modes, best first.
    pub modes: &'static [ModeSpec],
}

/// One way to attach a hook: what it needs from this kernel, the programs
/// that attach together (an entry probe with its return probe), and the
/// record fields it fills.
pub struct ModeSpec {
    pub mode: AttachMode,
    pub requires: &'static [Requirement],
    pub programs: &'static [Program],
    pub gives: &'static [Gives],
}

/// A field of the `oom_kill` record that a mode fills, and what it needs
/// to be non-null. Only what holds for every OOM kill is listed: a value
/// that is null by its nature in some kills (a limit on an unlimited
/// cgroup, the fired memcg of a global OOM) is not.
#[derive(Clone, Copy)]
pub struct Gives {
    /// Dotted path in the record; `[]` stands for every element.
    pub field: &'static str,
    /// All of these must hold.
    pub needs: &'static [Need],
}

const fn gives(field: &'static str, needs: &'static [Need]) -> Gives {
    Gives { field, needs }
}

/// `a` then `b`, as one list of needs (`N` = their lengths' sum), so that a
/// field needing two walks names each once.
const fn both<const N: usize>(a: &[Need], b: &[Need]) -> [Need; N] {
    let mut out = [Need::MemoryController; N];
    let mut i = 0;
    while i < a.len() {
        out[i] = a[i];
        i += 1;
    }
    while i < N {
        out[i] = b[i - a.len()];
        i += 1;
    }
    out
}

/// What a field needs from this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// This entry of the kernel field table (oomtrace-ebpf/src/fields.rs),
    /// found in this kernel's BTF.
    Kernel(&'static str),
    /// This field of the classic tracepoint's format (tracefs).
    Format(&'static str),
    /// A mounted memory controller (cgroup v1 or v2).
    MemoryController,
}

/// Something a mode needs that not every kernel has.
#[derive(Clone, Copy, Debug)]
pub enum Requirement {
    /// The kernel's BTF, for struct offsets.
    Btf,
    /// The raw tracepoint's first argument is a `struct task_struct *`.
    TaskArgument { tracepoint: &'static str },
    /// These entries of the kernel field table are present.
    Fields(&'static [&'static str]),
    /// The function is in BTF (it was not inlined away).
    FunctionInBtf(&'static str),
    /// tracefs, for a classic tracepoint's id and format.
    Tracefs,
}

/// One program of the eBPF object and where it attaches.
#[derive(Clone, Copy, Debug)]
pub enum Program {
    RawTracepoint {
        program: &'static str,
        tracepoint: &'static str,
    },
    Tracepoint {
        program: &'static str,
        category: &'static str,
        name: &'static str,
    },
    Fentry {
        program: &'static str,
        function: &'static str,
    },
    Fexit {
        program: &'static str,
        function: &'static str,
    },
    Kprobe {
        program: &'static str,
        function: &'static str,
    },
    Kretprobe {
        program: &'static str,
        function: &'static str,
    },
}

impl Program {
    pub fn name(&self) -> &'static str {
        match *self {
            Self::RawTracepoint { program, .. }
            | Self::Tracepoint { program, .. }
            | Self::Fentry { program, .. }
            | Self::Fexit { program, .. }
            | Self::Kprobe { program, .. }
            | Self::Kretprobe { program, .. } => program,
        }
    }
}

/// The task whose allocation failed: `current`, from helpers that need
/// nothing from the kernel's BTF.
const TRIGGER: [Gives; 3] = [
    gives("trigger.pid", &[]),
    gives("trigger.tid", &[]),
    gives("trigger.comm", &[]),
];

/// task->mm, for the victim's memory counters.
const MM: Need = Need::Kernel("task_mm");

/// What walking the victim's memory cgroup takes: task->cgroups->subsys,
/// and each level's cgroup, kernfs node and parent.
const MEMCG_WALK: &[Need] = &[
    Need::MemoryController,
    Need::Kernel("task_cgroups"),
    Need::Kernel("css_set_memory_css"),
    Need::Kernel("css_parent"),
    Need::Kernel("css_cgroup"),
    Need::Kernel("cgroup_kn"),
    Need::Kernel("kn_id"),
    Need::Kernel("memcg_usage"),
    Need::Kernel("memcg_max"),
];

/// The victim's cgroup path, walked up its kernfs nodes (v1: the memory
/// css's cgroup; v2: css_set->dfl_cgrp).
const CGROUP_PATH: &[Need] = &[
    Need::MemoryController,
    Need::Kernel("task_cgroups"),
    Need::Kernel("css_set_memory_css"),
    Need::Kernel("css_set_dfl_cgrp"),
    Need::Kernel("css_cgroup"),
    Need::Kernel("cgroup_kn"),
    Need::Kernel("kn_name"),
    Need::Kernel("kn_parent"),
    Need::Kernel("kn_id"),
];

/// group_leader->thread_pid->numbers[level].nr.
const NS_PID: &[Need] = &[
    Need::Kernel("task_group_leader"),
    Need::Kernel("task_thread_pid"),
    Need::Kernel("pid_level"),
    Need::Kernel("pid_numbers"),
    Need::Kernel("upid_nr"),
    Need::Kernel("upid_size"),
];

/// The namespace's inode: `numbers[level].ns->ns.inum`.
const PID_NS: &[Need] = &both::<{ NS_PID.len() + 2 }>(
    NS_PID,
    &[Need::Kernel("upid_ns"), Need::Kernel("pidns_inum")],
);

/// The memcg levels' paths come from the victim's cgroup path walk.
const MEMCG_WITH_PATHS: &[Need] =
    &both::<{ MEMCG_WALK.len() + CGROUP_PATH.len() }>(MEMCG_WALK, CGROUP_PATH);

/// `memory.oom.group` of each level, read along the memcg walk.
const MEMCG_OOM_GROUP: &[Need] =
    &both::<{ MEMCG_WALK.len() + 1 }>(MEMCG_WALK, &[Need::Kernel("memcg_oom_group")]);

const RAW_VICTIM: &[Gives] = &[
    gives("victim.pid", &[Need::Kernel("task_tgid")]),
    gives("victim.tid", &[Need::Kernel("task_pid")]),
    gives("victim.ns_pid", NS_PID),
    gives("victim.container_init", NS_PID),
    gives("victim.pid_ns", PID_NS),
    gives("victim.comm", &[Need::Kernel("task_comm")]),
    gives(
        "victim.uid",
        &[Need::Kernel("task_real_cred"), Need::Kernel("cred_uid")],
    ),
    gives(
        "victim.oom_score_adj",
        &[
            Need::Kernel("task_signal"),
            Need::Kernel("signal_oom_score_adj"),
        ],
    ),
    gives("victim.total_vm_bytes", &[MM, Need::Kernel("mm_total_vm")]),
    gives(
        "victim.pgtables_bytes",
        &[MM, Need::Kernel("mm_pgtables_bytes")],
    ),
    gives("victim.rss.anon_bytes", &[MM, Need::Kernel("mm_rss_anon")]),
    gives("victim.rss.file_bytes", &[MM, Need::Kernel("mm_rss_file")]),
    gives(
        "victim.rss.shmem_bytes",
        &[MM, Need::Kernel("mm_rss_shmem")],
    ),
    gives("victim.cgroup.id", CGROUP_PATH),
    gives("victim.cgroup.path", CGROUP_PATH),
    gives("memcg.path", MEMCG_WITH_PATHS),
    gives("memcg.usage_bytes", MEMCG_WALK),
    gives("memcg.levels[].path", MEMCG_WITH_PATHS),
    gives("memcg.levels[].usage_bytes", MEMCG_WALK),
    gives("memcg.levels[].oom_group", MEMCG_OOM_GROUP),
    TRIGGER[0],
    TRIGGER[1],
    TRIGGER[2],
];

/// The classic tracepoint's own fields (6.9's format; before it, `pid`
/// alone). Sizes there are in kB; the program scales them.
const TRACEPOINT_VICTIM: &[Gives] = &[
    gives("victim.tid", &[Need::Format("pid")]),
    gives("victim.comm", &[Need::Format("comm")]),
    gives("victim.uid", &[Need::Format("uid")]),
    gives("victim.oom_score_adj", &[Need::Format("oom_score_adj")]),
    gives("victim.total_vm_bytes", &[Need::Format("total_vm")]),
    gives("victim.pgtables_bytes", &[Need::Format("pgtables")]),
    gives("victim.rss.anon_bytes", &[Need::Format("anon_rss")]),
    gives("victim.rss.file_bytes", &[Need::Format("file_rss")]),
    gives("victim.rss.shmem_bytes", &[Need::Format("shmem_rss")]),
    TRIGGER[0],
    TRIGGER[1],
    TRIGGER[2],
];

/// `mark_victim`, hooked first: each of its modes loads the object with its
/// own configuration (how victims are keyed, the tracepoint's layout).
///
/// Prototype: `TP_PROTO(struct task_struct *task, uid_t uid)` (6.9+),
/// `TP_PROTO(int pid)` before; fired by mark_oom_victim() (mm/oom_kill.c).
pub const MARK_VICTIM: HookSpec = HookSpec {
    hook: Hook::MarkVictim,
    purpose: "one record per kill",
    without: "no kill can be recorded",
    modes: &[
        ModeSpec {
            mode: AttachMode::RawTracepoint,
            requires: &[
                Requirement::Btf,
                Requirement::TaskArgument {
                    tracepoint: "mark_victim",
                },
                Requirement::Fields(&["task_pid", "task_tgid"]),
            ],
            programs: &[Program::RawTracepoint {
                program: "mark_victim_raw",
                tracepoint: "mark_victim",
            }],
            gives: RAW_VICTIM,
        },
        ModeSpec {
            mode: AttachMode::Tracepoint,
            requires: &[Requirement::Tracefs],
            programs: &[Program::Tracepoint {
                program: "mark_victim_tp",
                category: "oom",
                name: "mark_victim",
            }],
            gives: TRACEPOINT_VICTIM,
        },
    ],
};

/// What both modes of `oom_kill_process` need: a readable `struct
/// oom_control`, and the function itself (it can be inlined away).
const OOM_CONTROL_READABLE: &[Requirement] = &[
    Requirement::Btf,
    Requirement::Fields(&["oc_constraint", "oc_chosen_points", "oc_totalpages"]),
    Requirement::FunctionInBtf("oom_kill_process"),
];

/// What `oom_kill_process` leaves for `mark_victim`: read from `struct
/// oom_control` (the mode requires these three), so present whenever the
/// mode attached.
const OOM_CONTROL_FIELDS: &[Need] = &[
    Need::Kernel("oc_constraint"),
    Need::Kernel("oc_chosen_points"),
    Need::Kernel("oc_totalpages"),
];

const OOM_CONTEXT: &[Gives] = &[
    gives("oom.constraint", OOM_CONTROL_FIELDS),
    gives("oom.points", OOM_CONTROL_FIELDS),
    gives("oom.totalpages", OOM_CONTROL_FIELDS),
    gives(
        "oom.chosen_pid",
        &[
            Need::Kernel("oc_constraint"),
            Need::Kernel("oc_chosen_points"),
            Need::Kernel("oc_totalpages"),
            Need::Kernel("oc_chosen"),
            Need::Kernel("task_tgid"),
        ],
    ),
];

/// `static void oom_kill_process(struct oom_control *oc, const char
/// *message)` (mm/oom_kill.c). Entry and return probes attach as a pair or
/// not at all (see `oomtrace_ebpf::OomContext`).
pub const OOM_KILL_PROCESS: HookSpec = HookSpec {
    hook: Hook::OomKillProcess,
    purpose: "why this victim, and which limit fired",
    // The kernel log can still name the fired memcg (kernel/kmsg.rs), but
    // only where the victim's memcg is known to match the line against.
    without: "except that oom.constraint and oom.memcg_path can still come from the \
              kernel's own `oom-kill:` log line, when /dev/kmsg is read and the line can \
              be matched to the victim (that needs its memcg: raw tracepoint mode with \
              BTF); oom.kernel_log says how that went",
    modes: &[
        ModeSpec {
            mode: AttachMode::Fentry,
            requires: OOM_CONTROL_READABLE,
            programs: &[
                Program::Fentry {
                    program: "oom_kill_process_fentry",
                    function: "oom_kill_process",
                },
                Program::Fexit {
                    program: "oom_kill_process_fexit",
                    function: "oom_kill_process",
                },
            ],
            gives: OOM_CONTEXT,
        },
        ModeSpec {
            mode: AttachMode::Kprobe,
            requires: OOM_CONTROL_READABLE,
            programs: &[
                Program::Kprobe {
                    program: "oom_kill_process_kprobe",
                    function: "oom_kill_process",
                },
                Program::Kretprobe {
                    program: "oom_kill_process_kretprobe",
                    function: "oom_kill_process",
                },
            ],
            gives: OOM_CONTEXT,
        },
    ],
};

/// Both modes run the same program body: the exit itself is always seen
/// (the victim's registry entry says so), its code only where BTF gives
/// `task_struct::exit_code`.
const EXIT: &[Gives] = &[
    gives("exit.observed", &[]),
    gives("exit.delay_ms", &[]),
    gives("exit.code", &[Need::Kernel("task_exit_code")]),
    gives("exit.signal", &[Need::Kernel("task_exit_code")]),
];

/// `sched_process_exit`, `TP_PROTO(struct task_struct *p)` (a `bool
/// group_dead` was added in 6.16; unused here): do_exit() fires it after
/// setting `tsk->exit_code` and decrementing `signal->live`. Named
/// `process_exit` in records.
pub const PROCESS_EXIT: HookSpec = HookSpec {
    hook: Hook::ProcessExit,
    purpose: "the victim's exit, joined to its kill",
    without: "every kill is written once the exit wait has passed, with exit.observed \
              false",
    modes: &[
        ModeSpec {
            mode: AttachMode::RawTracepoint,
            requires: &[],
            programs: &[Program::RawTracepoint {
                program: "sched_process_exit_raw",
                tracepoint: "sched_process_exit",
            }],
            gives: EXIT,
        },
        ModeSpec {
            mode: AttachMode::Tracepoint,
            requires: &[Requirement::Tracefs],
            programs: &[Program::Tracepoint {
                program: "sched_process_exit_tp",
                category: "sched",
                name: "sched_process_exit",
            }],
            gives: EXIT,
        },
    ],
};

/// `signal_generate`, `TP_PROTO(int sig, struct kernel_siginfo *info,
/// struct task_struct *task, int group, int result)`
/// (include/trace/events/signal.h), fired by __send_signal_locked() for
/// every signal generated. The raw tracepoint only: the classic one has the
/// target's tid but not its task, so neither its process nor its cgroup.
/// The `signal_kill` record it makes reads the target as `mark_victim`'s
/// raw mode reads a victim; here it adds one field to `oom_kill`.
pub const SIGNAL_GENERATE: HookSpec = HookSpec {
    hook: Hook::SignalGenerate,
    purpose: "SIGKILLs from others than the OOM killer, and whether it killed",
    without: "no signal_kill record is written, container_exit names no sender, and \
              oom.killed is null",
    modes: &[ModeSpec {
        mode: AttachMode::RawTracepoint,
        requires: &[
            Requirement::Btf,
            Requirement::Fields(&["task_pid", "task_tgid"]),
        ],
        programs: &[Program::RawTracepoint {
            program: "signal_generate_raw",
            tracepoint: "signal_generate",
        }],
        gives: &[gives("oom.killed", &[])],
    }],
};

/// Every hook, in attach order; `MARK_VICTIM` first, since it loads the
/// object.
pub const HOOKS: [&HookSpec; 4] = [
    &MARK_VICTIM,
    &OOM_KILL_PROCESS,
    &PROCESS_EXIT,
    &SIGNAL_GENERATE,
];

/// The table entry of a hook.
pub fn spec(hook: Hook) -> Option<&'static HookSpec> {
    HOOKS.into_iter().find(|spec| spec.hook == hook)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tracefs;
    use oomtrace_ebpf::{KernelOffsets, MarkVictimLayout};

    #[test]
    fn required_fields_are_in_the_kernel_field_table() {
        for spec in HOOKS {
            for mode in spec.modes {
                for requirement in mode.requires {
                    if let Requirement::Fields(names) = requirement {
                        for name in *names {
                            assert!(
                                KernelOffsets::ABSENT.get(name).is_some(),
                                "{:?} {:?} requires unknown field {name}",
                                spec.hook,
                                mode.mode
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_need_names_a_field_that_exists() {
        for spec in HOOKS {
            for mode in spec.modes {
                for gives in mode.gives {
                    for need in gives.needs {
                        match need {
                            Need::Kernel(name) => assert!(
                                KernelOffsets::ABSENT.get(name).is_some(),
                                "{}: unknown kernel field {name}",
                                gives.field
                            ),
                            Need::Format(name) => assert!(
                                tracefs::format_field(&MarkVictimLayout::ABSENT, name).is_some(),
                                "{}: unknown format field {name}",
                                gives.field
                            ),
                            Need::MemoryController => {}
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn each_hook_once_modes_once() {
        for (i, spec) in HOOKS.iter().enumerate() {
            assert!(HOOKS[..i].iter().all(|s| s.hook != spec.hook));
            for (j, mode) in spec.modes.iter().enumerate() {
                assert!(spec.modes[..j].iter().all(|m| m.mode != mode.mode));
                assert!(!mode.programs.is_empty());
            }
        }
        assert_eq!(
            HOOKS[0].hook,
            Hook::MarkVictim,
            "the first hook loads the object"
        );
    }
}

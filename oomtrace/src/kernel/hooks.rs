//! The hooks oomtrace attaches, each with its modes in order of preference:
//! one table, read by the attach chain (`attach.rs`), by the `start` record
//! and by `oomtrace check`. A new hook, or a new mode of one, is one entry
//! here plus its programs in oomtrace-ebpf/src/programs.rs.

use oomtrace_record::{AttachMode, Hook};

/// One hook: what it gives the records, and how it can be attached.
pub struct HookSpec {
    pub hook: Hook,
    /// What it gives the records (for `oomtrace check`).
    pub gives: &'static str,
    /// What the records lose without it.
    pub without: &'static str,
    /// Modes, best first.
    pub modes: &'static [ModeSpec],
}

/// One way to attach a hook: what it needs from this kernel, and the
/// programs that attach together (an entry probe with its return probe).
pub struct ModeSpec {
    pub mode: AttachMode,
    pub requires: &'static [Requirement],
    pub programs: &'static [Program],
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

/// `mark_victim`, hooked first: each of its modes loads the object with its
/// own configuration (how victims are keyed, the tracepoint's layout).
///
/// Prototype: `TP_PROTO(struct task_struct *task, uid_t uid)` (6.9+),
/// `TP_PROTO(int pid)` before; fired by mark_oom_victim() (mm/oom_kill.c).
pub const MARK_VICTIM: HookSpec = HookSpec {
    hook: Hook::MarkVictim,
    gives: "one record per kill",
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
        },
        ModeSpec {
            mode: AttachMode::Tracepoint,
            requires: &[Requirement::Tracefs],
            programs: &[Program::Tracepoint {
                program: "mark_victim_tp",
                category: "oom",
                name: "mark_victim",
            }],
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

/// `static void oom_kill_process(struct oom_control *oc, const char
/// *message)` (mm/oom_kill.c). Entry and return probes attach as a pair or
/// not at all (see `oomtrace_ebpf::OomContext`).
pub const OOM_KILL_PROCESS: HookSpec = HookSpec {
    hook: Hook::OomKillProcess,
    gives: "oom.constraint, oom.memcg_path, oom.points, oom.totalpages",
    without: "oom.constraint, points, totalpages, chosen_pid are null; oom.memcg_path is \
              derived from the memcg usage read at the kill (memcg_source usage_at_limit)",
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
        },
    ],
};

/// `sched_process_exit`, `TP_PROTO(struct task_struct *p)` (a `bool
/// group_dead` was added in 6.16; unused here): do_exit() fires it after
/// setting `tsk->exit_code` and decrementing `signal->live`. Named
/// `process_exit` in records.
pub const PROCESS_EXIT: HookSpec = HookSpec {
    hook: Hook::ProcessExit,
    gives: "exit.code, exit.signal, exit.delay_ms",
    without: "exit.observed is always false",
    modes: &[
        ModeSpec {
            mode: AttachMode::RawTracepoint,
            requires: &[],
            programs: &[Program::RawTracepoint {
                program: "sched_process_exit_raw",
                tracepoint: "sched_process_exit",
            }],
        },
        ModeSpec {
            mode: AttachMode::Tracepoint,
            requires: &[Requirement::Tracefs],
            programs: &[Program::Tracepoint {
                program: "sched_process_exit_tp",
                category: "sched",
                name: "sched_process_exit",
            }],
        },
    ],
};

/// Every hook, in attach order; `MARK_VICTIM` first, since it loads the
/// object.
pub const HOOKS: [&HookSpec; 3] = [&MARK_VICTIM, &OOM_KILL_PROCESS, &PROCESS_EXIT];

/// The table entry of a hook.
pub fn spec(hook: Hook) -> Option<&'static HookSpec> {
    HOOKS.into_iter().find(|spec| spec.hook == hook)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oomtrace_ebpf::KernelOffsets;

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

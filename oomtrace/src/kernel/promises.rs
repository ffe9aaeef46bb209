//! What each attached mode fills in the records on this kernel: the hook
//! table's `Gives` entries, checked against what this kernel has (BTF
//! offsets, the classic tracepoint's format, a memory controller). `oomtrace
//! check` prints these promises, and the start record's notes name the
//! fields left null.

use oomtrace_ebpf::{KernelOffsets, MarkVictimLayout};

use super::{
    hooks::{HookSpec, ModeSpec, Need},
    tracefs,
};

/// What this kernel gives the needs of [`Gives`].
pub struct Available<'a> {
    /// Offsets from BTF; None without BTF.
    pub offsets: Option<&'a KernelOffsets>,
    /// The classic tracepoint's format, when that mode was loaded.
    pub format: Option<&'a MarkVictimLayout>,
    pub memory_controller: bool,
}

impl Available<'_> {
    /// Why `need` is not met here, or None when it is.
    fn unmet(&self, need: Need) -> Option<&'static str> {
        match need {
            Need::Kernel(name) => match self.offsets {
                None => Some("needs kernel BTF"),
                Some(o) if !o.get(name).is_some_and(|f| f.is_present()) => {
                    Some("not in this kernel's BTF")
                }
                Some(_) => None,
            },
            Need::Format(name) => {
                let present = self
                    .format
                    .and_then(|layout| tracefs::format_field(layout, name))
                    .is_some_and(|f| f.is_present());
                (!present).then_some("not in this kernel's mark_victim format")
            }
            Need::MemoryController => {
                (!self.memory_controller).then_some("no memory controller is mounted")
            }
        }
    }
}

/// The fields an attached mode fills in every record on this kernel, and
/// the ones it cannot, each with why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Promises {
    pub given: Vec<&'static str>,
    pub null: Vec<(&'static str, &'static str)>,
}

pub fn promises(mode: &ModeSpec, here: &Available<'_>) -> Promises {
    let mut out = Promises::default();
    for gives in mode.gives {
        match gives.needs.iter().find_map(|need| here.unmet(*need)) {
            None => out.given.push(gives.field),
            Some(why) => out.null.push((gives.field, why)),
        }
    }
    out
}

/// Every field any mode of `spec` can give: what the records lose when it
/// is not attached.
pub fn all_fields(spec: &HookSpec) -> Vec<&'static str> {
    let mut fields: Vec<&'static str> = Vec::new();
    for mode in spec.modes {
        for gives in mode.gives {
            if !fields.contains(&gives.field) {
                fields.push(gives.field);
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::hooks::{MARK_VICTIM, PROCESS_EXIT};

    /// Every offset present: the table's full promise.
    fn everything() -> KernelOffsets {
        let mut offsets = KernelOffsets::ABSENT;
        for slot in offsets.slots_mut() {
            *slot = oomtrace_ebpf::FieldOffset::at(0);
        }
        offsets
    }

    #[test]
    fn without_btf_the_exit_hook_promises_no_exit_code() {
        let none = Available {
            offsets: None,
            format: None,
            memory_controller: true,
        };
        let exit = promises(&PROCESS_EXIT.modes[0], &none);
        assert_eq!(exit.given, ["exit.observed", "exit.delay_ms"]);
        assert_eq!(
            exit.null,
            [
                ("exit.code", "needs kernel BTF"),
                ("exit.signal", "needs kernel BTF")
            ]
        );
        let offsets = everything();
        let btf = Available {
            offsets: Some(&offsets),
            ..none
        };
        let exit = promises(&PROCESS_EXIT.modes[0], &btf);
        assert!(exit.null.is_empty(), "{exit:?}");
        assert!(exit.given.contains(&"exit.code"));
    }

    #[test]
    fn a_missing_btf_field_takes_only_its_own_fields() {
        let mut offsets = everything();
        offsets.memcg_oom_group = oomtrace_ebpf::FieldOffset::ABSENT;
        let here = Available {
            offsets: Some(&offsets),
            format: None,
            memory_controller: true,
        };
        let raw = promises(&MARK_VICTIM.modes[0], &here);
        assert_eq!(
            raw.null,
            [("memcg.levels[].oom_group", "not in this kernel's BTF")]
        );
        assert!(raw.given.contains(&"memcg.levels[].path"));
        let no_memcg = Available {
            memory_controller: false,
            ..here
        };
        let raw = promises(&MARK_VICTIM.modes[0], &no_memcg);
        assert!(!raw.given.iter().any(|f| f.starts_with("memcg")), "{raw:?}");
        assert!(!raw.given.contains(&"victim.cgroup.path"), "{raw:?}");
    }

    #[test]
    fn the_old_tracepoint_format_promises_the_tid_alone() {
        let old = MarkVictimLayout {
            pid: oomtrace_ebpf::FieldOffset::at(8),
            ..MarkVictimLayout::ABSENT
        };
        let here = Available {
            offsets: None,
            format: Some(&old),
            memory_controller: true,
        };
        let tp = promises(&MARK_VICTIM.modes[1], &here);
        assert_eq!(
            tp.given,
            ["victim.tid", "trigger.pid", "trigger.tid", "trigger.comm"]
        );
        assert!(all_fields(&MARK_VICTIM).contains(&"victim.rss.anon_bytes"));
    }
}

//! These run against this machine's own BTF (no root needed: the file is
//! world-readable) and check the computed offsets against facts that hold
//! on every kernel, rather than against hard-coded numbers.
use super::*;

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

fn layout() -> Option<(Btf, KernelLayout)> {
    let btf = open(Path::new(VMLINUX)).ok()?;
    let layout = compute(&btf);
    Some((btf, layout))
}

fn has_member(btf: &Btf, s: &Struct, name: &str) -> bool {
    s.members
        .iter()
        .any(|m| btf.resolve_name(m).is_ok_and(|n| n == name))
}

#[test]
fn every_field_in_the_table_is_found_on_this_kernel() {
    let Some((_, layout)) = layout() else {
        eprintln!("skipped: no BTF at {VMLINUX}");
        return;
    };
    assert!(layout.missing.is_empty(), "missing: {:?}", layout.missing);
    for field in KernelOffsets::FIELDS {
        let offset = layout.offsets.get(field.name).expect("listed");
        assert!(offset.is_present(), "{} absent", field.name);
    }
}

#[test]
fn offsets_are_consistent_with_struct_layout() {
    let Some((btf, layout)) = layout() else {
        return;
    };
    let o = layout.offsets;
    // pid_t pid and pid_t tgid are declared next to each other.
    assert_eq!(o.task_tgid.offset, o.task_pid.offset + 4);
    // The four RSS counters are evenly spaced (one percpu_counter or one
    // atomic_long_t apart), in MM_* order.
    let stride = o.mm_rss_anon.offset - o.mm_rss_file.offset;
    assert!(stride == 8 || stride >= 32, "stride {stride}");
    assert_eq!(o.mm_rss_shmem.offset, o.mm_rss_file.offset + 3 * stride);
    // Everything inside task_struct lies within it.
    let mut r = Resolver {
        btf: &btf,
        structs: HashMap::new(),
    };
    let task = r.strukt("task_struct").expect("task_struct");
    assert!((o.task_comm.offset as usize) + 16 <= task.size());
    assert!((o.task_start_time.offset as usize) + 8 <= task.size());
    // mem_cgroup embeds its css first on every kernel since 3.x, and the
    // page counter's usage and max come after it.
    assert_eq!(o.memcg_css.offset, 0);
    assert!(o.memcg_max.offset > o.memcg_usage.offset);
    // memory_events[] is an array of atomic_long_t indexed in enum
    // memcg_memory_event order (LOW, HIGH, MAX, OOM, OOM_KILL, ...).
    assert_eq!(o.memcg_event_max.offset, o.memcg_event_high.offset + 8);
    assert_eq!(o.memcg_event_oom.offset, o.memcg_event_max.offset + 8);
    assert_eq!(o.memcg_event_oom_kill.offset, o.memcg_event_oom.offset + 8);
    // The page counter's fields lie within it, next to its usage.
    let counter = r.strukt("page_counter").expect("page_counter");
    for field in [o.memcg_failcnt, o.memcg_watermark] {
        assert!(field.offset > o.memcg_usage.offset);
        assert!(((field.offset - o.memcg_usage.offset) as usize) < counter.size());
    }
    // struct upid is { int nr; struct pid_namespace *ns; }.
    assert_eq!(o.upid_size.offset, 16);
    // The kernfs parent is named per kernel version, never both.
    let kn = r.strukt("kernfs_node").expect("kernfs_node");
    assert!(has_member(&btf, &kn, "__parent") != has_member(&btf, &kn, "parent"));
}

#[test]
fn a_field_of_the_wrong_size_is_absent_and_named() {
    let Ok(btf) = open(Path::new(VMLINUX)) else {
        return;
    };
    let mut r = Resolver {
        btf: &btf,
        structs: HashMap::new(),
    };
    // task_struct::pid is a 4-byte pid_t: a program reading 8 there
    // must get nothing, not the pid plus the tgid.
    let wrong = KernelField {
        name: "task_pid",
        size: 8,
        rule: FieldRule::Member {
            strukt: "task_struct",
            path: &[&["pid"]],
            relative_to: None,
        },
    };
    let error = r.resolve(&wrong).expect_err("a size mismatch");
    assert!(error.contains("task_struct::pid"), "{error}");
    let absent = KernelField {
        name: "x",
        size: 4,
        rule: FieldRule::Member {
            strukt: "task_struct",
            path: &[&["no_such_field", "nor_this"]],
            relative_to: None,
        },
    };
    assert_eq!(
        r.resolve(&absent),
        Err("task_struct::no_such_field|nor_this".into())
    );
}

#[test]
fn mark_victim_raw_argument_is_recognised() {
    let Some((btf, layout)) = layout() else {
        return;
    };
    // The extended tracepoint exists here iff tracefs's format has `comm`;
    // both come from the same 6.9 change. Here we only check that the BTF
    // lookup agrees with the presence of trace_event_raw_mark_victim.comm.
    let mut r = Resolver {
        btf: &btf,
        structs: HashMap::new(),
    };
    let extended = r
        .strukt("trace_event_raw_mark_victim")
        .is_ok_and(|s| has_member(&btf, &s, "__data_loc_comm"));
    assert_eq!(layout.mark_victim_raw_has_task, extended);
}

#[test]
fn a_missing_btf_file_is_a_clear_error() {
    let err = open(Path::new("/nonexistent/vmlinux"))
        .err()
        .expect("must fail");
    let text = err.to_string();
    assert!(text.contains("--no-btf"), "{text}");
    assert!(text.contains("/nonexistent/vmlinux"), "{text}");
}

#[test]
fn a_file_that_is_not_btf_names_its_cause_once() {
    let err = open(Path::new("/etc/passwd")).err().expect("not BTF");
    assert!(matches!(err, BtfError::Parse { .. }), "{err:?}");
    let text = err.to_string();
    // anyhow prints `{:#}` as the message followed by every source:
    // the cause must be in one place only.
    assert!(std::error::Error::source(&err).is_none(), "{text}");
    assert!(
        text.contains("/etc/passwd") && text.contains("--no-btf"),
        "{text}"
    );
}

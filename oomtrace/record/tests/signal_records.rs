//! `signal_kill` and `container_exit`: records as the collector writes them
//! validate against the JSON Schema, read back to the same JSON, render as
//! one inert text line, and values from a newer oomtrace still read.

mod common;

use oomtrace_record::{
    ExitCause, KindEvidence, Record, SenderKind, SignalCode, read, sender_kind_by_comm, text,
};
use serde_json::{Value, json};

fn sender() -> Value {
    json!({
        "pid": 999, "tid": 1000, "uid": 0, "comm": "bash", "comm_hex": null,
        "kind": "other", "code": "user",
        "cgroup": {"id": 42, "path": "/user.slice/session-3.scope", "path_hex": null},
        "kind_from": null
    })
}

fn signal_kill() -> Value {
    json!({
        "type": "signal_kill", "schema": 1,
        "hostname": "vm", "boot_id": "b", "run_id": "r",
        "seq": 3, "time": "2026-12-01T10:00:00.000000001Z", "boot_ns": 5,
        "source": "raw_tracepoint",
        "target": {
            "pid": 1234, "tid": 1234, "ns_pid": 1, "container_init": true,
            "pid_ns": 4026532177_u64, "comm": "sleep", "comm_hex": null, "uid": 0,
            "oom_score_adj": 0, "total_vm_bytes": 2_000_000, "pgtables_bytes": 40960,
            "rss": {"anon_bytes": 100, "file_bytes": 200, "shmem_bytes": 0},
            "cgroup": {"id": 7, "path": "/x", "path_hex": null}
        },
        "sender": sender(),
        "after_sigterm": {
            "ms_before": 1002.5, "sender_pid": 998, "sender_comm": "containerd-shim",
            "sender_comm_hex": null
        },
        "part_of_oom_kill": null,
        "memcg": {
            "path": "/x", "path_hex": null, "usage_bytes": 1_048_576,
            "limit_bytes": 67_108_864,
            "levels": [
                {"path": "/x", "path_hex": null, "usage_bytes": 1_048_576,
                 "limit_bytes": 67_108_864, "oom_group": false},
                {"path": "/", "path_hex": null, "usage_bytes": 4_000_000_000_u64,
                 "limit_bytes": null, "oom_group": false}
            ]
        },
        "exit": {"observed": true, "code": 137, "signal": 9, "delay_ms": 1.25},
        "container": null, "k8s": null, "systemd_unit": null,
        "container_survives": null
    })
}

fn container_exit() -> Value {
    json!({
        "type": "container_exit", "schema": 1,
        "hostname": "vm", "boot_id": "b", "run_id": "r",
        "time": "2026-12-01T10:00:01Z", "boot_ns": 6,
        "pid": 4321, "pid_ns": 4026532177_u64, "comm": "sh", "comm_hex": null,
        "cgroup": {"id": 8, "path": "/docker/3f4e9a1c0b7d2e8f", "path_hex": null},
        "container": {"id": "3f4e9a1c0b7d2e8f6a5c4b3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f",
                      "runtime": "docker", "name": "web-1", "image": "nginx:1.27"},
        "k8s": null, "systemd_unit": null,
        "exit": {"observed": true, "code": 137, "signal": 9, "delay_ms": null},
        "cause": "oom_kill", "cause_seq": 7, "sender": null,
        "other_oom_kills": {"count": 2, "seqs": [3, 5], "since": "2026-12-01T09:00:00Z"}
    })
}

/// Validates `value`, reads it, and checks it is written back unchanged.
fn round_trip(value: &Value) -> Record {
    let (schemas, index) = common::compiled();
    if let Err(error) = schemas.validate(value, index) {
        panic!("does not validate: {error:#}\n{value}");
    }
    let line = value.to_string();
    let record = read::parse_line(&line).expect("a record");
    assert_eq!(
        serde_json::to_value(&record).expect("serialize"),
        *value,
        "not written back as read"
    );
    record
}

fn validates(value: &Value) -> bool {
    let (schemas, index) = common::compiled();
    schemas.validate(value, index).is_ok()
}

/// No character a terminal acts on.
fn assert_inert(line: &str) {
    assert!(
        !line.chars().any(|c| c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}'
                | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')),
        "{line:?}"
    );
}

#[test]
fn a_signal_kill_validates_reads_and_writes_back() {
    let record = round_trip(&signal_kill());
    assert_eq!(record.type_name(), "signal_kill");
    assert_eq!(record.origin().and_then(|o| o.run_id.as_deref()), Some("r"));
    let Record::SignalKill(kill) = record else {
        panic!("{record:?}")
    };
    assert_eq!(kill.seq, 3);
    assert_eq!(kill.sender.kind, SenderKind::Other);
    assert_eq!(kill.sender.code, SignalCode::User);
    assert_eq!(kill.target.container_init, Some(true));
    assert_eq!(
        kill.after_sigterm.as_ref().map(|t| t.ms_before),
        Some(1002.5)
    );
    assert_eq!(kill.exit.code, Some(137));
}

#[test]
fn a_container_exit_validates_reads_and_writes_back() {
    let record = round_trip(&container_exit());
    assert_eq!(record.type_name(), "container_exit");
    let Record::ContainerExit(exit) = record else {
        panic!("{record:?}")
    };
    assert_eq!(exit.cause, ExitCause::OomKill);
    assert_eq!(exit.cause_seq, Some(7));
    assert_eq!(exit.other_oom_kills.seqs, [3, 5]);

    // A signal kill's verdict carries its sender.
    let mut value = container_exit();
    value["cause"] = "signal_kill".into();
    value["cause_seq"] = 9.into();
    let mut by = sender();
    by["comm"] = "earlyoom".into();
    by["kind"] = "userspace_oom_killer".into();
    by["kind_from"] = "comm".into();
    value["sender"] = by;
    let Record::ContainerExit(exit) = round_trip(&value) else {
        unreachable!()
    };
    let sender = exit.sender.expect("a sender");
    assert_eq!(sender.kind, SenderKind::UserspaceOomKiller);
    assert_eq!(sender.kind_from, Some(KindEvidence::Comm));
    assert_eq!(
        sender_kind_by_comm(sender.comm.as_deref().unwrap_or_default()),
        Some(sender.kind)
    );
}

#[test]
fn the_schema_rejects_what_breaks_the_contract() {
    let broken = |base: fn() -> Value, change: &dyn Fn(&mut Value)| {
        let mut value = base();
        change(&mut value);
        !validates(&value)
    };
    assert!(broken(signal_kill, &|v| v["sender"]["kind"] = "planet".into()));
    assert!(broken(signal_kill, &|v| v["sender"]["code"] = 0.into()));
    assert!(broken(signal_kill, &|v| {
        v.as_object_mut().map(|o| o.remove("after_sigterm"));
    }));
    assert!(broken(signal_kill, &|v| {
        v["sender"].as_object_mut().map(|o| o.remove("kind_from"));
    }));
    assert!(broken(container_exit, &|v| v["cause"] = "unknown".into()));
    assert!(broken(container_exit, &|v| {
        v["other_oom_kills"]
            .as_object_mut()
            .map(|o| o.remove("since"));
    }));
    assert!(!broken(container_exit, &|v| {
        v.as_object_mut().map(|o| o.remove("run_id"));
    }));
}

#[test]
fn values_from_a_newer_oomtrace_still_read() {
    let mut value = signal_kill();
    value["source"] = "fentry".into();
    value["sender"]["kind"] = "scheduler".into();
    value["sender"]["code"] = "timer".into();
    value["sender"]["kind_from"] = "bpf_lsm".into();
    value["sender"]["new_field"] = 1.into();
    let Ok(Record::SignalKill(kill)) = read::parse_line(&value.to_string()) else {
        panic!("not read: {value}")
    };
    assert_eq!(kill.sender.kind, SenderKind::Unknown);
    assert_eq!(kill.sender.code, SignalCode::Unknown);
    assert_eq!(kill.sender.kind_from, Some(KindEvidence::Unknown));

    let mut value = container_exit();
    value["cause"] = "freezer".into();
    let Ok(Record::ContainerExit(exit)) = read::parse_line(&value.to_string()) else {
        panic!("not read: {value}")
    };
    assert_eq!(exit.cause, ExitCause::Unknown);
}

#[test]
fn text_lines() {
    let kill = read::parse_line(&signal_kill().to_string()).expect("a record");
    assert_eq!(
        text::line(&kill),
        "2026-12-01T10:00:00.000000001Z signal kill #3: SIGKILL to pid 1234 \"sleep\" adj 0 \
         uid 0 cgroup /x memcg 1.0MiB/64.0MiB by 999 \"bash\" (other, user) after SIGTERM by \
         998 \"containerd-shim\" 1002.5ms before container-init exit 137 (signal 9) after 1.25ms"
    );
    let mut value = signal_kill();
    value["after_sigterm"] = Value::Null;
    value["part_of_oom_kill"] = 7.into();
    value["sender"]["kind"] = "kernel".into();
    value["sender"]["code"] = "kernel".into();
    value["container_survives"] = false.into();
    value["systemd_unit"] = "nginx.service".into();
    let line = text::line(&read::parse_line(&value.to_string()).expect("a record"));
    assert!(
        line.contains(
            " (kernel, kernel) part of OOM kill #7 without SIGTERM first unit nginx.service \
             container-init container-dies exit 137"
        ),
        "{line}"
    );

    let exit = read::parse_line(&container_exit().to_string()).expect("a record");
    assert_eq!(
        text::line(&exit),
        "2026-12-01T10:00:01Z container exit: pid 4321 \"sh\" cgroup /docker/3f4e9a1c0b7d2e8f \
         name web-1 id 3f4e9a1c0b7d image nginx:1.27 cause oom_kill #7 exit 137 (signal 9) other OOM kills 2 (#3 #5) since \
         2026-12-01T09:00:00Z"
    );
}

#[test]
fn hostile_names_stay_on_one_inert_line() {
    let hostile = "a\n\u{1b}[2J\u{9b}\u{202e}b\"";
    let mut value = signal_kill();
    value["target"]["comm"] = hostile.into();
    value["sender"]["comm"] = hostile.into();
    value["after_sigterm"]["sender_comm"] = hostile.into();
    value["target"]["cgroup"]["path"] = hostile.into();
    let line = text::line(&read::parse_line(&value.to_string()).expect("a record"));
    assert_inert(&line);
    assert_eq!(
        line.matches(r#""a\n\u001b[2J\u009b\u202eb\"""#).count(),
        4,
        "{line}"
    );

    let mut value = container_exit();
    value["comm"] = hostile.into();
    value["cgroup"]["path"] = hostile.into();
    value["other_oom_kills"]["since"] = hostile.into();
    let mut by = sender();
    by["comm"] = hostile.into();
    value["sender"] = by;
    let line = text::line(&read::parse_line(&value.to_string()).expect("a record"));
    assert_inert(&line);
    assert_eq!(
        line.matches(r#""a\n\u001b[2J\u009b\u202eb\"""#).count(),
        4,
        "{line}"
    );
}

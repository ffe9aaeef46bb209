use oomtrace_record::{GrowthKind, Memcg, MemcgLevel, PressureSource};
use serde_json::json;

use super::*;
use crate::pipeline::sampler::{
    files::{Psi, Reading, StatFigures},
    store::Limits,
};

const SEC: u64 = 1_000_000_000;
const MIB: u64 = 1 << 20;
const LIMIT: u64 = 100 * MIB;

/// A kill at 100 s of a process in `/pod/ctr`, its pod's limit fired.
fn kill(fired: Option<&str>) -> OomKill {
    let mut kill: OomKill = serde_json::from_value(json!({
        "schema": 1, "seq": 0, "time": "t", "boot_ns": 100 * SEC, "source": "raw_tracepoint",
        "victim": {"pid": 7, "tid": 7, "ns_pid": null, "container_init": null,
                   "comm": "x", "comm_hex": null, "uid": 0, "oom_score_adj": 0,
                   "total_vm_bytes": 0, "pgtables_bytes": 0,
                   "rss": {"anon_bytes": 0, "file_bytes": 0, "shmem_bytes": 0},
                   "cgroup": {"id": 1, "path": "/pod/ctr"}},
        "trigger": {"pid": 7, "tid": 7, "comm": null, "comm_hex": null},
        "oom": {"constraint": null, "memcg_path": fired, "points": null, "totalpages": null,
                "chosen_pid": null, "memcg_source": null, "limit_scope": null},
        "memcg": null,
        "exit": {"observed": false, "code": null, "signal": null, "delay_ms": null},
        "container": null, "k8s": null, "systemd_unit": null, "container_survives": null
    }))
    .expect("a valid record");
    let level = |path: &str, limit: Option<u64>| MemcgLevel {
        path: Some(path.to_string()),
        usage_bytes: LIMIT,
        limit_bytes: limit,
        ..MemcgLevel::default()
    };
    kill.memcg = Some(Memcg {
        path: Some("/pod/ctr".into()),
        usage_bytes: LIMIT,
        limit_bytes: Some(LIMIT),
        levels: vec![
            level("/pod/ctr", Some(LIMIT)),
            level("/pod", Some(LIMIT)),
            level("/", None),
        ],
        ..Memcg::default()
    });
    kill
}

fn reading(usage: u64) -> Reading {
    Reading {
        usage,
        stat: StatFigures {
            anon: Some(usage - MIB),
            file: Some(MIB),
            active_file: Some(MIB / 2),
            inactive_file: Some(MIB / 4),
            shmem: Some(0),
            kernel: None,
            slab: None,
        },
        pressure: Some(Psi {
            some_avg10: 0.03,
            full_avg10: 1.0,
        }),
        limit: None,
    }
}

fn store() -> Store {
    Store::new(Limits {
        max_cgroups: 8,
        points: 60,
        idle_ns: 60 * SEC,
    })
}

/// Samples of `path` a second apart up to 99.5 s, leaking 10 MiB/s, and
/// one after the kill that must be left out.
fn leak(store: &mut Store, path: &str) {
    store.admit(path, 0).expect("room");
    for i in 0..8u64 {
        let at = 92 * SEC + SEC / 2 + i * SEC;
        store.push(path, Point::new(at, &reading((20 + 10 * i) * MIB)));
    }
    store.push(path, Point::new(101 * SEC, &reading(2 * MIB)));
}

#[test]
fn never_sampled_is_empty_unknown_and_null() {
    let memory =
        memory_of(&store(), &kill(None), Version::V2, Duration::from_secs(60)).expect("memory");
    assert_eq!(memory, Memory::default());
    assert_eq!(memory.growth.kind, GrowthKind::Unknown);
}

#[test]
fn unknown_path_is_no_memory() {
    let mut k = kill(None);
    k.memcg = None;
    k.victim.cgroup.path = None;
    assert_eq!(
        memory_of(&store(), &k, Version::V1, Duration::from_secs(60)),
        None
    );
}

#[test]
fn victim_stat_history_and_growth() {
    let mut s = store();
    leak(&mut s, "/pod/ctr");
    let memory = memory_of(&s, &kill(None), Version::V2, Duration::from_secs(60)).expect("memory");
    let stat = memory.stat.as_ref().expect("stat");
    assert_eq!(
        stat.usage_bytes,
        90 * MIB,
        "the last sample before the kill"
    );
    assert_eq!(stat.age_ms, 500);
    assert_eq!(memory.working_set_bytes, Some(90 * MIB - MIB / 4));
    assert_eq!(memory.fired_stat, None);
    let pressure = memory.pressure.as_ref().expect("pressure");
    assert_eq!(pressure.source, PressureSource::Cgroup);
    assert_eq!((pressure.some_avg10, pressure.full_avg10), (0.03, 1.0));
    assert_eq!(memory.history.len(), 8);
    assert_eq!(memory.history[0], [7500, 20 * MIB, 19 * MIB, MIB]);
    assert_eq!(memory.history[7][0], 500);
    assert_eq!(memory.history_path.as_deref(), Some("/pod/ctr"));
    assert_eq!(memory.growth.kind, GrowthKind::Leak);
    let slope = memory.growth.slope_bytes_per_s.expect("slope");
    assert!((slope - 10.0 * MIB as f64).abs() < 1.0, "{slope}");
    // The window: only the last 3.5 s.
    let short = memory_of(&s, &kill(None), Version::V2, Duration::from_millis(3500)).expect("m");
    assert_eq!(short.history.len(), 4);
}

#[test]
fn fired_memcg_is_shown_and_tells_the_growth() {
    let mut s = store();
    leak(&mut s, "/pod/ctr");
    s.admit("/pod", 0).expect("room");
    for i in 0..5u64 {
        s.push("/pod", Point::new(95 * SEC + i * SEC, &reading(95 * MIB)));
    }
    let memory = memory_of(
        &s,
        &kill(Some("/pod")),
        Version::V1,
        Duration::from_secs(60),
    )
    .expect("memory");
    assert_eq!(
        memory.fired_stat.as_ref().map(|f| f.path.as_str()),
        Some("/pod")
    );
    assert_eq!(memory.history_path.as_deref(), Some("/pod"));
    assert_eq!(memory.growth.kind, GrowthKind::AtLimit);
    assert_eq!(memory.pressure, None, "v1 without system samples");
    s.push_system_pressure(
        99 * SEC,
        Psi {
            some_avg10: 4.0,
            full_avg10: 0.0,
        },
    );
    let memory = memory_of(
        &s,
        &kill(Some("/pod")),
        Version::V1,
        Duration::from_secs(60),
    )
    .expect("memory");
    assert_eq!(
        memory.pressure.map(|p| p.source),
        Some(PressureSource::System)
    );
    // The same memcg as the victim's: no second stat.
    let same = memory_of(
        &s,
        &kill(Some("/pod/ctr")),
        Version::V1,
        Duration::from_secs(60),
    )
    .expect("memory");
    assert_eq!(same.fired_stat, None);
}

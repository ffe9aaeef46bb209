use serde_json::{Value, json};

use super::*;

use crate::fixtures::record as fixture;

/// A kill in a restarted container: a new id each time, the same names.
fn k8s_kill(pod: &str, container_id: &str, survives: Option<bool>) -> Record {
    let mut v = fixture("oom_kill");
    v["container"] = json!({"id": format!("{container_id:0<64}"), "runtime": "containerd",
                            "name": "app", "image": "img:1"});
    v["k8s"] = json!({"namespace": "shop", "pod": pod, "pod_uid": "uid-1", "container": "app",
                      "qos": "burstable"});
    v["oom"]["constraint"] = json!("memcg");
    v["oom"]["limit_scope"] = json!("container");
    v["container_survives"] = json!(survives);
    serde_json::from_value(v).expect("oom_kill")
}

fn scrape(metrics: &Metrics) -> String {
    metrics.encode(false).expect("encode")
}

#[test]
fn a_restarted_container_continues_its_series() {
    let metrics = Metrics::new(10);
    let mut listener = metrics.listener();
    for id in ["aaa", "bbb", "ccc"] {
        listener.record(&k8s_kill("web-1", id, Some(false)));
    }
    let text = scrape(&metrics);
    let line = "oomtrace_kills_total{namespace=\"shop\",pod=\"web-1\",container=\"app\",\
                constraint=\"memcg\",limit_scope=\"container\",cause=\"oom_kill\",\
                container_survives=\"false\"} 3";
    assert!(text.contains(line), "{text}");
    assert!(!text.contains("aaa"), "{text}");
}

#[test]
fn subjects_past_the_cap_fold_into_overflow() {
    let metrics = Metrics::new(2);
    let mut listener = metrics.listener();
    for pod in ["a", "b", "c", "d", "a"] {
        listener.record(&k8s_kill(pod, "x", Some(true)));
    }
    let text = scrape(&metrics);
    for (pod, count) in [("a", 2), ("b", 1)] {
        assert!(
            text.contains(&format!("pod=\"{pod}\",container=\"app\",constraint=\"memcg\",limit_scope=\"container\",cause=\"oom_kill\",container_survives=\"true\"}} {count}")),
            "{text}"
        );
    }
    assert!(!text.contains("pod=\"c\""), "{text}");
    assert!(
        text.contains(
            "oomtrace_kills_total{namespace=\"_overflow\",pod=\"_overflow\",container=\"_overflow\",\
             constraint=\"memcg\",limit_scope=\"container\",cause=\"oom_kill\",\
             container_survives=\"true\"} 2"
        ),
        "{text}"
    );
    assert!(text.contains("oomtrace_kills_folded_total 2"), "{text}");
}

#[test]
fn outside_kubernetes_the_subject_is_the_unit_else_the_cgroup() {
    let mut v = fixture("oom_kill");
    v["k8s"] = Value::Null;
    v["container"] = Value::Null;
    v["systemd_unit"] = json!("nginx.service");
    let unit: OomKillRecord = serde_json::from_value(v.clone()).expect("oom_kill");
    let labels = KillLabels::of_oom_kill(&unit);
    assert_eq!((labels.namespace.as_str(), labels.pod.as_str()), ("", ""));
    assert_eq!(labels.container, "nginx.service");
    v["systemd_unit"] = Value::Null;
    v["victim"]["cgroup"]["path"] = json!("/batch/job-7");
    let plain: OomKillRecord = serde_json::from_value(v).expect("oom_kill");
    assert_eq!(KillLabels::of_oom_kill(&plain).container, "/batch/job-7");
}

type OomKillRecord = oomtrace_record::OomKill;

#[test]
fn totals_probes_and_health_come_from_the_pipeline() {
    let metrics = Metrics::new(10);
    let mut listener = metrics.listener();
    let start: Record = serde_json::from_value(fixture("start")).expect("start");
    listener.record(&start);
    let counters = Counters {
        lost_kills: 3,
        records_dropped: 5,
        sampler_evictions: 7,
        ..Counters::default()
    };
    listener.tick(&counters);
    let text = scrape(&metrics);
    for line in [
        "oomtrace_lost_records_total{kind=\"kills\"} 3",
        "oomtrace_lost_records_total{kind=\"records_dropped\"} 5",
        "oomtrace_sampler_evictions_total 7",
        "oomtrace_build_info{version=\"",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "oomtrace_probe_attached{probe=\"",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    let Record::Start(start) = start else {
        unreachable!()
    };
    let attached = start.probes.iter().filter(|p| p.mode.is_some()).count();
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("oomtrace_probe_attached{") && l.ends_with(" 1"))
            .count(),
        attached,
        "{text}"
    );
    assert!(metrics.health().check().is_ok());
}

#[test]
fn openmetrics_ends_with_eof() {
    let metrics = Metrics::new(10);
    let text = metrics.encode(true).expect("encode");
    assert!(text.ends_with("# EOF\n"), "{text}");
}

/// A `docker stop` past its timeout: a signal kill of the container's PID 1,
/// named by the runtime's container name.
fn signal_kill(part_of_oom_kill: Option<u64>) -> Record {
    let mut v = fixture("oom_kill");
    let kill = v.as_object_mut().expect("object");
    for field in ["victim", "trigger", "oom", "memory"] {
        kill.remove(field);
    }
    let target = fixture("oom_kill")["victim"].clone();
    v["type"] = json!("signal_kill");
    v["target"] = target;
    v["sender"] = json!({"pid": 999, "tid": 1000, "uid": 0, "comm": "containerd-shim",
                         "comm_hex": null, "kind": "other", "code": "user",
                         "cgroup": {"id": 42, "path": "/system.slice/containerd.service",
                                    "path_hex": null},
                         "kind_from": null});
    v["after_sigterm"] = Value::Null;
    v["part_of_oom_kill"] = json!(part_of_oom_kill);
    v["container"] = json!({"id": format!("{:0<64}", "d"), "runtime": "docker",
                            "name": "web", "image": "nginx:1"});
    v["k8s"] = Value::Null;
    v["container_survives"] = json!(false);
    serde_json::from_value(v).expect("signal_kill")
}

#[test]
fn signal_kills_count_once_and_the_oom_killers_extra_kills_not_at_all() {
    let metrics = Metrics::new(10);
    let mut listener = metrics.listener();
    listener.record(&signal_kill(None));
    listener.record(&signal_kill(Some(7)));
    let text = scrape(&metrics);
    let line = "oomtrace_kills_total{namespace=\"\",pod=\"\",container=\"web\",constraint=\"\",\
                limit_scope=\"\",cause=\"signal_kill\",container_survives=\"false\"} 1";
    assert!(text.contains(line), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("oomtrace_kills_total{"))
            .count(),
        1,
        "{text}"
    );
}

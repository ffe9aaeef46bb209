//! `oomtrace run --metrics-addr` scraped by a real Prometheus (Debian's
//! `prometheus` package, started here with a config of our own), after a
//! real OOM kill; and deploy/alerts.yaml checked and unit-tested by
//! promtool.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    kmsg::Kmsg,
    scenarios::{KILL_TIMEOUT, LIMIT, assert_matches_kernel, assert_sigkilled},
    workload::Workload,
};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
/// How long Prometheus gets to start, and to scrape and evaluate a kill.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository's deploy/ directory.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A port nobody listens on now (the kernel's choice for port 0).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// GET `url`: its status and body, whatever the status.
fn get(url: &str) -> Result<(u16, String), String> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let mut response = agent
        .get(url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("GET {url}: body: {e}"))?;
    Ok((status, body))
}

/// Polls until `found` gives Some, or panics with `what` after the timeout.
fn poll<T>(what: &str, timeout: Duration, mut found: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(value) = found() {
            return value;
        }
        assert!(Instant::now() < end, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A Prometheus server of this test's own: its config and TSDB in a
/// temporary directory, listening on a free port of 127.0.0.1. Dropping it
/// kills the process it started (by its pid) and removes the directory.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Prometheus {
    /// Scrapes `target` every second and evaluates deploy/alerts.yaml.
    fn start(target: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("oomtrace-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("mkdir the TSDB directory");
        let rules = deploy_dir().join("alerts.yaml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: oomtrace\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(PROMETHEUS)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {PROMETHEUS} (cargo xtask setup installs Debian's prometheus): {e}")
            });
        let prometheus = Self { child, dir, port };
        poll("Prometheus ready", PROMETHEUS_TIMEOUT, || {
            matches!(prometheus.get("/-/ready"), Ok((200, _))).then_some(())
        });
        prometheus
    }

    fn get(&self, path: &str) -> Result<(u16, String), String> {
        get(&format!("http://127.0.0.1:{}{path}", self.port))
    }

    /// An instant query through the HTTP API: its result vector.
    fn query(&self, promql: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", url_escape(promql));
        let (status, body) = self.get(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "{promql}: {body}");
        let answer: Value = serde_json::from_str(&body).expect("the API answers JSON");
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("prometheus's log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The few characters a PromQL query in this test needs escaped in a URL.
fn url_escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ' ' => "%20".to_string(),
            '"' => "%22".to_string(),
            '{' => "%7B".to_string(),
            '}' => "%7D".to_string(),
            '=' => "%3D".to_string(),
            '+' => "%2B".to_string(),
            '&' => "%26".to_string(),
            '/' => "%2F".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// A real OOM kill in a test cgroup, seen through Prometheus: the query
/// `oomtrace_kills_total` returns it with the record's labels and the
/// kernel's count, the ContainerOOMKilled alert of deploy/alerts.yaml fires
/// for it (a series born at 1), /healthz answers 200, and `promtool check
/// metrics` passes on a scrape of /metrics.
pub fn prometheus_sees_a_real_kill(env: &Env) {
    let cg = MemCgroup::create("metrics", Some(LIMIT));
    let addr = format!("127.0.0.1:{}", free_port());
    let mut collector = Collector::start(env, &["--metrics-addr", &addr]);
    let (status, body) = get(&format!("http://{addr}/healthz")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((status, body.as_str()), (200, "ok\n"), "healthz");
    let prometheus = Prometheus::start(&addr);
    let up = poll("Prometheus scrapes oomtrace", PROMETHEUS_TIMEOUT, || {
        let up = prometheus.query("up{job=\"oomtrace\"}");
        up.first().filter(|u| u["value"][1] == "1").cloned()
    });
    assert_eq!(up["metric"]["instance"], addr.as_str(), "{up}");

    let mut kmsg = Kmsg::open();
    let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str()]);
    assert_sigkilled(victim.wait(), "the allocator");
    let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
    assert_matches_kernel(&record, &kernel);
    assert_eq!(kernel.reason, "Memory cgroup out of memory");

    // Outside a container and a unit, the series is named by the victim's
    // cgroup path.
    let path = record["victim"]["cgroup"]["path"]
        .as_str()
        .expect("the victim's cgroup path")
        .to_string();
    assert_eq!(path, cg.path, "{record}");
    let query = format!("oomtrace_kills_total{{container=\"{path}\"}}");
    let series = poll("the kill in Prometheus", PROMETHEUS_TIMEOUT, || {
        prometheus.query(&query).first().cloned()
    });
    let labels = &series["metric"];
    eprintln!("{series}");
    assert_eq!(labels["cause"], "oom_kill", "{series}");
    assert_eq!(labels["constraint"], "memcg", "{series}");
    let context = kernel.context.as_ref().expect("the oom-kill: line");
    assert_eq!(
        context.constraint, "CONSTRAINT_MEMCG",
        "the kernel's constraint"
    );
    assert_eq!(
        labels["limit_scope"], record["oom"]["limit_scope"],
        "{series}"
    );
    assert_eq!(labels["limit_scope"], "cgroup", "{series}");
    let survives = match &record["container_survives"] {
        Value::Bool(b) => b.to_string(),
        _ => "unknown".to_string(),
    };
    assert_eq!(labels["container_survives"], survives.as_str(), "{series}");
    // Not in Kubernetes: no namespace or pod label at all.
    assert_eq!(labels.get("namespace"), None, "{series}");
    assert_eq!(labels.get("pod"), None, "{series}");
    assert_eq!(labels["job"], "oomtrace", "{series}");
    assert_eq!(series["value"][1], "1", "one kill: {series}");
    assert_eq!(
        cg.oom_kills(),
        1,
        "the kernel counted one kill in the cgroup"
    );

    // The alert for a series born at 1, which increase() alone misses.
    let alert = poll("ContainerOOMKilled firing", PROMETHEUS_TIMEOUT, || {
        let (status, body) = prometheus.get("/api/v1/alerts").ok()?;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        answer["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| {
                a["labels"]["alertname"] == "ContainerOOMKilled"
                    && a["labels"]["container"] == path.as_str()
                    && a["state"] == "firing"
            })
            .cloned()
    });
    let value: f64 = alert["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("the alert's value");
    assert_eq!(value, 1.0, "one kill: {alert}");

    // The collector's own series.
    let attached = prometheus.query("oomtrace_probe_attached == 1");
    assert!(
        attached
            .iter()
            .any(|s| s["metric"]["probe"] == "mark_victim"),
        "{attached:?}"
    );
    let lost = prometheus.query("sum(oomtrace_lost_records_total)");
    assert_eq!(lost[0]["value"][1], "0", "{lost:?}");
    for name in [
        "oomtrace_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "oomtrace_thread_cpu_seconds_total{thread=\"sampler\"}",
    ] {
        assert!(!prometheus.query(name).is_empty(), "{name} in Prometheus");
    }

    let (status, scrape) = get(&format!("http://{addr}/metrics")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 200, "{scrape}");
    // The README's scrape excerpt comes from here (`--nocapture`).
    eprintln!("scrape after the kill:\n{scrape}");
    promtool_check_metrics(&scrape);

    drop(prometheus);
    let status = collector.stop_with(libc::SIGTERM);
    assert!(status.success(), "collector: {status}");
    collector.assert_nothing_lost();
}

/// `promtool check metrics` on a scrape: it must pass with nothing to say.
fn promtool_check_metrics(scrape: &str) {
    use std::io::Write as _;
    let mut check = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {PROMTOOL}: {e}"));
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("write the scrape to promtool");
    let out = check.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics: {said}\n{scrape}"
    );
    assert_eq!(
        said.trim(),
        "",
        "promtool has remarks on the scrape:\n{scrape}"
    );
}

/// deploy/alerts.yaml passes `promtool check rules`, and its unit tests
/// (deploy/alerts_test.yaml, with the series born at 1) pass `promtool test
/// rules`. Needs no root.
pub fn alert_rules_pass_promtool() {
    let deploy = deploy_dir();
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts_test.yaml"],
    ] {
        let out = Command::new(PROMTOOL)
            .args(args)
            .current_dir(&deploy)
            .output()
            .unwrap_or_else(|e| {
                panic!("run {PROMTOOL} (cargo xtask setup installs Debian's prometheus): {e}")
            });
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

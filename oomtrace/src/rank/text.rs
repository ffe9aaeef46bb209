//! The text screen of `oomtrace rank`: at most 120 columns, sizes as
//! `free -h` writes them.

use std::fmt::Write as _;

use oomtrace_record::{RankMemcg, RankProcess, RankSkip, text::human_bytes};

use super::Pass;

/// The widest line written.
pub const WIDTH: usize = 120;

/// `value` in at most `width` characters: the end kept (paths), a `…`
/// where the rest was.
fn tail(value: &str, width: usize) -> String {
    let count = value.chars().count();
    if count <= width {
        return value.to_string();
    }
    let kept: String = value.chars().skip(count - (width - 1)).collect();
    format!("…{kept}")
}

/// `value` in at most `width` characters: the start kept (names).
fn head(value: &str, width: usize) -> String {
    if value.chars().count() <= width {
        return value.to_string();
    }
    let kept: String = value.chars().take(width - 1).collect();
    format!("{kept}…")
}

fn size(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "?".into(), human_bytes)
}

/// Who a process or memcg belongs to, shortest first: pod, container,
/// systemd unit, else the memcg path.
fn owner(
    container: Option<&oomtrace_record::Container>,
    k8s: Option<&oomtrace_record::K8s>,
    unit: Option<&str>,
    path: Option<&str>,
) -> String {
    if let Some(k8s) = k8s {
        let pod = match (&k8s.namespace, &k8s.pod) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
            _ => format!("pod {}", k8s.pod_uid.as_deref().unwrap_or("?")),
        };
        let qos = k8s
            .qos
            .map(oomtrace_record::text::spelled)
            .unwrap_or_default();
        return match &k8s.container {
            Some(c) => format!("{pod}/{c} {qos}"),
            None => format!("{pod} {qos}"),
        };
    }
    if let Some(c) = container {
        let runtime = c
            .runtime
            .map(oomtrace_record::text::spelled)
            .unwrap_or_default();
        let name = c.name.clone().unwrap_or_else(|| c.id[..12].to_string());
        return format!("{runtime} {name}");
    }
    if let Some(unit) = unit {
        return unit.to_string();
    }
    path.unwrap_or("?").to_string()
}

fn memcg_line(out: &mut String, m: &RankMemcg) {
    let victim = match &m.next_victim {
        None => "none killable".to_string(),
        Some(v) => {
            let ties = if m.tied_with.is_empty() {
                String::new()
            } else {
                format!(" TIE×{}", m.tied_with.len() + 1)
            };
            format!("{} {}{ties}", v.pid, head(&v.comm, 15))
        }
    };
    let percent = m
        .headroom_percent
        .map_or_else(|| "?".into(), |p| format!("{p:.1}%"));
    let _ = writeln!(
        out,
        "{:<34} {:>9} {:>9} {:>9} {:>6} {:>9} {:>5}  {}",
        tail(&m.path, 34),
        size(m.usage_bytes),
        human_bytes(m.limit_bytes),
        size(m.headroom_bytes),
        percent,
        size(m.working_set_bytes),
        m.processes,
        head(&victim, 31),
    );
}

fn process_line(out: &mut String, p: &RankProcess) {
    let rank = match (p.node_rank, p.skipped) {
        (Some(r), _) => r.to_string(),
        (None, Some(RankSkip::AdjMin)) => "never".into(),
        (None, Some(RankSkip::Init)) => "init".into(),
        (None, Some(RankSkip::NoMemory)) => "-".into(),
        _ => "?".into(),
    };
    let where_ = owner(
        p.container.as_ref(),
        p.k8s.as_ref(),
        p.systemd_unit.as_deref(),
        p.memcg_path.as_deref(),
    );
    let _ = writeln!(
        out,
        "{:>5} {:>8} {:<15} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9} {:>8} {}",
        rank,
        p.pid,
        head(&p.comm, 15),
        p.oom_score.map_or_else(|| "?".into(), |s| s.to_string()),
        p.oom_score_adj
            .map_or_else(|| "?".into(), |a| a.to_string()),
        size(p.rss_anon_bytes),
        size(p.rss_file_bytes),
        size(p.rss_shmem_bytes),
        size(p.swap_bytes),
        size(p.page_tables_bytes),
        tail(&where_, 27),
    );
}

/// The whole screen of one pass.
pub fn render(pass: &Pass) -> String {
    let mut out = String::new();
    let n = &pass.node;
    let _ = writeln!(
        out,
        "{}",
        head(
            &format!(
                "oomtrace rank: {} processes; node: {} RAM + {} swap = {} pages (1 adj point = {} \
                 pages)",
                pass.seen,
                human_bytes(n.ram_bytes),
                human_bytes(n.swap_bytes),
                n.total_pages,
                n.total_pages / 1000,
            ),
            WIDTH
        )
    );
    out.push('\n');
    let _ = writeln!(
        out,
        "Memory cgroups with a limit: who the kernel kills if it is hit now ({})",
        pass.memcgs.len()
    );
    let _ = writeln!(
        out,
        "{:<34} {:>9} {:>9} {:>9} {:>6} {:>9} {:>5}  NEXT VICTIM",
        "MEMCG", "USAGE", "LIMIT", "HEADROOM", "%", "WSET", "PROCS"
    );
    for m in &pass.memcgs {
        memcg_line(&mut out, m);
    }
    if let Some(path) = &pass.cgroup
        && let Some(m) = pass.memcgs.iter().find(|m| &m.path == path)
    {
        out.push('\n');
        let _ = writeln!(
            out,
            "{}",
            head(
                &format!(
                    "Kill order in {} (totalpages {}; badness = rss + swap + page tables + adj × \
                     {}, in pages)",
                    m.path,
                    m.total_pages,
                    m.total_pages / 1000
                ),
                WIDTH
            )
        );
        let _ = writeln!(
            out,
            "{:>5} {:>8} {:<15} {:>5} {:>12}",
            "#", "PID", "COMM", "ADJ", "BADNESS"
        );
        let first = m.next_victim.as_ref().map(|v| v.badness);
        for (i, c) in m.order.iter().enumerate() {
            let tie = if Some(c.badness) == first && m.next_victim.as_ref() != Some(c) {
                "  tie: the kernel's task order decides"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{:>5} {:>8} {:<15} {:>5} {:>12}{tie}",
                i + 1,
                c.pid,
                head(&c.comm, 15),
                c.oom_score_adj,
                c.badness
            );
        }
    }
    out.push('\n');
    let title = format!(
        "Processes{}: the order of a node-wide OOM (RANK 1 dies first; SCORE = /proc/PID/oom_score)",
        pass.cgroup
            .as_deref()
            .map(|c| format!(" in {}", tail(c, 30)))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "{}", head(&title, WIDTH));
    let _ = writeln!(
        out,
        "{:>5} {:>8} {:<15} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9} {:>8} CONTAINER/POD/MEMCG",
        "RANK", "PID", "COMM", "SCORE", "ADJ", "ANON", "FILE", "SHMEM", "SWAP", "PTE",
    );
    for p in &pass.processes {
        process_line(&mut out, p);
    }
    for problem in &pass.problems {
        let _ = writeln!(out, "{}", head(&format!("note: {problem}"), WIDTH));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long paths, names and figures still fit 120 columns.
    #[test]
    fn every_line_fits_the_width() {
        use oomtrace_record::{Origin, RankCandidate, RankMemcg, RankProcess};
        let path = format!(
            "/kubepods/burstable/pod{}/{}",
            "a".repeat(36),
            "b".repeat(64)
        );
        let candidate = RankCandidate {
            pid: 4_194_304,
            comm: "a-very-long-process-name".into(),
            oom_score_adj: -999,
            badness: -6_000_000_000,
        };
        let memcg = RankMemcg {
            schema: 1,
            origin: Origin::default(),
            time: String::new(),
            boot_ns: 0,
            path: path.clone(),
            usage_bytes: Some(999 << 40),
            limit_bytes: 1000 << 40,
            headroom_bytes: Some(1 << 40),
            headroom_percent: Some(0.1),
            working_set_bytes: Some(999 << 40),
            total_pages: u64::MAX,
            processes: 4_000_000,
            next_victim: Some(candidate.clone()),
            tied_with: vec![candidate.clone(); 3],
            runner_up: None,
            margin_pages: None,
            order: vec![candidate.clone(); 4],
            container: None,
            k8s: None,
        };
        let process = RankProcess {
            schema: 1,
            origin: Origin::default(),
            time: String::new(),
            boot_ns: 0,
            pid: 4_194_304,
            comm: "a-very-long-process-name".into(),
            oom_score: Some(2000),
            oom_score_adj: Some(-1000),
            rss_anon_bytes: Some(1023 << 30),
            rss_file_bytes: Some(1023 << 30),
            rss_shmem_bytes: Some(1023 << 30),
            swap_bytes: Some(1023 << 30),
            page_tables_bytes: Some(1023 << 20),
            node_badness: None,
            node_rank: None,
            skipped: Some(RankSkip::AdjMin),
            memcg_path: Some(path.clone()),
            container: None,
            k8s: None,
            systemd_unit: None,
            unreadable: Vec::new(),
        };
        let pass = Pass {
            processes: vec![process],
            memcgs: vec![memcg],
            cgroup: Some(path),
            seen: 4_000_000,
            node: super::super::NodeFacts {
                ram_bytes: 1 << 50,
                swap_bytes: 1 << 50,
                total_pages: 1 << 40,
                page_size: 4096,
            },
            problems: vec!["x".repeat(300)],
        };
        let screen = render(&pass);
        assert!(screen.contains("TIE×4"), "{screen}");
        for line in screen.lines() {
            assert!(
                line.chars().count() <= WIDTH,
                "{} columns: {line}",
                line.chars().count()
            );
        }
    }

    #[test]
    fn cut_to_width() {
        assert_eq!(tail("/kubepods/burstable/pod1234", 10), "…e/pod1234");
        assert_eq!(tail("/a", 10), "/a");
        assert_eq!(head("postgres-writer", 8), "postgre…");
        assert_eq!(head("ab", 8), "ab");
    }
}

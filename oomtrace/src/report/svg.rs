//! `oomtrace report --svg FILE`: one row per subject (most telling first,
//! at most [`MAX_ROWS`]): its kills on a shared time axis, a marker per
//! kill coloured by cause (stacked where kills are too close to tell
//! apart), and, under it, the memory history its records carry for its
//! latest kills (about a minute before each: usage, anon and file against
//! the limit that fired).

use std::fmt::Write as _;

use super::{
    analysis::seconds,
    model::{KillMark, Report, Subject},
    text::short_time,
};

pub const MAX_ROWS: usize = 12;
const WIDTH: f64 = 1000.0;
const X0: f64 = 240.0;
const X1: f64 = 980.0;
const ROW: f64 = 175.0;
const TOP: f64 = 100.0;
const R: f64 = 5.0;
/// Lanes markers stack in when kills are closer than a marker's width.
const LANES: usize = 4;
const CHARTS: usize = 4;
const CHART_W: f64 = 165.0;
const CHART_H: f64 = 80.0;

/// Marker colours by cause; no line or text uses them.
pub const CAUSES: [(&str, &str, &str); 3] = [
    ("kernel_oom_memcg", "#d62728", "kernel OOM, cgroup limit"),
    ("kernel_oom_node", "#9467bd", "kernel OOM, node-wide"),
    ("userspace_oom_killer", "#e377c2", "userspace OOM killer"),
];
const USAGE: &str = "#1f77b4";
const ANON: &str = "#2ca02c";
const FILE: &str = "#bcbd22";
const LIMIT: &str = "#444444";

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn color(cause: &str) -> &'static str {
    CAUSES
        .iter()
        .find(|c| c.0 == cause)
        .map_or("#8c564b", |c| c.1)
}

/// The chart as SVG text.
pub fn render(r: &Report) -> String {
    let rows: Vec<&Subject> = r
        .subjects
        .iter()
        .filter(|s| !s.timeline.is_empty())
        .take(MAX_ROWS)
        .collect();
    let height = TOP + ROW * rows.len().max(1) as f64 + 40.0;
    let t0 = r.first.as_deref().and_then(seconds).unwrap_or(0.0);
    let t1 = r.last.as_deref().and_then(seconds).unwrap_or(t0);
    let x_of = |t: f64| {
        if t1 - t0 < 1e-9 {
            (X0 + X1) / 2.0
        } else {
            X0 + (t - t0) / (t1 - t0) * (X1 - X0)
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let title = match (&r.first, &r.last) {
        (Some(a), Some(b)) => format!("Kills per subject, {} to {}", short_time(a), short_time(b)),
        _ => "Kills per subject".to_string(),
    };
    let _ = writeln!(
        out,
        r#"<text x="10" y="22" font-size="16" font-weight="bold">{}</text>"#,
        esc(&title)
    );
    legend(&mut out);
    axis(&mut out, t0, t1, &x_of, height);
    for (i, s) in rows.iter().enumerate() {
        row(&mut out, s, TOP + ROW * i as f64, &x_of);
    }
    if rows.is_empty() {
        let _ = writeln!(out, r#"<text x="{X0}" y="{}">No kills.</text>"#, TOP + 30.0);
    }
    let _ = writeln!(
        out,
        r##"<text x="10" y="{}" fill="#555">Memory charts: the window before each kill that its record carries (memory.history), MiB over seconds before the kill; dashed: the limit that fired.</text>"##,
        height - 14.0
    );
    out.push_str("</svg>\n");
    out
}

fn legend(out: &mut String) {
    let mut x = 10.0;
    for (_, fill, label) in CAUSES {
        let _ = writeln!(
            out,
            r#"<circle cx="{}" cy="42" r="{R}" fill="{fill}"/><text x="{}" y="46">{label}</text>"#,
            x + R,
            x + 2.0 * R + 4.0
        );
        x += 190.0;
    }
    for (stroke, label, dash) in [
        (USAGE, "usage", ""),
        (ANON, "anon", ""),
        (FILE, "file", ""),
        (LIMIT, "limit", r#" stroke-dasharray="4 3""#),
    ] {
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="42" x2="{}" y2="42" stroke="{stroke}" stroke-width="2"{dash}/><text x="{}" y="46">{label}</text>"#,
            x + 18.0,
            x + 22.0
        );
        x += 70.0;
    }
}

fn axis(out: &mut String, t0: f64, t1: f64, x_of: &dyn Fn(f64) -> f64, height: f64) {
    let y = TOP - 22.0;
    let _ = writeln!(
        out,
        r##"<line x1="{X0}" y1="{y}" x2="{X1}" y2="{y}" stroke="black"/><text x="{}" y="{}" text-anchor="end" fill="#555">time (UTC)</text>"##,
        X0 - 45.0,
        y - 4.0
    );
    let ticks = if t1 - t0 < 1e-9 { 1 } else { 5 };
    for k in 0..ticks {
        let t = if ticks == 1 {
            t0
        } else {
            t0 + (t1 - t0) * k as f64 / (ticks - 1) as f64
        };
        let x = x_of(t);
        // Milliseconds when the whole period is shorter than a minute.
        let format = if t1 - t0 < 60.0 {
            "%H:%M:%S%.3f"
        } else {
            "%m-%d %H:%M:%S"
        };
        let nanos = ((t - t.floor()) * 1e9) as u32;
        let label = chrono::DateTime::from_timestamp(t.floor() as i64, nanos)
            .map(|d| d.format(format).to_string())
            .unwrap_or_default();
        // The last label ends at the axis' end, within the picture.
        let anchor = if ticks > 1 && k == ticks - 1 {
            "end"
        } else {
            "middle"
        };
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{y}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="{anchor}">{label}</text>"##,
            height - 30.0,
            y - 4.0
        );
    }
}

fn row(out: &mut String, s: &Subject, y: f64, x_of: &dyn Fn(f64) -> f64) {
    let name: String = s.name.chars().take(34).collect();
    let _ = writeln!(
        out,
        r#"<text x="10" y="{}" font-weight="bold">{}</text><text x="10" y="{}">{} kill{}, growth {}</text>"#,
        y + 14.0,
        esc(&name),
        y + 30.0,
        s.timeline.len(),
        if s.timeline.len() == 1 { "" } else { "s" },
        esc(&s.growth)
    );
    let base = y + 10.0;
    let _ = writeln!(
        out,
        r##"<line x1="{X0}" y1="{base}" x2="{X1}" y2="{base}" stroke="#999"/>"##
    );
    let mut lanes = [f64::NEG_INFINITY; LANES];
    for mark in &s.timeline {
        let want = mark.time.as_str();
        let x = seconds(want).map_or(X0, x_of);
        let gap = 2.0 * R + 2.0;
        let (lane, x) = match lanes.iter().position(|last| x - *last >= gap) {
            Some(lane) => (lane, x),
            None => {
                let (lane, last) = lanes
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1.total_cmp(b.1))
                    .map_or((0, X0), |(i, l)| (i, *l));
                (lane, last + gap)
            }
        };
        lanes[lane] = x;
        let _ = writeln!(
            out,
            r#"<circle class="kill" data-cause="{}" cx="{x:.1}" cy="{}" r="{R}" fill="{}"><title>{} {}</title></circle>"#,
            esc(&mark.cause),
            base + gap * lane as f64,
            color(&mark.cause),
            esc(&short_time(&mark.time)),
            esc(&mark.cause)
        );
    }
    let with_history: Vec<&KillMark> = s
        .timeline
        .iter()
        .filter(|m| !m.history.is_empty())
        .collect();
    let latest = &with_history[with_history.len().saturating_sub(CHARTS)..];
    let top = y + 70.0;
    if latest.is_empty() {
        let _ = writeln!(
            out,
            r##"<text x="{X0}" y="{}" fill="#555">no memory history in these records (sampler off, or the cgroup was too young)</text>"##,
            top + 30.0
        );
    }
    for (j, mark) in latest.iter().enumerate() {
        chart(out, mark, X0 + j as f64 * (CHART_W + 20.0), top);
    }
}

/// One kill's memory window: MiB over seconds before the kill.
fn chart(out: &mut String, mark: &KillMark, x: f64, y: f64) {
    let h = &mark.history;
    let span_ms = h.iter().map(|p| p[0]).max().unwrap_or(0).max(1000) as f64;
    let top = h
        .iter()
        .map(|p| p[1])
        .chain(mark.limit_bytes)
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let px = |ms: u64| x + CHART_W - ms as f64 / span_ms * CHART_W;
    let py = |bytes: u64| y + CHART_H - bytes as f64 / top * CHART_H;
    let bottom = y + CHART_H;
    let _ = writeln!(
        out,
        r##"<rect x="{x}" y="{y}" width="{CHART_W}" height="{CHART_H}" fill="none" stroke="#bbb"/>"##
    );
    for (i, stroke) in [(1, USAGE), (2, ANON), (3, FILE)] {
        let points: Vec<String> = h
            .iter()
            .map(|p| format!("{:.1},{:.1}", px(p[0]), py(p[i])))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{stroke}" stroke-width="1.5"/>"#,
            points.join(" ")
        );
    }
    if let Some(limit) = mark.limit_bytes {
        let ly = py(limit);
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="{ly:.1}" x2="{}" y2="{ly:.1}" stroke="{LIMIT}" stroke-dasharray="4 3"/>"#,
            x + CHART_W
        );
    }
    let top_mib = top / 1048576.0;
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" font-size="10" text-anchor="end">{:.0}</text><text x="{}" y="{bottom}" font-size="10" text-anchor="end">0</text><text x="{}" y="{}" font-size="10" fill="#555">MiB</text>"##,
        x - 2.0,
        y + 9.0,
        top_mib / 1.1 * 1.1,
        x - 2.0,
        x + 2.0,
        y + 10.0
    );
    let _ = writeln!(
        out,
        r##"<text x="{x}" y="{}" font-size="10">-{:.0}s</text><text x="{}" y="{}" font-size="10" text-anchor="end">0s (kill {})</text>"##,
        bottom + 12.0,
        span_ms / 1000.0,
        x + CHART_W,
        bottom + 12.0,
        esc(short_time(&mark.time).get(11..19).unwrap_or(""))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_marker_per_kill_and_escaped_names() {
        let mark = |t: &str, cause: &str| KillMark {
            time: t.into(),
            cause: cause.into(),
            limit_bytes: Some(64 << 20),
            history: vec![
                [3000, 10 << 20, 9 << 20, 1 << 20],
                [0, 60 << 20, 59 << 20, 1 << 20],
            ],
        };
        let mut r = Report {
            first: Some("2026-12-05T00:00:00Z".into()),
            last: Some("2026-12-05T01:00:00Z".into()),
            ..Report::default()
        };
        let s = Subject {
            kind: super::super::model::SubjectKind::Cgroup,
            name: "a<b>&c".into(),
            nodes: vec![],
            container_ids: vec![],
            image: None,
            namespace: None,
            pod: None,
            qos: None,
            cgroup: None,
            causes: Default::default(),
            kills: 3,
            first: None,
            last: None,
            victims: vec![],
            triggers: vec![],
            limit_bytes: None,
            limit_scope: None,
            limit_memcg: None,
            max_rss_bytes: None,
            max_working_set_bytes: None,
            growth: "leak".into(),
            growth_slope_bytes_per_s: None,
            container_died: 0,
            child_killed: 0,
            crash_loop: None,
            advice: super::super::advice::placeholder(),
            timeline: vec![
                mark("2026-12-05T00:10:00Z", "kernel_oom_memcg"),
                mark("2026-12-05T00:10:00.5Z", "kernel_oom_memcg"),
                mark("2026-12-05T00:50:00Z", "kernel_oom_node"),
            ],
            timeline_dropped: 0,
        };
        r.subjects.push(s);
        let svg = render(&r);
        assert_eq!(svg.matches(r#"class="kill""#).count(), 3, "{svg}");
        assert!(svg.contains("a&lt;b&gt;&amp;c"));
        assert!(!svg.contains("a<b>"));
        assert_eq!(svg.matches("<polyline").count(), 9, "three lines per chart");
        assert!(svg.contains(">12-05 01:00:00</text>"), "the axis' end");
        r.last = Some("2026-12-05T00:00:10Z".into());
        let svg = render(&r);
        assert!(svg.contains(">00:00:10.000</text>"), "ms when short: {svg}");
    }
}

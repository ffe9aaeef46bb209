//! Medians, percentiles, formatting, and the table and JSON they end in.

use std::time::Duration;

use serde_json::{Value, json};

use crate::tool::Tool;

pub(crate) fn ns_to_ms(later: u64, earlier: u64) -> f64 {
    (later as f64 - earlier as f64) / 1e6
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[derive(Default)]
pub(crate) struct Samples {
    pub(crate) o: Vec<f64>,
    pub(crate) b: Vec<f64>,
}

impl Samples {
    pub(crate) fn push(&mut self, tool: Tool, value: f64) {
        match tool {
            Tool::Oomtrace => self.o.push(value),
            Tool::Bpftrace => self.b.push(value),
        }
    }
}

pub(crate) fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

/// Linear interpolation between closest ranks; NaN for no values.
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n => {
            let rank = p / 100.0 * (n - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

pub(crate) fn fmt_ms(v: f64) -> String {
    match v {
        v if v.is_nan() => "-".into(),
        v if v < 10.0 => format!("{v:.2} ms"),
        v if v < 100.0 => format!("{v:.1} ms"),
        v => format!("{v:.0} ms"),
    }
}

pub(crate) fn fmt_mib(kb: f64) -> String {
    format!("{:.1} MiB", kb / 1024.0)
}

pub(crate) fn ratio_text(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 {
        String::new()
    } else {
        format!("{:.2}", a / b)
    }
}

/// The table rows and the JSON document, filled in as figures are measured.
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<[String; 6]>,
    pub(crate) json: serde_json::Map<String, Value>,
}

impl Report {
    pub(crate) fn row(
        &mut self,
        figure: &str,
        o: &str,
        b: &str,
        ratio: &str,
        target: &str,
        met: Option<bool>,
    ) {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "NO",
            // A target, but a figure too noisy to hold against it.
            None if !target.is_empty() => "noise",
            None => "",
        };
        let row = [figure, o, b, ratio, target, met].map(str::to_string);
        println!("measured: {}", row.join(" | "));
        self.rows.push(row);
    }

    pub(crate) fn finish(mut self, out: &std::path::Path) {
        let header =
            ["figure", "oomtrace", "bpftrace", "ratio", "target", "met"].map(str::to_string);
        let widths = [40, 16, 16, 7, 9, 5];
        println!();
        for row in std::iter::once(&header).chain(&self.rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("{}", cells.join(" ").trim_end());
        }
        let table: Vec<Value> = self.rows.iter().map(|r| json!(r)).collect();
        self.json
            .insert("table".into(), json!({"columns": header, "rows": table}));
        let text = serde_json::to_string_pretty(&Value::Object(self.json)).unwrap();
        std::fs::write(out, text + "\n").unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
        println!("\nraw samples and medians: {}", out.display());
    }
}

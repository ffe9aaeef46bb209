//! `oomtrace report`: parses its arguments and wires `crate::report`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use crate::report::{self, Filters, Options};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Files or directories (read recursively) of records, plain or gzip,
    /// as oomtrace wrote them or wrapped by a log pipeline (Docker
    /// json-file, CRI logs, `journalctl -o json`, exports with a `log` or
    /// `message` field). `-` or nothing: stdin.
    #[arg(value_name = "FILE|DIR|-")]
    pub inputs: Vec<PathBuf>,
    /// The dotted path of the record in each JSON line (`log`,
    /// `kubernetes.log`), instead of detecting the wrapper per line.
    #[arg(long, value_name = "PATH")]
    pub field: Option<String>,
    /// One JSON document instead of text (see --json-schema).
    #[arg(long)]
    pub json: bool,
    /// Also write a chart to FILE (SVG): per subject, its kills on a time
    /// axis, coloured by cause, and the memory history of its latest kills
    /// against the limit.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Print the JSON Schema of --json's document and exit.
    #[arg(long)]
    pub json_schema: bool,
    /// Print the field table of --json's document (docs/report.md, as
    /// `cargo xtask docs` writes it) and exit.
    #[arg(long, hide = true)]
    pub json_schema_markdown: bool,
    /// Stop at the first malformed line, too-long line or read error, with
    /// exit status 2 (default: say it on stderr, skip it, count it).
    #[arg(long)]
    pub strict: bool,
    /// A crash loop: this many kills of the same subject ...
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub loop_count: u64,
    /// ... within this window.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub loop_window: std::time::Duration,
    /// Only records at or after this time: RFC 3339, or a duration ago
    /// (`2h`).
    #[arg(long, value_parser = report::parse_time, value_name = "TIME")]
    pub since: Option<f64>,
    /// Only records at or before this time (as --since).
    #[arg(long, value_parser = report::parse_time, value_name = "TIME")]
    pub until: Option<f64>,
    /// Only this node (the records' `hostname`).
    #[arg(long, value_name = "HOSTNAME")]
    pub node: Option<String>,
    /// Only kills in pods of this Kubernetes namespace.
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Only kills in this pod.
    #[arg(long, value_name = "POD")]
    pub pod: Option<String>,
    /// Only kills in this container: its name (runtime's or pod spec's) or
    /// a prefix of its id (4 characters at least).
    #[arg(long, value_name = "NAME|ID")]
    pub container: Option<String>,
}

pub fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    if args.json_schema_markdown {
        print!("{}", report::json_schema_markdown());
        return Ok(ExitCode::SUCCESS);
    }
    if args.json_schema {
        println!("{}", serde_json::to_string_pretty(&report::json_schema())?);
        return Ok(ExitCode::SUCCESS);
    }
    let options = Options {
        inputs: args.inputs,
        field: args.field,
        strict: args.strict,
        loop_count: args.loop_count,
        loop_window_s: args.loop_window.as_secs_f64(),
        filters: Filters {
            since: args.since,
            until: args.until,
            node: args.node,
            namespace: args.namespace,
            pod: args.pod,
            container: args.container,
        },
    };
    let outcome = report::run(&options, &mut std::io::stderr()).context("reading the records")?;
    if let Some(path) = &args.svg {
        std::fs::write(path, report::svg::render(&outcome.report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let text = if args.json {
        serde_json::to_string_pretty(&outcome.report)?
    } else {
        report::text::render(&outcome.report)
    };
    println!("{}", text.trim_end());
    Ok(if outcome.strict_failure {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

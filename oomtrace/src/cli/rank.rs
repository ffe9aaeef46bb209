//! `oomtrace rank`: parses its arguments and wires `crate::rank`.

use std::{io::Write as _, process::ExitCode, time::Duration};

use anyhow::Context as _;

use crate::rank::{Options, Ranker, SortBy, render};

#[derive(Debug, clap::Args)]
pub struct RankArgs {
    /// NDJSON instead of text: one `rank_memcg` record per memory cgroup
    /// with a limit, then one `rank_process` per process (see `oomtrace
    /// schema`).
    #[arg(long)]
    pub json: bool,
    /// At most N processes and N memcgs (and N tasks in each memcg's kill
    /// order). Text shows 20 by default, --json all.
    #[arg(long, value_name = "N")]
    pub top: Option<usize>,
    /// Only this memory cgroup and its descendants: its path from the
    /// hierarchy's root (`/docker/ID`, as /proc/PID/cgroup shows it) or its
    /// directory (`/sys/fs/cgroup/memory/docker/ID`). Text then also shows
    /// its whole kill order.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Row order: `score` (processes in kill order, memcgs by headroom),
    /// `headroom` (closest to a limit first), `rss` (largest first).
    #[arg(long, value_enum, default_value_t, value_name = "BY")]
    pub sort: SortBy,
    /// Again every SECS seconds until interrupted: the screen is redrawn in
    /// place on a terminal; --json appends each pass's records.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub watch: Option<Duration>,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.1..=86_400.0).contains(&seconds) {
        return Err("give between 0.1 and 86400 seconds".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub fn rank(args: RankArgs) -> anyhow::Result<ExitCode> {
    let mut ranker = Ranker::new().context("oomtrace rank")?;
    let options = Options {
        cgroup: args.cgroup,
        sort: args.sort,
        top: args.top.or((!args.json).then_some(20)),
    };
    // SAFETY: isatty only inspects the descriptor.
    let terminal = unsafe { libc::isatty(libc::STDOUT_FILENO) } == 1;
    let mut first = true;
    loop {
        let pass = ranker.pass(&options)?;
        let mut text = String::new();
        if args.json {
            for record in pass.records() {
                text.push_str(&serde_json::to_string(&record).context("encoding a record")?);
                text.push('\n');
            }
            for problem in &pass.problems {
                eprintln!("oomtrace rank: {problem}");
            }
        } else {
            if terminal && args.watch.is_some() {
                // Home and clear: the next screen replaces this one.
                text.push_str("\x1b[H\x1b[2J");
            } else if !first {
                text.push('\n');
            }
            text.push_str(&render(&pass));
        }
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => {}
            // The reader went away (`| head`): done, not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(e).context("writing to stdout"),
        }
        first = false;
        match args.watch {
            Some(every) => std::thread::sleep(every),
            None => return Ok(ExitCode::SUCCESS),
        }
    }
}

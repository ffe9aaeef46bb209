//! The `OOMTRACE-MATRIX` lines: parsed per kernel, printed as one table of
//! kernel x attach mode x result, and judged.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

/// One `OOMTRACE-MATRIX` line.
#[derive(Clone, Debug)]
pub struct Line {
    mode: String,
    scenario: String,
    result: String,
    secs: String,
    why: String,
}

/// Everything one kernel reported.
pub struct Row {
    pub kernel: String,
    pub cgroup: String,
    pub in_vm: bool,
    pub lines: Vec<Line>,
    pub done: bool,
    /// How the boot went, when that is news: a retried boot, a VM that died.
    pub notes: Vec<String>,
}

pub fn parse<'a>(lines: impl Iterator<Item = &'a str>, in_vm: bool) -> Row {
    let mut row = Row {
        kernel: String::new(),
        cgroup: String::new(),
        in_vm,
        lines: Vec::new(),
        done: false,
        notes: Vec::new(),
    };
    for line in lines {
        // The console can put kernel output in front of ours on one line.
        let Some(start) = line.find("OOMTRACE-MATRIX") else {
            continue;
        };
        let line = &line[start..];
        if line.starts_with("OOMTRACE-MATRIX-DONE") {
            row.done = true;
            continue;
        }
        let (fields, why) = match line.split_once(" why=") {
            Some((f, w)) => (f, w.to_string()),
            None => (line, String::new()),
        };
        let map: BTreeMap<&str, &str> = fields
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .collect();
        let get = |k: &str| map.get(k).copied().unwrap_or("").to_string();
        row.kernel = get("kernel");
        row.cgroup = get("cgroup");
        row.lines.push(Line {
            mode: get("mode"),
            scenario: get("scenario"),
            result: get("result"),
            secs: get("secs"),
            why,
        });
    }
    row
}

pub fn print_table(rows: &[Row]) {
    println!(
        "\n{:<30} {:<6} {:<12} {:<10} notes",
        "kernel", "cgroup", "mode", "result"
    );
    for row in rows {
        let kernel = format!("{}{}", row.kernel, if row.in_vm { "" } else { " (host)" });
        let mut modes: Vec<&str> = Vec::new();
        for line in &row.lines {
            if !modes.contains(&line.mode.as_str()) {
                modes.push(&line.mode);
            }
        }
        if modes.is_empty() {
            println!(
                "{kernel:<30} {:<6} {:<12} {:<10} did not report",
                row.cgroup, "-", "FAIL"
            );
        }
        for mode in modes {
            let of_mode: Vec<&Line> = row.lines.iter().filter(|l| l.mode == mode).collect();
            let pass = of_mode.iter().filter(|l| l.result == "pass").count();
            let failed: Vec<String> = of_mode
                .iter()
                .filter(|l| l.result == "fail")
                .map(|l| format!("{} ({})", l.scenario, l.why))
                .collect();
            // A mode that does not attach reports one `scenario=-` line; a
            // scenario this kernel cannot run (cgroup v2 only) is n/a alone.
            let mode_na = of_mode
                .iter()
                .find(|l| l.result == "n/a" && l.scenario == "-");
            let skipped: Vec<String> = of_mode
                .iter()
                .filter(|l| l.result == "n/a" && l.scenario != "-")
                .map(|l| format!("{}: n/a ({})", l.scenario, l.why))
                .collect();
            let ran = of_mode.len() - skipped.len();
            let (result, notes) = if let Some(na) = mode_na {
                ("n/a".to_string(), na.why.clone())
            } else if failed.is_empty() {
                let secs: f64 = of_mode
                    .iter()
                    .filter_map(|l| l.secs.parse::<f64>().ok())
                    .sum();
                let mut notes = format!("{secs:.0}s");
                for s in &skipped {
                    notes.push_str("; ");
                    notes.push_str(s);
                }
                (format!("{pass}/{ran} pass"), notes)
            } else {
                (
                    format!("{pass}/{ran} pass"),
                    format!("FAILED: {}", failed.join("; ")),
                )
            };
            println!(
                "{kernel:<30} {:<6} {mode:<12} {result:<10} {notes}",
                row.cgroup
            );
        }
        if !row.done && !row.lines.is_empty() {
            println!(
                "{kernel:<30} {:<6} {:<12} {:<10} the run did not finish",
                row.cgroup, "-", "FAIL"
            );
        }
        for note in &row.notes {
            println!(
                "{kernel:<30} {:<6} {:<12} {:<10} {note}",
                row.cgroup, "-", ""
            );
        }
    }
    println!();
}

/// Fails on any failed scenario, on a run that did not finish, and on a VM
/// kernel that lacks an attach mode: the Debian kernels have them all, so a
/// mode that does not attach there is a bug. The host may lack modes. A
/// scenario n/a on its own (it needs cgroup v1, or the VMs) fails nothing.
pub fn verdict(rows: &[Row]) -> Result<()> {
    let mut problems = Vec::new();
    for row in rows {
        if !row.done {
            let how = row
                .notes
                .last()
                .map(String::as_str)
                .unwrap_or("no reason seen");
            problems.push(format!(
                "{}: the matrix did not finish ({how}); the console's tail is printed above",
                row.kernel
            ));
        }
        for line in &row.lines {
            match line.result.as_str() {
                "pass" => {}
                "n/a" if !row.in_vm => {}
                // One scenario this kernel cannot run (cgroup v1 only, say),
                // not a mode that did not attach (`scenario=-`).
                "n/a" if line.scenario != "-" => {}
                "n/a" => problems.push(format!(
                    "{}: mode {} did not attach: {}",
                    row.kernel, line.mode, line.why
                )),
                _ => problems.push(format!(
                    "{}: {} / {} failed: {}",
                    row.kernel, line.mode, line.scenario, line.why
                )),
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!("the kernel matrix failed:\n  {}", problems.join("\n  "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &[&str] = &[
        "OOMTRACE-MATRIX kernel=6.18 cgroup=v1 mode=raw+fentry scenario=- result=n/a secs=0.0 why=load failed: EPERM",
        "OOMTRACE-MATRIX kernel=6.18 cgroup=v1 mode=raw+off scenario=single_threaded_victim result=pass secs=0.1",
        "OOMTRACE-MATRIX kernel=6.18 cgroup=v1 mode=raw+off scenario=oom_group_takes_the_container result=n/a secs=0.0 why=needs cgroup v2",
        "OOMTRACE-MATRIX-DONE pass=1 fail=0 na=2",
    ];

    #[test]
    fn host_may_lack_attach_modes() {
        let row = parse(HOST.iter().copied(), false);
        assert!(row.done);
        assert_eq!(row.kernel, "6.18");
        assert_eq!(row.lines.len(), 3);
        assert_eq!(row.lines[0].why, "load failed: EPERM");
        verdict(&[row]).expect("n/a on the host is not a failure");
    }

    #[test]
    fn vm_lacking_a_mode_fails() {
        let row = parse(HOST.iter().copied(), true);
        let err = verdict(&[row])
            .expect_err("the VM kernels have every mode")
            .to_string();
        assert!(err.contains("mode raw+fentry did not attach"), "{err}");
    }

    #[test]
    fn vm_scenario_na_is_not_a_missing_mode() {
        let lines = [
            "OOMTRACE-MATRIX kernel=6.1 cgroup=v2 mode=raw+off scenario=hostile_comm result=pass secs=1.7",
            "OOMTRACE-MATRIX kernel=6.1 cgroup=v2 mode=raw+off scenario=marked_while_dying_is_not_an_oom_kill result=n/a secs=0.0 why=needs cgroup v1",
            "OOMTRACE-MATRIX-DONE pass=1 fail=0 na=1",
        ];
        verdict(&[parse(lines.into_iter(), true)]).expect("a scenario n/a in a VM");
    }

    #[test]
    fn console_noise_before_a_line_is_skipped() {
        let lines = [
            "\u{1b}c\u{1b}[?7l\u{1b}[2JOOMTRACE-VM-BOOTED 6.12",
            "[   3.1] random kernel line OOMTRACE-MATRIX kernel=6.12 cgroup=v2 mode=raw+kprobe scenario=hostile_comm result=pass secs=1.7",
            "OOMTRACE-MATRIX-DONE pass=1 fail=0 na=0",
        ];
        let row = parse(lines.into_iter(), true);
        assert!(row.done);
        assert_eq!(row.lines.len(), 1);
        assert_eq!(row.lines[0].scenario, "hostile_comm");
        verdict(&[row]).expect("one pass");
    }

    #[test]
    fn an_unfinished_run_fails_with_its_reason() {
        let mut row = parse(HOST[..2].iter().copied(), false);
        row.notes
            .push("never reached /init: qemu exited (exit status: 0)".into());
        let err = verdict(&[row]).expect_err("no DONE line").to_string();
        assert!(err.contains("did not finish (never reached /init"), "{err}");
    }

    #[test]
    fn a_failed_scenario_fails() {
        let lines = [
            "OOMTRACE-MATRIX kernel=6.1 cgroup=v2 mode=raw+off scenario=hostile_comm result=fail secs=1.0 why=comm mismatch",
            "OOMTRACE-MATRIX-DONE pass=0 fail=1 na=0",
        ];
        let err = verdict(&[parse(lines.into_iter(), true)])
            .expect_err("a scenario failed")
            .to_string();
        assert!(err.contains("hostile_comm failed: comm mismatch"), "{err}");
    }
}

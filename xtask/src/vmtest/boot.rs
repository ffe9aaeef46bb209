//! One VM: qemu boots a kernel with the initramfs; its serial console is
//! read for the matrix lines, saved, and shown when the run fails.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::Instant,
};

use anyhow::{Context as _, Result};

use super::{
    VmOpts,
    table::{Row, parse},
};

/// How many times a VM that never reached our /init is booted. A kernel that
/// dies in early boot under emulation (seen in CI with multi-threaded TCG,
/// see `boot_once`) says nothing about oomtrace, so such a boot is tried
/// once more, and the table says so. A VM that reached /init and then failed
/// is never retried.
const BOOT_ATTEMPTS: usize = 2;

/// Lines of the serial console shown when a VM does not finish.
const CONSOLE_TAIL: usize = 40;

/// Boots `vmlinuz` with the initramfs and collects the matrix lines from its
/// serial console (also saved to target/vmtest/NAME.log, and its tail printed
/// when the run does not finish).
pub fn boot(
    name: &str,
    vmlinuz: &Path,
    initramfs: &Path,
    work: &Path,
    opts: &VmOpts,
) -> Result<Row> {
    let mut attempt = 1;
    loop {
        let console = boot_once(name, vmlinuz, initramfs, work, opts, attempt)?;
        let mut row = parse(console.lines.iter().map(String::as_str), true);
        if !row.done {
            print_console_tail(&console);
        }
        if !console.reached_init && attempt < BOOT_ATTEMPTS {
            println!(
                "  the VM never reached /init ({}); booting it once more",
                console.ending
            );
            attempt += 1;
            continue;
        }
        if row.kernel.is_empty() {
            row.kernel = name.to_string();
        }
        if attempt > 1 {
            row.notes.push(format!(
                "booted {attempt} times: the earlier boots never reached /init"
            ));
        }
        if !row.done {
            row.notes.push(if console.reached_init {
                format!("/init started, then {}", console.ending)
            } else {
                format!("never reached /init: {}", console.ending)
            });
        }
        return Ok(row);
    }
}

/// What one boot printed on its serial console, and how it ended.
struct Console {
    lines: Vec<String>,
    /// Our /init printed OOMTRACE-VM-BOOTED.
    reached_init: bool,
    /// "qemu exited with ...", or the timeout.
    ending: String,
    log_path: PathBuf,
}

fn boot_once(
    name: &str,
    vmlinuz: &Path,
    initramfs: &Path,
    work: &Path,
    opts: &VmOpts,
    attempt: usize,
) -> Result<Console> {
    let mut append = "console=ttyS0 loglevel=1 panic=-1".to_string();
    if let Some(mode) = &opts.mode {
        append.push_str(&format!(" oomtrace.mode={mode}"));
    }
    if let Some(scenario) = &opts.scenario {
        append.push_str(&format!(" oomtrace.scenario={scenario}"));
    }
    // A retry is numbered, in the message and in its log's name.
    let retry = if attempt > 1 {
        format!("attempt{attempt}")
    } else {
        String::new()
    };
    println!(
        "booting {name} (qemu, software emulation; up to {}s) {retry}",
        opts.timeout.as_secs(),
    );
    // /dev/kvm exists on this machine kind, but Debian kernels crash in early
    // boot under it, so this is software emulation. One host thread runs both
    // vCPUs (`thread=single`): with one thread per vCPU, the kernel's live
    // code patching (text_poke_bp's int3 dance) raced here, about one boot in
    // 40 died in early boot with "Oops: int3" in enqueue_timer. The guest
    // still has two CPUs; the matrix takes ~5% longer.
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max",
            "-m",
            "1024",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Bytes, not `lines()`: firmware and a dying kernel can print bytes
        // that are not UTF-8, and `lines()` would stop reading at the first.
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let log_path = if retry.is_empty() {
        work.join(format!("{name}.log"))
    } else {
        work.join(format!("{name}.{retry}.log"))
    };
    let mut log = std::fs::File::create(&log_path)?;
    let deadline = Instant::now() + opts.timeout;
    let mut lines = Vec::new();
    let mut reached_init = false;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches(['\r', '\n']).to_string();
                writeln!(log, "{line}")?;
                // The console can put firmware escapes or kernel output in
                // front of ours on one line.
                if let Some(at) = line.find("OOMTRACE-") {
                    let ours = &line[at..];
                    reached_init |= ours.starts_with("OOMTRACE-VM-BOOTED");
                    println!("  {ours}");
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                println!(
                    "  TIMEOUT after {}s: killing the VM",
                    opts.timeout.as_secs()
                );
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait();
    let ending = if timed_out {
        format!("timed out after {}s", opts.timeout.as_secs())
    } else {
        match status {
            Ok(s) => format!("qemu exited ({s})"),
            Err(e) => format!("qemu's status unknown: {e}"),
        }
    };
    Ok(Console {
        lines,
        reached_init,
        ending,
        log_path,
    })
}

/// The end of the serial console, so a failure in CI explains itself (a
/// kernel panic, a crash of /init) without the log file.
fn print_console_tail(console: &Console) {
    println!(
        "  no OOMTRACE-MATRIX-DONE line ({}); the last lines of the console ({}):",
        console.ending,
        console.log_path.display()
    );
    let from = console.lines.len().saturating_sub(CONSOLE_TAIL);
    for line in &console.lines[from..] {
        println!("  | {}", printable(line));
    }
}

/// `line` without the firmware's terminal escapes (`ESC c`, `ESC [ ... J`)
/// and other control characters, so a CI log shows only text.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // A CSI sequence runs to its final byte, a letter; any other
                // escape is one character long.
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn firmware_escapes_are_dropped() {
        assert_eq!(
            printable("\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS (version 1.16.2)\r"),
            "SeaBIOS (version 1.16.2)"
        );
        assert_eq!(
            printable("[    1.37] Oops: int3: 0000 [#1] PREEMPT SMP"),
            "[    1.37] Oops: int3: 0000 [#1] PREEMPT SMP"
        );
    }
}

//! The command line's numeric arguments against hostile values: every one is
//! either refused with a message or accepted inside its documented bounds,
//! and none panics (issue 12: `--exit-wait 18446744073709551615s` once
//! panicked on the first kill).

use std::time::Duration;

use clap::Parser;

use super::{Cli, Command};

/// Values a user or a templating mistake can produce.
const HOSTILE: &[&str] = &[
    "",
    " ",
    "-",
    "-0",
    "0",
    "1",
    "-1",
    "-5",
    "-5s",
    "+5s",
    "5",
    "5s",
    " 5s",
    "5s ",
    "0s",
    "1ns",
    "999999999ns",
    "24h",
    "24h 1ns",
    "25h",
    "1d",
    "1y",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "18446744073709551615s",
    "18446744073709551616s",
    "584942417355y",
    "99999999999999999999999999999999s",
    "1e3",
    "1e400s",
    "0x10",
    "nan",
    "inf",
    "-inf",
    "5 s",
    "5ss",
    "s",
    "ms",
    "\u{2028}5s",
    "5\0s",
    "1000",
    "-1000",
    "-1001",
    "1001",
    "-20",
    "19",
    "20",
    "-21",
    "1048576",
    "1048577",
    "-9223372036854775808",
    "9223372036854775807",
    "9223372036854775808",
];

const NUMERIC_FLAGS: &[&str] = &[
    "--exit-wait",
    "--exit-retention",
    "--oom-score-adj",
    "--nice",
    "--max-pending",
    "--sample-interval",
    "--sample-window",
];

fn parse(flag: &str, value: &str) -> Option<super::run::RunArgs> {
    let parsed = Cli::try_parse_from(["oomtrace", "run", flag, value]);
    match parsed {
        Ok(Cli {
            command: Command::Run(args),
            ..
        }) => Some(*args),
        Ok(_) => panic!("parsed as another command"),
        Err(e) => {
            // A refusal says what was wrong with which argument.
            let text = e.to_string();
            assert!(text.contains("error:"), "{flag} {value:?}: {text}");
            None
        }
    }
}

fn assert_in_bounds(args: &super::run::RunArgs) {
    let day = Duration::from_secs(24 * 3600);
    assert!(args.exit_wait <= day, "{:?}", args.exit_wait);
    assert!(args.exit_retention <= day, "{:?}", args.exit_retention);
    assert!(args.sample_interval <= day, "{:?}", args.sample_interval);
    assert!(args.sample_window <= day, "{:?}", args.sample_window);
    assert!((-1000..=1000).contains(&args.oom_score_adj));
    assert!((-20..=19).contains(&args.nice));
    assert!((1..=1 << 20).contains(&args.max_pending));
    // What `start` reports fits its fields without wrapping.
    assert!(u64::try_from(args.exit_wait.as_millis()).is_ok());
}

#[test]
fn hostile_numbers_are_refused_or_bounded() {
    for flag in NUMERIC_FLAGS {
        for value in HOSTILE {
            if let Some(args) = parse(flag, value) {
                assert_in_bounds(&args);
            }
        }
    }
}

#[test]
fn sampling_defaults_and_off() {
    let defaults = parse("--format", "json").expect("defaults");
    assert_eq!(defaults.sample_interval, Duration::from_secs(1));
    assert_eq!(defaults.sample_window, Duration::from_secs(60));
    let off = parse("--sample-interval", "0").expect("0 turns it off");
    assert!(off.sample_interval.is_zero());
    assert!(parse("--sample-interval", "10ms").is_none(), "too short");
    assert_eq!(
        parse("--sample-interval", "100ms").map(|a| a.sample_interval),
        Some(Duration::from_millis(100))
    );
    assert_eq!(
        parse("--sample-window", "5m").map(|a| a.sample_window),
        Some(Duration::from_secs(300))
    );
}

#[test]
fn negative_durations_say_so() {
    let Err(error) = Cli::try_parse_from(["oomtrace", "run", "--exit-wait", "-5s"]) else {
        panic!("--exit-wait -5s accepted");
    };
    assert!(error.to_string().contains("cannot be negative"), "{error}");
}

/// A deterministic sweep of generated strings over the characters numbers
/// and durations are made of (the long fuzzing runs belong in the bench).
#[test]
fn generated_numbers_are_refused_or_bounded() {
    const ALPHABET: &[u8] = b"0123456789-+ .esmhdyun";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for _ in 0..3000 {
        let len = (next() % 24) as usize;
        let value: String = (0..len)
            .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize] as char)
            .collect();
        let flag = NUMERIC_FLAGS[(next() % NUMERIC_FLAGS.len() as u64) as usize];
        if let Some(args) = parse(flag, &value) {
            assert_in_bounds(&args);
        }
    }
}

#[test]
fn runtime_roots_default_to_the_runtimes_own_and_can_be_moved() {
    let args = parse("--docker-root", "/srv/dockerd-ci").expect("parsed");
    assert_eq!(args.docker_root, std::path::Path::new("/srv/dockerd-ci"));
    assert_eq!(
        args.containerd_root,
        std::path::Path::new("/run/containerd")
    );
    assert_eq!(
        args.podman_root,
        std::path::Path::new("/var/lib/containers/storage")
    );
    // Every flag names a source of the runtime state table (checked there).
    let _ = args.runtime_roots();
}

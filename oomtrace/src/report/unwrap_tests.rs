use serde_json::json;

use super::*;

const RECORD: &str = r#"{"type":"lost","schema":1,"hostname":"n1","boot_id":"b","run_id":"r","time":"2026-01-01T00:00:00Z","boot_ns":1,"kills":2,"exits":0,"untracked_victims":0}"#;

fn record_text(u: Unwrapped) -> String {
    match u {
        Unwrapped::Record(text, _) | Unwrapped::Parsed(text, _) => text,
        other => panic!("not a record: {other:?}"),
    }
}

#[test]
fn plain_record() {
    let mut u = Unwrapper::new(None);
    assert_eq!(record_text(u.line(RECORD)), RECORD);
    assert_eq!(record_text(u.line(&format!("  {RECORD}\r"))), RECORD);
}

#[test]
fn docker_json_file_split_at_16_kib_is_joined() {
    let mut u = Unwrapper::new(None);
    let (a, b) = RECORD.split_at(40);
    let (b, c) = b.split_at(30);
    let piece = |log: String, stream: &str| {
        json!({"log": log, "stream": stream, "time": "2026-01-01T00:00:00.1Z"}).to_string()
    };
    assert_eq!(u.line(&piece(a.into(), "stdout")), Unwrapped::Pending);
    // The other stream interleaves without breaking the join.
    assert_eq!(
        u.line(&piece("a stderr line\n".into(), "stderr")),
        Unwrapped::Other
    );
    assert_eq!(u.line(&piece(b.into(), "stdout")), Unwrapped::Pending);
    assert_eq!(
        record_text(u.line(&piece(format!("{c}\n"), "stdout"))),
        RECORD
    );
    assert_eq!(u.unfinished(), 0);
    // Unsplit.
    assert_eq!(
        record_text(u.line(&piece(format!("{RECORD}\n"), "stdout"))),
        RECORD
    );
}

#[test]
fn cri_lines_with_partials() {
    let mut u = Unwrapper::new(None);
    let (a, b) = RECORD.split_at(50);
    assert_eq!(
        u.line(&format!("2026-01-01T00:00:00.000000001Z stdout P {a}")),
        Unwrapped::Pending
    );
    assert_eq!(
        record_text(u.line(&format!("2026-01-01T00:00:00.000000002Z stdout F {b}"))),
        RECORD
    );
    assert_eq!(
        record_text(u.line(&format!("2026-01-01T00:00:00.1+01:00 stdout F {RECORD}"))),
        RECORD
    );
    assert_eq!(
        u.line("2026-01-01T00:00:00Z stderr F starting up"),
        Unwrapped::Other
    );
}

#[test]
fn journald_message_string_and_bytes() {
    let mut u = Unwrapper::new(None);
    let line = json!({"MESSAGE": RECORD, "_SYSTEMD_UNIT": "oomtrace.service"}).to_string();
    assert_eq!(record_text(u.line(&line)), RECORD);
    let bytes: Vec<u8> = RECORD.bytes().collect();
    let line = json!({"MESSAGE": bytes, "PRIORITY": "6"}).to_string();
    assert_eq!(record_text(u.line(&line)), RECORD);
}

#[test]
fn exports_by_known_field_or_forced_path() {
    let mut u = Unwrapper::new(None);
    // Fluent Bit: a kubernetes record whose `log` is a CRI line.
    let cri = format!("2026-01-01T00:00:00.000Z stdout F {RECORD}");
    let line = json!({"log": cri, "kubernetes": {"pod_name": "x"}}).to_string();
    assert_eq!(record_text(u.line(&line)), RECORD);
    let line = json!({"message": RECORD, "host": "h"}).to_string();
    assert_eq!(record_text(u.line(&line)), RECORD);

    let mut forced = Unwrapper::new(Some("kubernetes.log"));
    let line = json!({"kubernetes": {"log": RECORD}, "message": "no"}).to_string();
    assert_eq!(record_text(forced.line(&line)), RECORD);
    // The record itself as an object at the path (Vector's JSON parse).
    let object: Value = serde_json::from_str(RECORD).expect("json");
    let line = json!({"kubernetes": {"log": object}}).to_string();
    let text = record_text(forced.line(&line));
    assert_eq!(serde_json::from_str::<Value>(&text).expect("json"), object);
    assert_eq!(forced.line(r#"{"other": 1}"#), Unwrapped::Other);
}

#[test]
fn other_lines_and_malformed_ones() {
    let mut u = Unwrapper::new(None);
    for other in [
        "",
        "plain text",
        "[1,2]",
        r#"{"level":"info","msg":"hello"}"#,
        "2026 stdout F not a time",
    ] {
        assert_eq!(u.line(other), Unwrapped::Other, "{other:?}");
    }
    let cut = &RECORD[..RECORD.len() - 10];
    assert!(
        matches!(u.line(cut), Unwrapped::Malformed(ref m) if m.starts_with("not a whole JSON object")),
        "{:?}",
        u.line(cut)
    );
    assert!(matches!(
        u.line(r#"{"type":"oom_kill"}"#),
        Unwrapped::Malformed(_)
    ));
}

#[test]
fn joined_pieces_past_the_maximum_are_too_long() {
    let mut u = Unwrapper::new(None);
    let piece = "x".repeat(MAX_LINE / 2 + 1);
    let line = |log: &str| json!({"log": log, "stream": "stdout", "time": "t"}).to_string();
    assert_eq!(u.line(&line(&piece)), Unwrapped::Pending);
    assert_eq!(u.line(&line(&piece)), Unwrapped::Pending);
    assert_eq!(u.line(&line(&piece)), Unwrapped::Pending);
    assert_eq!(u.line(&line("end\n")), Unwrapped::TooLong);
    // The next line reads as usual.
    assert_eq!(record_text(u.line(&line(&format!("{RECORD}\n")))), RECORD);
}

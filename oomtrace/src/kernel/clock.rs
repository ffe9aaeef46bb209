//! CLOCK_BOOTTIME (the eBPF side's `bpf_ktime_get_boot_ns`) → wall time.

use chrono::{DateTime, SecondsFormat, Utc};

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec; both clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Nanoseconds since boot, now.
pub fn boot_ns() -> u64 {
    now_ns(libc::CLOCK_BOOTTIME) as u64
}

/// The wall-clock time of a CLOCK_BOOTTIME instant, in RFC 3339 UTC with
/// nanoseconds. The offset between the clocks is taken now, so a clock step
/// (NTP) since the event shifts the result by that step.
pub fn rfc3339_from_boot_ns(boot_ns: u64) -> String {
    let offset = now_ns(libc::CLOCK_REALTIME) - now_ns(libc::CLOCK_BOOTTIME);
    let unix_ns = offset + i128::from(boot_ns);
    let time = DateTime::<Utc>::from_timestamp_nanos(unix_ns.clamp(0, i128::from(i64::MAX)) as i64);
    time.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_maps_to_now() {
        let text = rfc3339_from_boot_ns(boot_ns());
        let parsed = DateTime::parse_from_rfc3339(&text).expect("rfc3339");
        let skew = (Utc::now() - parsed.with_timezone(&Utc))
            .num_milliseconds()
            .abs();
        assert!(skew < 1000, "{text} is {skew} ms off");
        assert!(text.ends_with('Z') && text.len() == "2026-11-22T14:28:00.123456789Z".len());
    }
}

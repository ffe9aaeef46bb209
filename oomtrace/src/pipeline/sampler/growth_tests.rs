//! Each kind on synthetic series: clean, noisy and borderline.

use super::*;

const MIB: f64 = 1048576.0;
const LIMIT: u64 = 256 << 20;

/// Deterministic noise in [-amplitude, amplitude] (an LCG: no crate, and
/// the same series every run).
fn noise(seed: &mut u64, amplitude: f64) -> f64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * amplitude
}

/// One sample a second, `usage(i)` for i = 0.. (oldest first), the last
/// one 0.5 s before the kill.
fn series(n: usize, usage: impl Fn(usize) -> f64) -> Vec<Point> {
    (0..n)
        .map(|i| Point {
            secs_before: (n - 1 - i) as f64 + 0.5,
            usage: usage(i),
        })
        .collect()
}

fn context(usage_at_kill: u64) -> Context {
    Context {
        limit: Some(LIMIT),
        usage_at_kill: Some(usage_at_kill),
        anon: None,
        shmem: None,
    }
}

fn kind_of(points: &[Point], c: &Context) -> GrowthKind {
    classify(points, c).kind
}

#[test]
fn leak_clean_and_noisy() {
    let clean = series(20, |i| 20.0 * MIB + 11.0 * MIB * i as f64);
    let growth = classify(&clean, &context(LIMIT));
    assert_eq!(growth.kind, GrowthKind::Leak);
    let slope = growth.slope_bytes_per_s.expect("slope");
    assert!((slope - 11.0 * MIB).abs() < 0.01 * MIB, "{slope}");
    let left = growth.seconds_to_limit.expect("seconds");
    // From the last sample (229 MiB) at 11 MiB/s to 256 MiB.
    assert!((left - 27.0 / 11.0).abs() < 0.01, "{left}");

    let mut seed = 7;
    let noisy = series(20, |_| 0.0)
        .into_iter()
        .enumerate()
        .map(|(i, p)| Point {
            usage: 20.0 * MIB + 11.0 * MIB * i as f64 + noise(&mut seed, 8.0 * MIB),
            ..p
        })
        .collect::<Vec<_>>();
    assert_eq!(kind_of(&noisy, &context(LIMIT)), GrowthKind::Leak);
}

#[test]
fn leak_borderline_rise() {
    // Ten samples rising steadily to the limit: by 12% of the limit over
    // the window it is a leak; by 8% it never left the limit's last 5% for
    // long, so it sat at the limit.
    let rising = |share: f64| {
        series(10, move |i| {
            LIMIT as f64 * (1.0 - share * (1.0 - i as f64 / 9.0)) - MIB
        })
    };
    assert_eq!(kind_of(&rising(0.12), &context(LIMIT)), GrowthKind::Leak);
    assert_eq!(kind_of(&rising(0.08), &context(LIMIT)), GrowthKind::AtLimit);
}

#[test]
fn too_few_points_is_unknown() {
    let two = series(2, |i| 10.0 * MIB * (i + 1) as f64);
    let growth = classify(&two, &context(LIMIT));
    assert_eq!(growth.kind, GrowthKind::Unknown);
    assert_eq!(growth.slope_bytes_per_s, None);
    assert_eq!(classify(&[], &context(LIMIT)), Growth::default());
}

#[test]
fn spike_after_flat_stretch() {
    // Flat at 30 MiB, then the kill at the limit: the jump is not even in a
    // sample (it happened between the last sample and the kill).
    let flat = series(8, |_| 30.0 * MIB);
    assert_eq!(kind_of(&flat, &context(LIMIT)), GrowthKind::Spike);
    // With the jump caught in one sample on the way up.
    let caught = series(9, |i| if i < 8 { 30.0 * MIB } else { 150.0 * MIB });
    assert_eq!(kind_of(&caught, &context(LIMIT)), GrowthKind::Spike);
    // A noisy flat stretch (±2% of the limit).
    let mut seed = 3;
    let noisy: Vec<Point> = series(10, |_| 0.0)
        .into_iter()
        .map(|p| Point {
            usage: 40.0 * MIB + noise(&mut seed, 0.02 * LIMIT as f64),
            ..p
        })
        .collect();
    assert_eq!(kind_of(&noisy, &context(LIMIT)), GrowthKind::Spike);
}

#[test]
fn spike_borderline() {
    // A jump of 30% of the limit is a spike, 20% is not (and a flat series
    // just under the limit is at_limit).
    let level = |share: f64| LIMIT as f64 * (1.0 - share);
    let flat_at = |l: f64| series(6, move |_| l);
    assert_eq!(
        kind_of(&flat_at(level(0.30)), &context(LIMIT)),
        GrowthKind::Spike
    );
    assert_eq!(
        kind_of(&flat_at(level(0.20)), &context(LIMIT)),
        GrowthKind::Unknown
    );
    // Only two flat samples before the jump: too short a stretch.
    let short = series(3, |i| if i < 2 { 30.0 * MIB } else { 200.0 * MIB });
    assert_eq!(kind_of(&short, &context(LIMIT)), GrowthKind::Unknown);
    // A rise spread over many samples after the flat stretch is growth.
    let ramp = series(12, |i| {
        if i < 4 {
            30.0 * MIB
        } else {
            30.0 * MIB + 25.0 * MIB * (i - 3) as f64
        }
    });
    assert_eq!(kind_of(&ramp, &context(LIMIT)), GrowthKind::Leak);
}

#[test]
fn shmem_wins_when_most_is_tmpfs() {
    let fill = series(6, |i| 40.0 * MIB * (i + 1) as f64);
    let mut c = context(LIMIT);
    c.shmem = Some(200 << 20);
    c.anon = Some(4 << 20);
    assert_eq!(kind_of(&fill, &c), GrowthKind::Shmem);
    // One sample is enough: it is a reading, not a trend.
    assert_eq!(kind_of(&fill[5..], &c), GrowthKind::Shmem);
    // Borderline: shmem under half, or anon over a quarter, is not.
    c.shmem = Some(100 << 20);
    assert_ne!(kind_of(&fill, &c), GrowthKind::Shmem);
    c.shmem = Some(200 << 20);
    c.anon = Some(70 << 20);
    assert_ne!(kind_of(&fill, &c), GrowthKind::Shmem);
}

#[test]
fn at_limit_when_it_sat_there() {
    let mut seed = 11;
    let sat: Vec<Point> = series(30, |_| 0.0)
        .into_iter()
        .map(|p| Point {
            usage: LIMIT as f64 * 0.98 + noise(&mut seed, 0.015 * LIMIT as f64),
            ..p
        })
        .collect();
    assert_eq!(kind_of(&sat, &context(LIMIT)), GrowthKind::AtLimit);
    // One sample 6% under the limit among the last three: not at it.
    let mut dipped = sat.clone();
    dipped[28].usage = LIMIT as f64 * 0.94;
    assert_eq!(kind_of(&dipped, &context(LIMIT)), GrowthKind::Unknown);
    // Without a limit there is nothing to sit at.
    let mut unlimited = context(LIMIT);
    unlimited.limit = None;
    assert_eq!(kind_of(&sat, &unlimited), GrowthKind::Unknown);
}

#[test]
fn random_walk_is_unknown() {
    let mut seed = 5;
    let mut level = 100.0 * MIB;
    let walk = series(30, |_| 0.0)
        .into_iter()
        .map(|p| {
            level += noise(&mut seed, 12.0 * MIB);
            Point { usage: level, ..p }
        })
        .collect::<Vec<_>>();
    // A memcg far from its limit (its parent's fired, say), killed at
    // about its last sample's usage.
    let c = Context {
        limit: Some(1 << 30),
        usage_at_kill: None,
        ..Context::default()
    };
    let growth = classify(&walk, &c);
    assert_eq!(growth.kind, GrowthKind::Unknown, "{growth:?}");
}

//! The signals `oomtrace run` listens for: those that stop it cleanly, and
//! SIGHUP, which reopens `--output`.

use anyhow::Context as _;
use oomtrace_record::StopReason;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

/// The signals that stop a run cleanly, as SIGTERM does: every signal whose
/// default action ends the process, except SIGHUP (reopens `--output`),
/// SIGPIPE (ignored: a closed pipe shows as EPIPE), SIGXFSZ (ignored: an
/// over-large file shows as EFBIG) and the faults (SIGSEGV, SIGBUS, SIGILL,
/// SIGFPE, SIGABRT, SIGSYS, SIGTRAP), which are not requests. Real-time
/// signals stop it too (as `SIGRT`).
const STOP_SIGNALS: &[(libc::c_int, StopReason)] = &[
    (libc::SIGTERM, StopReason::Sigterm),
    (libc::SIGINT, StopReason::Sigint),
    (libc::SIGQUIT, StopReason::Sigquit),
    (libc::SIGUSR1, StopReason::Sigusr1),
    (libc::SIGUSR2, StopReason::Sigusr2),
    (libc::SIGALRM, StopReason::Sigalrm),
    (libc::SIGVTALRM, StopReason::Sigvtalrm),
    (libc::SIGPROF, StopReason::Sigprof),
    (libc::SIGIO, StopReason::Sigio),
    (libc::SIGPWR, StopReason::Sigpwr),
    (libc::SIGSTKFLT, StopReason::Sigstkflt),
    (libc::SIGXCPU, StopReason::Sigxcpu),
];

/// Listens for every stop signal (and SIGHUP); each arrival is sent on the
/// returned channel. Must run inside the event loop.
pub fn listen_for_signals() -> anyhow::Result<mpsc::UnboundedReceiver<Option<StopReason>>> {
    // SAFETY: ignoring SIGXFSZ only changes how RLIMIT_FSIZE is reported
    // (EFBIG from write instead of a kill).
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let (sender, receiver) = mpsc::unbounded_channel();
    let realtime = (libc::SIGRTMIN()..=libc::SIGRTMAX()).map(|n| (n, Some(StopReason::Sigrt)));
    let named = STOP_SIGNALS.iter().map(|&(n, reason)| (n, Some(reason)));
    // SIGHUP arrives as None: reopen, don't stop.
    for (number, reason) in named.chain(realtime).chain([(libc::SIGHUP, None)]) {
        let mut stream = signal(SignalKind::from_raw(number))
            .with_context(|| format!("installing a handler for signal {number}"))?;
        let sender = sender.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if sender.send(reason).is_err() {
                    return;
                }
            }
        });
    }
    Ok(receiver)
}

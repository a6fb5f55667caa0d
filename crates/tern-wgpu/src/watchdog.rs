//! Bounded waits: every place the runtime blocks on the device (submission
//! waits, buffer mappings, error-scope pops, adapter enumeration and device
//! creation) ends within a timeout with an error that names the wait,
//! instead of hanging the process.
//!
//! The timeout is `TERN_WGPU_TIMEOUT` seconds (a positive number, fractions
//! allowed), [`DEFAULT_TIMEOUT`] when the variable is unset or empty.

use std::future::Future;
use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// The environment variable that sets the timeout, in seconds.
pub(crate) const TIMEOUT_VAR: &str = "TERN_WGPU_TIMEOUT";

/// Long enough for a 13B LoRA step on a slow GPU and for a lavapipe CI run
/// of the largest test, short enough to turn a hang into an error.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// A wait that did not end in time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stuck {
    /// What was waited for ("synchronize", "a download of 4096 bytes", ...).
    pub what: String,
    /// The timeout that ran out.
    pub after: Duration,
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the device did not finish {} within {} s (the limit {TIMEOUT_VAR} sets)",
            self.what,
            secs(self.after)
        )
    }
}

/// `d` in seconds, without trailing zeros (`120`, `0.5`).
pub(crate) fn secs(d: Duration) -> String {
    let s = format!("{:.3}", d.as_secs_f64());
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The timeout a `TERN_WGPU_TIMEOUT` value asks for: `None` or an empty
/// value gives [`DEFAULT_TIMEOUT`]; anything but a positive, finite number
/// of seconds is an error that quotes the value.
pub(crate) fn parse_timeout(value: Option<&str>) -> Result<Duration, String> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_TIMEOUT);
    };
    let bad =
        || format!("{TIMEOUT_VAR}={v:?} is not a positive number of seconds (e.g. 120 or 0.5)");
    let s: f64 = v.parse().map_err(|_| bad())?;
    if s.is_nan() || s <= 0.0 {
        return Err(bad());
    }
    Duration::try_from_secs_f64(s).map_err(|_| bad())
}

/// [`parse_timeout`] of the environment's value.
pub(crate) fn timeout_from_env() -> Result<Duration, String> {
    match std::env::var(TIMEOUT_VAR) {
        Ok(v) => parse_timeout(Some(&v)),
        Err(std::env::VarError::NotPresent) => parse_timeout(None),
        Err(std::env::VarError::NotUnicode(v)) => Err(format!(
            "{TIMEOUT_VAR}={v:?} is not a positive number of seconds (e.g. 120 or 0.5)"
        )),
    }
}

/// Run `f` on a helper thread and wait at most `timeout` for it: for calls
/// into the driver that take no timeout of their own (adapter enumeration,
/// device creation). On timeout the thread is abandoned, still blocked, and
/// the error names `what`. A panic in `f` is resumed on the caller's thread.
pub(crate) fn on_helper_thread<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Stuck> {
    let (tx, rx) = mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name("tern-wgpu-open".into())
        .spawn(move || {
            let _ = tx.send(f());
        });
    let handle = match handle {
        Ok(h) => h,
        Err(e) => {
            return Err(Stuck {
                what: format!("{what} (the operating system refused a helper thread: {e})"),
                after: Duration::ZERO,
            })
        }
    };
    match rx.recv_timeout(timeout) {
        Ok(v) => {
            let _ = handle.join();
            Ok(v)
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Stuck {
            what: what.to_string(),
            after: timeout,
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            // The sender is only dropped after sending or by a panic.
            Ok(()) => Err(Stuck {
                what: format!("{what} (its thread ended without a result)"),
                after: timeout,
            }),
        },
    }
}

/// Wakes a thread parked in [`block_on_within`].
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Drive `fut` to completion on this thread, for at most `timeout` (wgpu's
/// futures, such as an error-scope pop, are ready at once on native
/// backends; this bounds them anyway).
pub(crate) fn block_on_within<F: Future>(
    what: &str,
    timeout: Duration,
    fut: F,
) -> Result<F::Output, Stuck> {
    let deadline = Instant::now() + timeout;
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Stuck {
                what: what.to_string(),
                after: timeout,
            });
        }
        std::thread::park_timeout(deadline - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_values_parse_or_say_what_is_wrong() {
        assert_eq!(parse_timeout(None), Ok(DEFAULT_TIMEOUT));
        assert_eq!(parse_timeout(Some("")), Ok(DEFAULT_TIMEOUT));
        assert_eq!(parse_timeout(Some("  ")), Ok(DEFAULT_TIMEOUT));
        assert_eq!(parse_timeout(Some("30")), Ok(Duration::from_secs(30)));
        assert_eq!(
            parse_timeout(Some(" 2.5 ")),
            Ok(Duration::from_millis(2500))
        );
        assert_eq!(parse_timeout(Some("1e3")), Ok(Duration::from_secs(1000)));
        for bad in ["0", "-5", "abc", "12s", "NaN", "inf", "1e30"] {
            let e = parse_timeout(Some(bad)).expect_err(bad);
            assert!(
                e.contains(TIMEOUT_VAR) && e.contains(&format!("{bad:?}")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn seconds_print_without_trailing_zeros() {
        assert_eq!(secs(Duration::from_secs(120)), "120");
        assert_eq!(secs(Duration::from_millis(500)), "0.5");
        assert_eq!(secs(Duration::from_millis(1250)), "1.25");
    }

    #[test]
    fn a_helper_that_never_returns_times_out_naming_the_wait() {
        let t = Instant::now();
        let r = on_helper_thread("device creation", Duration::from_millis(100), || loop {
            std::thread::park();
        });
        let dt = t.elapsed();
        let e = r.expect_err("a closure that never returns must time out");
        assert_eq!(e.what, "device creation");
        assert!(dt >= Duration::from_millis(100), "returned after {dt:?}");
        assert!(dt < Duration::from_secs(10), "returned after {dt:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("device creation") && msg.contains("0.1 s") && msg.contains(TIMEOUT_VAR),
            "{msg}"
        );
    }

    #[test]
    fn a_helper_that_returns_gives_its_value() {
        let r = on_helper_thread("sum", Duration::from_secs(30), || 2 + 3);
        assert_eq!(r, Ok(5));
    }

    #[test]
    fn a_helper_that_panics_panics_the_caller() {
        let r = std::panic::catch_unwind(|| {
            on_helper_thread("panic", Duration::from_secs(30), || -> u32 {
                panic!("inside the helper")
            })
        });
        let p = r.expect_err("the panic must reach the caller");
        assert_eq!(p.downcast_ref::<&str>(), Some(&"inside the helper"));
    }

    #[test]
    fn a_future_that_never_completes_times_out() {
        let t = Instant::now();
        let r = block_on_within(
            "an error scope",
            Duration::from_millis(100),
            std::future::pending::<()>(),
        );
        let dt = t.elapsed();
        assert_eq!(r.expect_err("pending forever").what, "an error scope");
        assert!(dt >= Duration::from_millis(100), "returned after {dt:?}");
        assert!(dt < Duration::from_secs(10), "returned after {dt:?}");
    }

    #[test]
    fn a_future_woken_from_another_thread_completes() {
        // Ready once another thread has set the flag and woken the waker.
        struct Flag(Arc<std::sync::Mutex<(bool, Option<Waker>)>>);
        impl Future for Flag {
            type Output = u8;
            fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u8> {
                let mut s = self.0.lock().unwrap();
                if s.0 {
                    Poll::Ready(7)
                } else {
                    s.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
        let state = Arc::new(std::sync::Mutex::new((false, None::<Waker>)));
        let s2 = state.clone();
        let t = Instant::now();
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let w = {
                let mut s = s2.lock().unwrap();
                s.0 = true;
                s.1.take()
            };
            if let Some(w) = w {
                w.wake();
            }
        });
        let r = block_on_within("flag", Duration::from_secs(30), Flag(state));
        setter.join().unwrap();
        assert_eq!(r, Ok(7));
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}

//! The rank-side stall watchdog. A gang whose rank stops (a frozen process,
//! a wedged GPU, a dead NIC) leaves every other rank waiting in a
//! collective until a 30-minute timeout, or forever. Each rank therefore
//! watches its own optimiser steps: when none completes for longer than
//! the stall timeout while training, it reports what it was doing and exits
//! with [`STALLED_EXIT_CODE`], so whoever launched it restarts the gang.
//!
//! The watchdog only runs during the training loop's steps: start-up,
//! evaluation and checkpoint saves have their own timeouts. A rank waiting
//! in a collective when it fires says so; a rank that stopped outside one
//! (computing, loading data) is the one that stopped first. A frozen
//! process (SIGSTOP) cannot say anything: it is the rank that did not exit.

use crate::dist::{Collective, DistError};
use ride_contract::{ENV_STALL_TIMEOUT, STALLED_EXIT_CODE};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tch::Tensor;

/// Without `RIDE_STALL_TIMEOUT`: a stall is this many typical steps...
pub const DEFAULT_STEP_FACTOR: f64 = 20.0;
/// ...and never less than this.
pub const DEFAULT_FLOOR: Duration = Duration::from_secs(300);

/// How long without an optimiser step counts as a stall.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StallTimeout {
    /// No watchdog (`RIDE_STALL_TIMEOUT=0`).
    Off,
    /// A fixed limit (`RIDE_STALL_TIMEOUT=SECONDS`).
    Fixed(Duration),
    /// `factor` times the smoothed step time, at least `floor` (the default).
    Derived {
        /// The smallest limit.
        floor: Duration,
        /// Multiple of the typical step time.
        factor: f64,
    },
}

impl StallTimeout {
    /// The setting in `RIDE_STALL_TIMEOUT` (seconds; 0 turns it off; unset
    /// derives it from the step time).
    pub fn from_env() -> Result<Self, DistError> {
        match std::env::var(ENV_STALL_TIMEOUT) {
            Err(_) => Ok(StallTimeout::Derived {
                floor: DEFAULT_FLOOR,
                factor: DEFAULT_STEP_FACTOR,
            }),
            Ok(v) => Self::parse(&v).map_err(|message| DistError::Env {
                var: ENV_STALL_TIMEOUT.into(),
                message,
            }),
        }
    }

    fn parse(v: &str) -> Result<Self, String> {
        match v.trim().parse::<f64>() {
            Ok(0.0) => Ok(StallTimeout::Off),
            Ok(s) if s > 0.0 && s.is_finite() => {
                Ok(StallTimeout::Fixed(Duration::from_secs_f64(s)))
            }
            _ => Err(format!(
                "{v:?} is not a number of seconds (0 turns the stall watchdog off)"
            )),
        }
    }

    /// The limit given the typical step time so far, if any.
    pub fn limit(&self, step_seconds: Option<f64>) -> Option<Duration> {
        match *self {
            StallTimeout::Off => None,
            StallTimeout::Fixed(d) => Some(d),
            StallTimeout::Derived { floor, factor } => {
                let derived = step_seconds.map_or(Duration::ZERO, |s| {
                    Duration::from_secs_f64((s * factor).clamp(0.0, 1e9))
                });
                Some(floor.max(derived))
            }
        }
    }
}

/// What a stall looked like from this rank.
#[derive(Clone, Debug, PartialEq)]
pub struct Stall {
    /// Time since the last optimiser step (or since the loop began).
    pub idle: Duration,
    /// The limit it passed.
    pub limit: Duration,
    /// The typical step time, when known.
    pub step_seconds: Option<f64>,
    /// How long this rank has been waiting in a collective, if it is.
    pub in_collective_for: Option<Duration>,
}

impl Stall {
    /// One line for the log and the termination message.
    pub fn message(&self) -> String {
        let typical = self
            .step_seconds
            .map_or(String::new(), |s| format!(", typical step {s:.2} s"));
        let where_ = match self.in_collective_for {
            Some(d) => format!(
                "waiting in a collective for {:.0} s, so another rank stopped first",
                d.as_secs_f64()
            ),
            None => "not in a collective: this rank stopped (computing, loading data or I/O)"
                .to_string(),
        };
        format!(
            "stalled: no optimiser step for {:.0} s (limit {:.0} s{typical}); {where_}; exiting with code {STALLED_EXIT_CODE} so the gang restarts ({ENV_STALL_TIMEOUT} sets the limit)",
            self.idle.as_secs_f64(),
            self.limit.as_secs_f64()
        )
    }
}

/// The watchdog's view of the training loop.
#[derive(Debug, Default)]
struct Beat {
    /// Watching (inside the training loop's steps).
    armed: bool,
    /// The last optimiser step, or when watching began.
    last: Option<Instant>,
    /// Smoothed seconds per optimiser step.
    step_ema: Option<f64>,
}

/// Decide whether the loop has stalled: a pure function of what the
/// watchdog observed.
pub fn judge(
    timeout: &StallTimeout,
    armed: bool,
    idle: Duration,
    step_seconds: Option<f64>,
    in_collective_for: Option<Duration>,
) -> Option<Stall> {
    let limit = timeout.limit(step_seconds)?;
    (armed && idle > limit).then_some(Stall {
        idle,
        limit,
        step_seconds,
        in_collective_for,
    })
}

struct Shared {
    beat: Mutex<Beat>,
    /// Threads of this process inside a collective.
    in_collective: AtomicUsize,
    /// When the first of them entered (ms since `epoch`), valid while > 0.
    collective_since_ms: AtomicU64,
    epoch: Instant,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Beat> {
        self.beat.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn in_collective_for(&self) -> Option<Duration> {
        if self.in_collective.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let since = Duration::from_millis(self.collective_since_ms.load(Ordering::SeqCst));
        Some(self.epoch.elapsed().saturating_sub(since))
    }
}

/// A running watchdog; dropping it stops the thread.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Watch with `timeout`; on a stall, call `on_stall` once (in the
    /// product it exits the process).
    pub fn start(timeout: StallTimeout, on_stall: impl Fn(&Stall) + Send + 'static) -> Self {
        let shared = Arc::new(Shared {
            beat: Mutex::new(Beat::default()),
            in_collective: AtomicUsize::new(0),
            collective_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
        });
        let thread = (timeout != StallTimeout::Off).then(|| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("ride-watchdog".into())
                .spawn(move || watch(&shared, timeout, on_stall))
                .ok()
        });
        Self {
            shared,
            thread: thread.flatten(),
        }
    }

    /// Start watching (the training loop begins or resumes its steps).
    pub fn watch_from_now(&self) {
        let mut b = self.shared.lock();
        b.armed = true;
        b.last = Some(Instant::now());
    }

    /// An optimiser step of `seconds` completed.
    pub fn beat(&self, seconds: f64) {
        let mut b = self.shared.lock();
        b.last = Some(Instant::now());
        b.step_ema = Some(b.step_ema.map_or(seconds, |e| 0.9 * e + 0.1 * seconds));
    }

    /// Stop watching (evaluation, checkpoint saves, the end of the run).
    pub fn pause(&self) {
        self.shared.lock().armed = false;
    }

    /// Wrap `inner` so the watchdog knows when this process waits in a collective.
    pub fn watch_collective(&self, inner: Box<dyn Collective>) -> Box<dyn Collective> {
        Box::new(WatchedCollective {
            inner,
            shared: self.shared.clone(),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn watch(shared: &Shared, timeout: StallTimeout, on_stall: impl Fn(&Stall)) {
    while !shared.stop.load(Ordering::SeqCst) {
        let (armed, idle, ema) = {
            let b = shared.lock();
            (
                b.armed,
                b.last.map_or(Duration::ZERO, |t| t.elapsed()),
                b.step_ema,
            )
        };
        if let Some(stall) = judge(&timeout, armed, idle, ema, shared.in_collective_for()) {
            on_stall(&stall);
            return;
        }
        // Check often enough that a stall is seen within a few percent of the limit.
        let limit = timeout.limit(ema).unwrap_or(Duration::from_secs(1));
        std::thread::park_timeout(
            (limit / 20).clamp(Duration::from_millis(50), Duration::from_secs(5)),
        );
    }
}

/// A collective that tells the watchdog while this process waits in it.
struct WatchedCollective {
    inner: Box<dyn Collective>,
    shared: Arc<Shared>,
}

struct InCollective<'a>(&'a Shared);

impl<'a> InCollective<'a> {
    fn enter(shared: &'a Shared) -> Self {
        if shared.in_collective.fetch_add(1, Ordering::SeqCst) == 0 {
            let now = shared.epoch.elapsed().as_millis() as u64;
            shared.collective_since_ms.store(now, Ordering::SeqCst);
        }
        Self(shared)
    }
}

impl Drop for InCollective<'_> {
    fn drop(&mut self) {
        self.0.in_collective.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Collective for WatchedCollective {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn all_reduce_sum_f32(&self, data: &mut [f32]) -> Result<(), DistError> {
        let _in = InCollective::enter(&self.shared);
        self.inner.all_reduce_sum_f32(data)
    }
    fn broadcast_bytes(&self, data: &mut Vec<u8>, root: usize) -> Result<(), DistError> {
        let _in = InCollective::enter(&self.shared);
        self.inner.broadcast_bytes(data, root)
    }
    fn all_gather_bytes(&self, data: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        let _in = InCollective::enter(&self.shared);
        self.inner.all_gather_bytes(data)
    }
    fn barrier(&self) -> Result<(), DistError> {
        let _in = InCollective::enter(&self.shared);
        self.inner.barrier()
    }
    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<(), DistError> {
        let _in = InCollective::enter(&self.shared);
        self.inner.all_reduce_sum_tensor(t)
    }
    fn broadcast_tensor(&self, t: &Tensor, root: usize) -> Result<(), DistError> {
        let _in = InCollective::enter(&self.shared);
        self.inner.broadcast_tensor(t, root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn the_setting_parses_and_derives_its_limit_from_the_step_time() {
        assert_eq!(StallTimeout::parse("0").unwrap(), StallTimeout::Off);
        assert_eq!(
            StallTimeout::parse(" 12.5 ").unwrap(),
            StallTimeout::Fixed(Duration::from_millis(12500))
        );
        assert!(StallTimeout::parse("-3").is_err());
        assert!(StallTimeout::parse("soon").is_err());
        let derived = StallTimeout::Derived {
            floor: Duration::from_secs(300),
            factor: 20.0,
        };
        assert_eq!(derived.limit(None), Some(Duration::from_secs(300)));
        assert_eq!(derived.limit(Some(2.0)), Some(Duration::from_secs(300)));
        assert_eq!(derived.limit(Some(30.0)), Some(Duration::from_secs(600)));
        assert_eq!(StallTimeout::Off.limit(Some(1.0)), None);
    }

    #[test]
    fn only_an_armed_loop_past_its_limit_is_a_stall() {
        let t = StallTimeout::Fixed(Duration::from_secs(10));
        let s = Duration::from_secs;
        assert_eq!(judge(&t, true, s(9), None, None), None);
        assert_eq!(judge(&t, false, s(11), None, None), None);
        let stall = judge(&t, true, s(11), Some(0.5), Some(s(10))).unwrap();
        assert!(stall
            .message()
            .contains("no optimiser step for 11 s (limit 10 s"));
        assert!(stall.message().contains("another rank stopped first"));
        let own = judge(&t, true, s(11), None, None).unwrap();
        assert!(own.message().contains("this rank stopped"));
        assert_eq!(
            judge(&StallTimeout::Off, true, s(1_000_000), None, None),
            None
        );
    }

    #[test]
    fn the_thread_fires_once_when_steps_stop_and_never_while_paused() {
        let (tx, rx) = mpsc::channel();
        let dog = Watchdog::start(StallTimeout::Fixed(Duration::from_millis(300)), move |s| {
            let _ = tx.send(s.clone());
        });
        // Paused (not yet watching): nothing, however long.
        assert!(rx.recv_timeout(Duration::from_millis(800)).is_err());
        dog.watch_from_now();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(50));
            dog.beat(0.05);
        }
        let stall = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the watchdog fired");
        assert!(stall.idle >= Duration::from_millis(300), "{stall:?}");
        assert_eq!(stall.in_collective_for, None);
        assert_eq!(stall.step_seconds.map(|s| (s * 100.0).round()), Some(5.0));
        assert!(
            rx.recv_timeout(Duration::from_millis(500)).is_err(),
            "fired twice"
        );
    }

    #[test]
    fn a_rank_waiting_in_a_collective_says_so() {
        let (tx, rx) = mpsc::channel();
        let dog = Watchdog::start(StallTimeout::Fixed(Duration::from_millis(200)), move |s| {
            let _ = tx.send(s.clone());
        });
        let comm = dog.watch_collective(Box::new(crate::dist::SingleProcess));
        dog.watch_from_now();
        // A barrier that never returns is what a stalled peer looks like;
        // here the guard alone stands in for it.
        let guard = InCollective::enter(&dog.shared);
        let stall = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        drop(guard);
        assert!(stall.in_collective_for.is_some(), "{stall:?}");
        assert_eq!(comm.world_size(), 1);
        comm.barrier().unwrap();
        assert_eq!(dog.shared.in_collective.load(Ordering::SeqCst), 0);
    }
}

//! An endpoint's health as its own traffic shows it: consecutive failures that eject it for a
//! growing penalty (failure accrual, as Linkerd's proxy does it), the single probe that readmits
//! it, and a peak-EWMA latency estimate for latency-aware balancing.
//!
//! The request path reads one atomic flag ([`Health::available`] while serving) and writes
//! nothing unless something changed; the ejection state sits behind a lock that only ejected
//! endpoints and failures take. Times are tokio's, so tests drive them with paused time.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// How a service ejects endpoints: after `consecutive_failures` failures in a row, for a penalty
/// that doubles with each ejection in a row from `min_penalty` up to `max_penalty`, lengthened by
/// a random share of up to `jitter` of itself (as Linkerd's backoff is).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accrual {
    pub consecutive_failures: u32,
    pub min_penalty: Duration,
    pub max_penalty: Duration,
    /// 0.0..=1.0.
    pub jitter: f64,
    /// 0..=100: the share of a service's endpoints that may be ejected at once.
    pub max_ejection_percent: u32,
}

impl Accrual {
    /// The penalty of the `streak`-th ejection in a row (from 1), `unit` drawn from 0.0..1.0.
    pub fn penalty(&self, streak: u32, unit: f64) -> Duration {
        let max = self.max_penalty.max(self.min_penalty);
        let doublings = streak.saturating_sub(1).min(30);
        let base = self.min_penalty.saturating_mul(1 << doublings).min(max);
        base + base.mul_f64((self.jitter * unit).clamp(0.0, 1.0))
    }

    /// How many of `endpoints` may be ejected at once: the configured share, at least one when
    /// there are several (and the share is not 0), never the only one.
    pub fn max_ejected(&self, endpoints: usize) -> usize {
        if endpoints < 2 || self.max_ejection_percent == 0 {
            return 0;
        }
        (endpoints * self.max_ejection_percent.min(100) as usize / 100).max(1)
    }
}

/// What an endpoint's health is, for stats and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Takes requests.
    Healthy,
    /// Ejected: no new requests until its penalty ends, then one probe.
    Ejected { remaining: Duration },
    /// Its penalty is over and a probe may go, or one is in flight.
    Probing,
    /// Its active health check fails.
    Unready,
}

impl HealthState {
    pub fn as_str(&self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Ejected { .. } => "ejected",
            HealthState::Probing => "probing",
            HealthState::Unready => "unready",
        }
    }
}

/// The peak-EWMA latency estimate's decay: a sample's weight halves in about 7 s (Linkerd's and
/// Finagle's default time constant, 10 s).
const EWMA_DECAY_NS: f64 = 10e9;
/// The estimate of an endpoint with no samples yet (Linkerd's default RTT).
const EWMA_DEFAULT_NS: f64 = 30e6;

pub struct Health {
    /// True while requests may go to the endpoint without looking further: not ejected, ready.
    serving: AtomicBool,
    /// The active health check's verdict (true until a check says otherwise).
    ready: AtomicBool,
    /// Health-check probes in a row with the same result: passes when positive, failures when
    /// negative.
    probes: AtomicI32,
    consecutive: AtomicU32,
    ejection: Mutex<Ejection>,
    ejections: AtomicU64,
    /// Peak-EWMA latency in nanoseconds (`f64` bits), and when it was last updated (nanoseconds
    /// since `epoch`). Two workers updating at once may lose one sample: the estimate is a
    /// heuristic, not worth a lock on every response.
    ewma_ns: AtomicU64,
    ewma_at: AtomicU64,
    epoch: Instant,
}

#[derive(Debug, Default)]
struct Ejection {
    /// Set while ejected: when the next probe may go.
    until: Option<Instant>,
    /// Ejections in a row with no success between them.
    streak: u32,
    /// The current penalty (the wait before another probe if this one never reports).
    penalty: Duration,
    /// A probe has been sent since the last ejection.
    probing: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            serving: AtomicBool::new(true),
            ready: AtomicBool::new(true),
            probes: AtomicI32::new(0),
            consecutive: AtomicU32::new(0),
            ejection: Mutex::new(Ejection::default()),
            ejections: AtomicU64::new(0),
            ewma_ns: AtomicU64::new(EWMA_DEFAULT_NS.to_bits()),
            ewma_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Health {
    /// Whether a new request may go to the endpoint: it is serving, or its penalty is over and
    /// it is ready (the request will be its probe).
    #[inline]
    pub fn available(&self) -> bool {
        self.serving.load(Ordering::Relaxed) || self.available_slow()
    }

    #[cold]
    fn available_slow(&self) -> bool {
        if !self.ready.load(Ordering::Relaxed) {
            return false;
        }
        match self.ejection.lock().until {
            Some(until) => Instant::now() >= until,
            None => true,
        }
    }

    /// A request is being sent to the endpoint: if it is ejected and its penalty is over, this
    /// request is the probe, and no other goes until the probe reports (or another penalty
    /// passes, if it never does).
    #[inline]
    pub fn sending(&self) {
        if !self.serving.load(Ordering::Relaxed) {
            self.sending_slow();
        }
    }

    #[cold]
    fn sending_slow(&self) {
        let mut e = self.ejection.lock();
        let now = Instant::now();
        if e.until.is_some_and(|until| now >= until) {
            e.probing = true;
            e.until = Some(now + e.penalty);
        }
    }

    /// The endpoint answered well: its failure count restarts, and an ejected endpoint is
    /// readmitted.
    #[inline]
    pub fn succeeded(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if !self.serving.load(Ordering::Relaxed) {
            self.readmit();
        }
    }

    #[cold]
    fn readmit(&self) {
        let mut e = self.ejection.lock();
        if e.until.take().is_some() {
            tracing::info!("endpoint readmitted after a successful probe");
        }
        e.streak = 0;
        e.probing = false;
        self.serving.store(self.ready.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// The endpoint failed a request. With `accrual`, enough failures in a row eject it (when
    /// `may_eject` agrees: the service's ejection cap), and a failed probe ejects it again for
    /// longer. Returns the penalty when this failure ejected it.
    pub fn failed(&self, accrual: Option<&Accrual>, may_eject: impl FnOnce() -> bool) -> Option<Duration> {
        let failures = self.consecutive.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let accrual = accrual.filter(|a| a.consecutive_failures > 0)?;
        let mut e = self.ejection.lock();
        let again = e.until.is_some();
        if again {
            // Ejected already: only the probe's failure counts (requests sent before the
            // ejection may still be failing).
            if !e.probing {
                return None;
            }
        } else if failures < accrual.consecutive_failures || !may_eject() {
            return None;
        }
        e.streak = e.streak.saturating_add(1);
        e.penalty = accrual.penalty(e.streak, rand::random::<f64>());
        e.until = Some(Instant::now() + e.penalty);
        e.probing = false;
        self.serving.store(false, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        Some(e.penalty)
    }

    /// Counts a health-check probe's result: `unhealthy` failures in a row make a ready
    /// endpoint unready, `healthy` passes in a row make an unready one ready again. Returns the
    /// new readiness when this probe changed it.
    pub fn probed(&self, passed: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        let streak = self.probes.load(Ordering::Relaxed);
        let streak = match (passed, streak > 0) {
            (true, true) => streak.saturating_add(1),
            (true, false) => 1,
            (false, true) => -1,
            (false, false) => streak.saturating_sub(1),
        };
        self.probes.store(streak, Ordering::Relaxed);
        let ready = self.ready.load(Ordering::Relaxed);
        let flip = if ready {
            !passed && streak.unsigned_abs() >= unhealthy
        } else {
            passed && streak.unsigned_abs() >= healthy
        };
        flip.then(|| {
            self.set_ready(!ready);
            !ready
        })
    }

    /// Forgets health checking: ready, no probe streak (its check was removed from the config).
    pub fn unchecked(&self) {
        self.probes.store(0, Ordering::Relaxed);
        if !self.ready.load(Ordering::Relaxed) {
            self.set_ready(true);
        }
    }

    /// Whether the active health check lets requests go to the endpoint.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Sets the active health check's verdict.
    pub fn set_ready(&self, ready: bool) {
        let e = self.ejection.lock();
        self.ready.store(ready, Ordering::Relaxed);
        self.serving.store(ready && e.until.is_none(), Ordering::Relaxed);
    }

    /// Whether the endpoint is ejected now (its penalty not over, or its probe pending).
    pub fn is_ejected(&self) -> bool {
        !self.serving.load(Ordering::Relaxed) && self.ejection.lock().until.is_some()
    }

    pub fn state(&self) -> HealthState {
        if self.serving.load(Ordering::Relaxed) {
            return HealthState::Healthy;
        }
        if !self.ready.load(Ordering::Relaxed) {
            return HealthState::Unready;
        }
        let e = self.ejection.lock();
        match e.until {
            Some(until) if !e.probing => match until.checked_duration_since(Instant::now()) {
                Some(remaining) if !remaining.is_zero() => HealthState::Ejected { remaining },
                _ => HealthState::Probing,
            },
            Some(_) => HealthState::Probing,
            None => HealthState::Healthy,
        }
    }

    /// Times this endpoint was ejected.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Failures in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    /// Adds a latency sample to the peak-EWMA estimate: a sample above the estimate replaces it
    /// (the peak), one below is averaged in with a weight that grows with the time since the
    /// last sample.
    pub fn observe_latency(&self, latency: Duration) {
        let now = self.nanos(Instant::now());
        // Whole seconds and nanoseconds apart: `as_nanos() as f64` converts from u128, in software.
        let rtt = latency.as_secs() as f64 * 1e9 + f64::from(latency.subsec_nanos());
        let (estimate, at) = self.load_ewma();
        let next = if rtt > estimate {
            rtt
        } else {
            let w = decay(now.saturating_sub(at));
            estimate * w + rtt * (1.0 - w)
        };
        self.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
        self.ewma_at.store(now, Ordering::Relaxed);
    }

    /// The latency estimate now, in nanoseconds: the last one decayed toward zero by the time
    /// since, so an endpoint left alone after a slow spell is tried again.
    pub fn latency_estimate(&self) -> f64 {
        let (estimate, at) = self.load_ewma();
        estimate * decay(self.nanos(Instant::now()).saturating_sub(at))
    }

    fn load_ewma(&self) -> (f64, u64) {
        (f64::from_bits(self.ewma_ns.load(Ordering::Relaxed)), self.ewma_at.load(Ordering::Relaxed))
    }

    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

/// The weight an estimate keeps after `ns` nanoseconds: exp(−ns / [`EWMA_DECAY_NS`]). Under
/// traffic the time between samples is a small fraction of the time constant, where four terms
/// of the series give it to within x⁴/24 (below 7·10⁻⁷ for x < 1/16, i.e. 625 ms) without the
/// cost of `exp`; longer spells take `exp`.
#[inline]
fn decay(ns: u64) -> f64 {
    let x = ns as f64 / EWMA_DECAY_NS;
    if x < 1.0 / 16.0 {
        1.0 - x * (1.0 - x * (0.5 - x / 6.0))
    } else {
        (-x).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accrual(n: u32) -> Accrual {
        Accrual {
            consecutive_failures: n,
            min_penalty: Duration::from_secs(1),
            max_penalty: Duration::from_secs(10),
            jitter: 0.0,
            max_ejection_percent: 100,
        }
    }

    #[test]
    fn penalties_double_from_the_minimum_to_the_maximum_with_jitter_on_top() {
        let a = accrual(1);
        let got: Vec<u64> = (1..=6).map(|s| a.penalty(s, 0.9).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
        let j = Accrual { jitter: 0.5, ..a };
        assert_eq!(j.penalty(1, 0.0), Duration::from_secs(1));
        assert_eq!(j.penalty(1, 0.5), Duration::from_millis(1250));
        assert_eq!(j.penalty(100, 0.999_999).as_secs(), 14, "no overflow on long streaks");
    }

    #[test]
    fn the_ejection_cap_is_a_share_of_the_endpoints_at_least_one_never_the_only_one() {
        let a = Accrual { max_ejection_percent: 50, ..accrual(1) };
        assert_eq!([1, 2, 3, 4, 10].map(|n| a.max_ejected(n)), [0, 1, 1, 2, 5]);
        let none = Accrual { max_ejection_percent: 0, ..a };
        assert_eq!(none.max_ejected(10), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_and_a_successful_probe_readmits() {
        let h = Health::default();
        let a = accrual(3);
        assert_eq!(h.failed(Some(&a), || true), None);
        h.succeeded();
        assert_eq!(h.failed(Some(&a), || true), None);
        assert_eq!(h.failed(Some(&a), || true), None);
        assert_eq!(h.failed(Some(&a), || true), Some(Duration::from_secs(1)), "the third in a row ejects");
        assert!(!h.available());
        assert_eq!(h.state(), HealthState::Ejected { remaining: Duration::from_secs(1) });
        // Failures of requests sent before the ejection do not lengthen it.
        assert_eq!(h.failed(Some(&a), || true), None);

        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!h.available());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(h.available(), "the penalty is over: a probe may go");
        assert_eq!(h.state(), HealthState::Probing);
        h.sending();
        assert!(!h.available(), "one probe at a time");
        h.succeeded();
        assert!(h.available());
        assert_eq!(h.state(), HealthState::Healthy);
        assert_eq!(h.ejections(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_ejects_again_for_twice_as_long() {
        let h = Health::default();
        let a = accrual(1);
        assert_eq!(h.failed(Some(&a), || true), Some(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        h.sending();
        assert_eq!(h.failed(Some(&a), || true), Some(Duration::from_secs(2)));
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(!h.available());
        tokio::time::advance(Duration::from_millis(1)).await;
        h.sending();
        h.succeeded();
        // The streak restarts after a success.
        assert_eq!(h.failed(Some(&a), || true), Some(Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_reports_lets_another_go_after_a_penalty() {
        let h = Health::default();
        let a = accrual(1);
        h.failed(Some(&a), || true);
        tokio::time::advance(Duration::from_secs(1)).await;
        h.sending();
        assert!(!h.available());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(h.available());
    }

    #[tokio::test(start_paused = true)]
    async fn without_accrual_or_over_the_cap_nothing_is_ejected() {
        let h = Health::default();
        for _ in 0..10 {
            assert_eq!(h.failed(None, || true), None);
            assert_eq!(h.failed(Some(&accrual(0)), || true), None);
            assert_eq!(h.failed(Some(&accrual(2)), || false), None);
        }
        assert!(h.available());
        assert_eq!(h.consecutive_failures(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unready_endpoint_is_unavailable_until_its_check_passes() {
        let h = Health::default();
        h.set_ready(false);
        assert!(!h.available());
        assert_eq!(h.state(), HealthState::Unready);
        h.set_ready(true);
        assert!(h.available());
    }

    #[tokio::test(start_paused = true)]
    async fn the_latency_estimate_jumps_to_peaks_and_decays_when_idle() {
        let h = Health::default();
        h.observe_latency(Duration::from_millis(100));
        assert!((h.latency_estimate() - 100e6).abs() < 1.0);
        // A fast sample right after barely moves it; after a long quiet spell it decays.
        h.observe_latency(Duration::from_millis(1));
        assert!(h.latency_estimate() > 99e6);
        tokio::time::advance(Duration::from_secs(10)).await;
        let decayed = h.latency_estimate();
        assert!((decayed - 100e6 / std::f64::consts::E).abs() < 1e5, "{decayed}");
        // A fast sample after the quiet spell weighs 1 - 1/e.
        h.observe_latency(Duration::from_millis(1));
        let mixed = 100e6 / std::f64::consts::E + 1e6 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((h.latency_estimate() - mixed).abs() < 1e5, "{}", h.latency_estimate());
    }

    #[test]
    fn the_decay_is_exp_to_within_its_bound_on_both_sides_of_the_series_cut() {
        for ns in [
            0,
            1,
            1_000,
            1_000_000,
            100_000_000,
            624_999_999,
            625_000_000,
            625_000_001,
            9_000_000_000,
            60_000_000_000,
        ] {
            let exact = (-(ns as f64) / EWMA_DECAY_NS).exp();
            assert!((decay(ns) - exact).abs() < 7e-7, "{ns} ns: {} vs {exact}", decay(ns));
        }
        assert_eq!(decay(0), 1.0);
    }

    #[test]
    fn probes_make_an_endpoint_unready_and_ready_again_only_at_their_thresholds() {
        let h = Health::default();
        assert_eq!(h.probed(false, 2, 3), None);
        assert_eq!(h.probed(false, 2, 3), None);
        assert!(h.available(), "two failures of three: still ready");
        assert_eq!(h.probed(false, 2, 3), Some(false));
        assert!(!h.available() && h.state() == HealthState::Unready);
        assert_eq!(h.probed(false, 2, 3), None, "already unready");
        assert_eq!(h.probed(true, 2, 3), None);
        assert_eq!(h.probed(false, 2, 3), None, "a failure restarts the count of passes");
        assert_eq!(h.probed(true, 2, 3), None);
        assert_eq!(h.probed(true, 2, 3), Some(true));
        assert!(h.available() && h.state() == HealthState::Healthy);
        // A pass between failures restarts their count too.
        for passed in [false, false, true, false, false] {
            assert_eq!(h.probed(passed, 2, 3), None);
        }
        assert_eq!(h.probed(false, 2, 3), Some(false));
        h.unchecked();
        assert!(h.available() && h.is_ready(), "a removed check leaves the endpoint ready");
    }
}

//! Local rate limits: GCRA buckets ([`governor`]) compiled from a route's or a service's
//! `rateLimits`. A [`Limits`] is every limit of one route or one service; a request passes when
//! all of them admit it. They are checked keyed limits first, then the unkeyed ones, each in
//! config order; a request one limit refuses has counted against the limits checked before it
//! (its own key's, so one client refused by its own limit never uses up a shared total). Each limit is one bucket, or a bucket per key (the client's IP address, or a
//! request header's value) with per-key overrides.
//!
//! Who uses it: the request filters (a route's limits, [`crate::filter`]) and the backend choice
//! (a service's limits, checked once the service is chosen, before an endpoint is). What it must
//! not know: routes, endpoints, the request path — it takes a request's headers and client address
//! and says admit or refuse.
//!
//! Memory: keyed buckets live in a map of at most `maxKeys` entries (each 8-byte key hashed with a
//! per-limit random seed, so a client cannot choose another's bucket). A key whose bucket is full
//! again holds nothing a fresh bucket would not, so [`Limits::sweep`] drops such keys on the
//! proxy's housekeeping tick and shrinks the map. When the map is full, the request that finds it
//! so drops the replenished keys at once (at most every [`EVICT_EVERY`]); new keys that still do not
//! fit share one overflow bucket with the limit's rate and burst until keys expire.
//!
//! A limit with a `global` section is also counted across proxies on Redis or by a rate limit
//! service ([`global`]): once every local check admits a request, [`Limits::global`] gives the
//! future that asks the server, one round trip per global limit. The local bucket stays in
//! front: it enforces the burst at once, in-process, and a request it refuses never reaches the
//! server.

use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use rustc_hash::FxHashMap;

use crate::config::{RateLimitConfig, RateLimitKey};
use crate::error::ProxyError;
use crate::filter::Rejection;
use crate::Error;

mod global;
mod global_limit;

pub use global::{Stores, TlsFiles};
use global_limit::Global;

/// How often a request that finds a keyed limit's map full may sweep it of replenished keys.
pub const EVICT_EVERY: Duration = Duration::from_millis(100);

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A limit's counters, kept in [`crate::metrics::Metrics`] under its labels across reloads.
#[derive(Debug, Default)]
pub struct LimitMetrics {
    /// Requests it refused.
    pub rejected: AtomicU64,
    /// Keys it tracks (as of the last sweep).
    pub keys: AtomicU64,
    /// Requests counted in its overflow bucket (new keys while the map was full).
    pub overflowed: AtomicU64,
    /// Requests its global check gave no answer for (Redis down or slow), handled by its fail mode.
    pub fallback: AtomicU64,
}

/// Every limit of one route or one service.
#[derive(Debug)]
pub struct Limits<C: Clock = DefaultClock> {
    limits: Box<[Limit<C>]>,
    /// Whether any limit is also global.
    global: bool,
}

/// A request's global checks, to await once its local checks admitted it.
pub type GlobalCheck = Pin<Box<dyn Future<Output = Result<(), Box<Rejection>>> + Send>>;

/// Why a request was refused: the limit and how long until it would admit one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    index: usize,
    wait: Duration,
}

impl Denied {
    /// Whole seconds until the limit admits a request again, rounded up (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.wait.as_secs() + u64::from(self.wait.subsec_nanos() > 0);
        secs.max(1)
    }
}

impl<C: Clock + Clone> Limits<C> {
    /// Compiles `configs` (of the route or service `owner`, for messages); `metrics` gives each
    /// limit, by its name, its counters. A global limit's Redis key starts with `scope` (the
    /// route's or service's name, so proxies that share the name share the count) and its server
    /// comes from `stores`. None when there are no limits.
    pub fn compile(
        owner: &str,
        scope: &str,
        configs: &[RateLimitConfig],
        clock: &C,
        stores: &Stores,
        mut metrics: impl FnMut(&str) -> Arc<LimitMetrics>,
    ) -> Result<Option<Self>, Error> {
        if configs.is_empty() {
            return Ok(None);
        }
        let mut names: Vec<String> = Vec::with_capacity(configs.len());
        let mut limits = configs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let name = if c.name.is_empty() { format!("limit-{}", i + 1) } else { c.name.clone() };
                // The name labels its metrics and its `RateLimit-Policy`: one per limit.
                if names.contains(&name) {
                    return Err(Error::Config(format!("{owner}: two rate limits named {name:?}")));
                }
                names.push(name.clone());
                let m = metrics(&name);
                let mut limit = Limit::compile(owner, name, c, clock, m)?;
                if let Some(g) = &c.global {
                    limit.global = Some(Box::new(Global::compile(owner, scope, &limit, c, g, stores)?));
                }
                Ok(limit)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        // Keyed limits first: a client its own limit refuses does not use up a shared one.
        limits.sort_by_key(|l| matches!(l.buckets, Buckets::One(_)));
        let global = limits.iter().any(|l| l.global.is_some());
        Ok(Some(Limits { limits: limits.into(), global }))
    }

    /// Whether every limit admits a request with `headers` from `client`; the first that does
    /// not is counted as refusing it.
    #[inline]
    pub fn check(&self, headers: &HeaderMap, client: SocketAddr, peer: Option<&str>) -> Result<(), Denied> {
        for (index, limit) in self.limits.iter().enumerate() {
            if let Err(wait) = limit.check(headers, client.ip(), peer) {
                limit.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(Denied { index, wait });
            }
        }
        Ok(())
    }

    /// The global checks of a request every local limit admitted: None when no limit is global
    /// (nothing to wait for), else a future that asks Redis for each global limit in order and
    /// ends with the first refusal (429, as a local one) or, when Redis gives no answer in time,
    /// with the limit's fail mode (closed: 503 `rate-limit-unavailable`).
    #[inline]
    pub fn global(
        self: &Arc<Self>,
        headers: &HeaderMap,
        client: SocketAddr,
        peer: Option<&str>,
    ) -> Option<GlobalCheck>
    where
        Self: Send + Sync + 'static,
    {
        if !self.global {
            return None;
        }
        Some(self.global_check(headers, client, peer))
    }

    #[inline(never)]
    fn global_check(
        self: &Arc<Self>,
        headers: &HeaderMap,
        client: SocketAddr,
        peer: Option<&str>,
    ) -> GlobalCheck
    where
        Self: Send + Sync + 'static,
    {
        // The keys are read from the request now; the future owns them.
        let asks: Vec<(usize, global::Ask)> = self
            .limits
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((i, l.global.as_deref()?.ask(l, headers, client.ip(), peer))))
            .collect();
        let this = self.clone();
        Box::pin(async move {
            for (index, ask) in asks {
                // Nothing borrowed from `this` is held across the wait.
                let (store, timeout, fail_closed, metrics) = {
                    let Some(limit) = this.limits.get(index) else { continue };
                    let Some(g) = limit.global.as_deref() else { continue };
                    (g.store.clone(), g.timeout, g.fail_closed, limit.metrics.clone())
                };
                match store.check(&ask, timeout).await {
                    Ok(None) => {}
                    Ok(Some(wait)) => {
                        metrics.rejected.fetch_add(1, Ordering::Relaxed);
                        return Err(Box::new(this.rejection(Denied { index, wait })));
                    }
                    Err(e) => {
                        metrics.fallback.fetch_add(1, Ordering::Relaxed);
                        store.failed(&e, fail_closed);
                        if fail_closed {
                            return Err(Box::new(unavailable()));
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// The 429 for `denied`: `Retry-After` and the IETF `RateLimit-Policy` and `RateLimit` fields
    /// (draft-ietf-httpapi-ratelimit-headers) naming the limit that refused.
    #[cold]
    pub fn rejection(&self, denied: Denied) -> Rejection {
        let mut headers = HeaderMap::with_capacity(3);
        let secs = denied.retry_after_secs();
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        if let Some(limit) = self.limits.get(denied.index) {
            headers.insert(RATELIMIT_POLICY.clone(), limit.policy.clone());
            let now = format!("\"{}\";r=0;t={secs}", limit.name);
            if let Ok(v) = HeaderValue::from_str(&now) {
                headers.insert(RATELIMIT.clone(), v);
            }
        }
        Rejection { error: ProxyError::RateLimited, headers, body: None }
    }

    /// Housekeeping: drops the keys whose buckets are full again and shrinks maps that emptied.
    pub fn sweep(&self) {
        for limit in self.limits.iter() {
            if let Buckets::Keyed(k) = &limit.buckets {
                k.sweep();
                limit.metrics.keys.store(k.store.map.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// The 503 of a global limit that fails closed: Redis gave no answer in time.
#[cold]
fn unavailable() -> Rejection {
    let mut headers = HeaderMap::with_capacity(1);
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    Rejection { error: ProxyError::RateLimitUnavailable, headers, body: None }
}

/// One limit.
#[derive(Debug)]
struct Limit<C: Clock> {
    name: Box<str>,
    buckets: Buckets<C>,
    /// `RateLimit-Policy`: `"name";q=<rate>;w=1;meshproxy-burst=<burst>`.
    policy: HeaderValue,
    metrics: Arc<LimitMetrics>,
    /// Also counted on Redis.
    global: Option<Box<Global>>,
}

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

#[derive(Debug)]
enum Buckets<C: Clock> {
    One(Direct<C>),
    Keyed(Box<Keyed<C>>),
}

/// Where a keyed limit's key comes from.
#[derive(Debug)]
enum Source {
    Client,
    Header(HeaderName),
    /// The mTLS peer's SPIFFE ID.
    Identity,
}

/// The `<sa>.<namespace>` form of a workload SPIFFE ID (`spiffe://<td>/ns/<ns>/sa/<sa>`), as
/// authorization rules and overrides may name it.
fn workload(id: &str) -> Option<String> {
    let path = id.strip_prefix("spiffe://")?.split_once('/')?.1;
    let (ns, sa) = path.strip_prefix("ns/")?.split_once("/sa/")?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains('/')).then(|| format!("{sa}.{ns}"))
}

#[derive(Debug)]
struct Keyed<C: Clock> {
    source: Source,
    seed: u64,
    map: RateLimiter<u64, CappedStore, C, NoOpMiddleware<C::Instant>>,
    /// The map's store, shared with `map` (governor lends it no other way).
    store: Arc<StoreInner>,
    /// When `map` started, on its clock.
    started: C::Instant,
    /// Header values (or client addresses' text) with buckets of their own.
    overrides: FxHashMap<Box<[u8]>, Direct<C>>,
    client_overrides: FxHashMap<IpAddr, Direct<C>>,
    /// Nanoseconds (on the limit's clock, since it started) of the last eviction by a request.
    last_evict: AtomicU64,
    /// The map's length when it was last shrunk.
    shrunk_at: AtomicUsize,
}

fn quota(owner: &str, rate: u32, burst: u32) -> Result<Quota, Error> {
    let bad = || Error::Config(format!("{owner}: a rate limit's rate and burst must be at least 1"));
    let rate = NonZeroU32::new(rate).ok_or_else(bad)?;
    let burst = NonZeroU32::new(burst).ok_or_else(bad)?;
    Ok(Quota::per_second(rate).allow_burst(burst))
}

impl<C: Clock + Clone> Limit<C> {
    fn compile(
        owner: &str,
        name: String,
        c: &RateLimitConfig,
        clock: &C,
        metrics: Arc<LimitMetrics>,
    ) -> Result<Self, Error> {
        let q = quota(owner, c.rate, c.burst)?;
        let policy =
            HeaderValue::from_str(&format!("\"{name}\";q={};w=1;meshproxy-burst={}", c.rate, c.burst))
                .map_err(|_| {
                    Error::Config(format!("{owner}: rate limit name {name:?} is not a valid field value"))
                })?;
        let source = match (c.key, &c.header) {
            (RateLimitKey::None, _) => None,
            (RateLimitKey::Client, _) => Some(Source::Client),
            (RateLimitKey::Header, Some(h)) => Some(Source::Header(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| Error::Config(format!("{owner}: invalid rate limit header {h:?}")))?,
            )),
            (RateLimitKey::Header, None) => {
                return Err(Error::Config(format!("{owner}: a rate limit keyed by header names no header")))
            }
            (RateLimitKey::Identity, _) => Some(Source::Identity),
        };
        let buckets = match source {
            None => {
                if !c.overrides.is_empty() {
                    return Err(Error::Config(format!(
                        "{owner}: rate limit {name:?} has overrides but no key to match them on"
                    )));
                }
                Buckets::One(RateLimiter::direct_with_clock(q, clock.clone()))
            }
            Some(source) => {
                let mut overrides = FxHashMap::default();
                let mut client_overrides = FxHashMap::default();
                for o in &c.overrides {
                    let limiter =
                        RateLimiter::direct_with_clock(quota(owner, o.rate, o.burst)?, clock.clone());
                    match source {
                        Source::Client => {
                            let ip: IpAddr = o.value.parse().map_err(|_| {
                                Error::Config(format!(
                                    "{owner}: rate limit override {:?} is not an IP address",
                                    o.value
                                ))
                            })?;
                            client_overrides.insert(ip.to_canonical(), limiter);
                        }
                        Source::Header(_) | Source::Identity => {
                            overrides.insert(o.value.as_bytes().into(), limiter);
                        }
                    }
                }
                let store = Arc::new(StoreInner {
                    map: DashMapStateStore::with_hasher(BuildHasherDefault::default()),
                    len: AtomicUsize::new(0),
                    cap: c.max_keys.max(1) as usize,
                    overflow: InMemoryState::default(),
                    metrics: metrics.clone(),
                });
                Buckets::Keyed(Box::new(Keyed {
                    source,
                    seed: rand::random(),
                    started: clock.now(),
                    map: RateLimiter::new(q, CappedStore(store.clone()), clock.clone()),
                    store,
                    overrides,
                    client_overrides,
                    last_evict: AtomicU64::new(0),
                    shrunk_at: AtomicUsize::new(0),
                }))
            }
        };
        Ok(Limit { name: name.into(), buckets, policy, metrics, global: None })
    }
}

impl<C: Clock> Limit<C> {
    /// Ok, or how long until a request would be admitted.
    #[inline]
    fn check(&self, headers: &HeaderMap, client: IpAddr, peer: Option<&str>) -> Result<(), Duration> {
        match &self.buckets {
            Buckets::One(l) => l.check().map_err(|n| n.wait_time_from(l.clock().now())),
            Buckets::Keyed(k) => k.check(headers, client, peer),
        }
    }
}

impl<C: Clock> Keyed<C> {
    #[inline]
    fn check(&self, headers: &HeaderMap, client: IpAddr, peer: Option<&str>) -> Result<(), Duration> {
        let key = match &self.source {
            Source::Client => {
                let ip = client.to_canonical();
                if let Some(l) =
                    (!self.client_overrides.is_empty()).then(|| self.client_overrides.get(&ip)).flatten()
                {
                    return l.check().map_err(|n| n.wait_time_from(l.clock().now()));
                }
                match ip {
                    IpAddr::V4(v4) => xxhash_rust::xxh3::xxh3_64_with_seed(&v4.octets(), self.seed),
                    IpAddr::V6(v6) => xxhash_rust::xxh3::xxh3_64_with_seed(&v6.octets(), self.seed),
                }
            }
            Source::Header(name) => {
                // Requests without the header share one bucket: the empty value's.
                let value = headers.get(name).map_or(&b""[..], HeaderValue::as_bytes);
                if let Some(l) = (!self.overrides.is_empty()).then(|| self.overrides.get(value)).flatten() {
                    return l.check().map_err(|n| n.wait_time_from(l.clock().now()));
                }
                xxhash_rust::xxh3::xxh3_64_with_seed(value, self.seed)
            }
            Source::Identity => {
                // Requests without a peer identity (plaintext) share one bucket: the empty ID's.
                let id = peer.unwrap_or_default();
                if !self.overrides.is_empty() {
                    let by_id = self.overrides.get(id.as_bytes());
                    let by_workload = || workload(id).and_then(|w| self.overrides.get(w.as_bytes()));
                    if let Some(l) = by_id.or_else(by_workload) {
                        return l.check().map_err(|n| n.wait_time_from(l.clock().now()));
                    }
                }
                xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), self.seed)
            }
        };
        if self.store.len.load(Ordering::Relaxed) >= self.store.cap {
            self.evict_when_full();
        }
        self.map.check_key(&key).map_err(|n| n.wait_time_from(self.map.clock().now()))
    }

    /// The map is full: drop the keys whose buckets are full again, unless a request did so less
    /// than [`EVICT_EVERY`] ago.
    #[cold]
    fn evict_when_full(&self) {
        let clock = self.map.clock();
        let now = clock.now().duration_since(self.started).as_u64();
        let last = self.last_evict.load(Ordering::Relaxed);
        let every = EVICT_EVERY.as_nanos() as u64;
        if now.saturating_sub(last) < every && last != 0 {
            return;
        }
        if self.last_evict.compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.map.retain_recent();
        }
    }

    fn sweep(&self) {
        self.map.retain_recent();
        let len = self.store.map.len();
        // Shrink once the map holds under a quarter of what it held at its last shrink.
        let at = self.shrunk_at.load(Ordering::Relaxed);
        if len.saturating_mul(4) < at || (len == 0 && at > 0) {
            self.map.shrink_to_fit();
            self.shrunk_at.store(len, Ordering::Relaxed);
        } else if len > at {
            self.shrunk_at.store(len, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.store.map.len()
    }
}

/// Hashes a `u64` key to itself: the keys are already seeded hashes.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A keyed limit's buckets: at most `cap` keys; a new key past it counts in `overflow`.
#[derive(Debug)]
struct StoreInner {
    map: DashMapStateStore<u64, BuildHasherDefault<KeyHasher>>,
    /// Keys in `map`: counted up as keys are added, recounted on each sweep.
    len: AtomicUsize,
    cap: usize,
    overflow: InMemoryState,
    metrics: Arc<LimitMetrics>,
}

/// The state store governor's keyed limiter runs on ([`StoreInner`], shared with [`Keyed`]).
#[derive(Debug, Clone)]
struct CappedStore(Arc<StoreInner>);

impl StateStore for CappedStore {
    type Key = u64;

    #[inline]
    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let s = &*self.0;
        if let Some(state) = s.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if s.len.load(Ordering::Relaxed) >= s.cap {
            s.metrics.overflowed.fetch_add(1, Ordering::Relaxed);
            return s.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let state = s.map.entry(*key).or_insert_with(|| {
            s.len.fetch_add(1, Ordering::Relaxed);
            InMemoryState::default()
        });
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<u64> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let s = &*self.0;
        // A key whose bucket is full again is no different from an absent one.
        s.map.retain(|_, state| {
            let keep = std::cell::Cell::new(false);
            let _ = state.measure_and_replace(&NotKeyed::NonKey, |tat| {
                keep.set(tat.is_some_and(|t| t > drop_below));
                Err::<((), Nanos), ()>(())
            });
            keep.get()
        });
        s.len.store(s.map.len(), Ordering::Relaxed);
    }

    fn shrink_to_fit(&self) {
        self.0.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.map.len()
    }

    fn is_empty(&self) -> bool {
        self.0.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimitOverrideConfig;
    use governor::clock::FakeRelativeClock;

    fn config(rate: u32, burst: u32, key: RateLimitKey) -> RateLimitConfig {
        RateLimitConfig {
            name: String::new(),
            rate,
            burst,
            key,
            header: (key == RateLimitKey::Header).then(|| "x-user".into()),
            overrides: vec![],
            max_keys: 100_000,
            global: None,
        }
    }

    fn limits(configs: &[RateLimitConfig], clock: &FakeRelativeClock) -> Limits<FakeRelativeClock> {
        Limits::compile("test", "test", configs, clock, &Stores::default(), |_| Arc::default())
            .unwrap()
            .unwrap()
    }

    const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), 5000);

    /// Offers `per_second` requests a second, evenly spaced, for `secs` seconds; counts the admitted.
    fn offer(l: &Limits<FakeRelativeClock>, clock: &FakeRelativeClock, per_second: u64, secs: u64) -> u64 {
        let gap = Duration::from_nanos(1_000_000_000 / per_second);
        let headers = HeaderMap::new();
        let mut admitted = 0;
        for _ in 0..per_second * secs {
            if l.check(&headers, CLIENT, None).is_ok() {
                admitted += 1;
            }
            clock.advance(gap);
        }
        admitted
    }

    #[test]
    fn a_thousand_per_second_for_ten_seconds_against_rate_100_burst_10_admits_1010() {
        let clock = FakeRelativeClock::default();
        let l = limits(&[config(100, 10, RateLimitKey::None)], &clock);
        let admitted = offer(&l, &clock, 1000, 10);
        // The burst at once, then one every 10 ms: 10 + 100 × 10 (the issue's bar is ±2 %).
        assert!((1000..=1010).contains(&admitted), "admitted {admitted}");
        assert!(admitted.abs_diff(1010) <= 1, "admitted {admitted}");
    }

    #[test]
    fn two_limits_of_one_name_are_refused() {
        let clock = FakeRelativeClock::default();
        let mut a = config(1, 1, RateLimitKey::None);
        a.name = "limit-2".into();
        let b = config(1, 1, RateLimitKey::None);
        let err = Limits::compile("route \"r\"", "route:r", &[a, b], &clock, &Stores::default(), |_| {
            Arc::default()
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "route \"r\": two rate limits named \"limit-2\"");
    }

    #[test]
    fn under_the_rate_every_request_is_admitted() {
        let clock = FakeRelativeClock::default();
        let l = limits(&[config(100, 1, RateLimitKey::None)], &clock);
        assert_eq!(offer(&l, &clock, 50, 10), 500);
    }

    #[test]
    fn every_limit_must_admit_a_request() {
        let clock = FakeRelativeClock::default();
        // A total of 100/s and 10/s per client: one client gets the per-client rate.
        let l = limits(&[config(100, 10, RateLimitKey::None), config(10, 1, RateLimitKey::Client)], &clock);
        let admitted = offer(&l, &clock, 1000, 10);
        assert!(admitted.abs_diff(101) <= 2, "admitted {admitted}");
        let denied = (0..20).find_map(|_| l.check(&HeaderMap::new(), CLIENT, None).err()).expect("refused");
        assert_eq!(
            l.rejection(denied).headers["ratelimit"],
            "\"limit-2\";r=0;t=1",
            "the per-client limit refuses"
        );
        // The refused requests did not use up the total: another client gets its burst.
        let other = SocketAddr::from(([10, 0, 0, 2], 1));
        assert_eq!((0..20).filter(|_| l.check(&HeaderMap::new(), other, None).is_ok()).count(), 1);
    }

    #[test]
    fn each_key_has_its_own_bucket_and_overrides_their_own_rate() {
        let clock = FakeRelativeClock::default();
        let mut c = config(1, 2, RateLimitKey::Header);
        c.overrides = vec![RateLimitOverrideConfig { value: "vip".into(), rate: 1, burst: 5 }];
        let l = limits(&[c], &clock);
        let user = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-user", HeaderValue::from_str(v).unwrap());
            h
        };
        let admitted = |h: &HeaderMap| (0..10).filter(|_| l.check(h, CLIENT, None).is_ok()).count();
        assert_eq!(admitted(&user("alice")), 2);
        assert_eq!(admitted(&user("bob")), 2, "another key, another bucket");
        assert_eq!(admitted(&user("vip")), 5, "the override's burst");
        assert_eq!(admitted(&HeaderMap::new()), 2, "requests without the header share one bucket");
        assert_eq!(admitted(&user("alice")), 0);
        clock.advance(Duration::from_secs(1));
        assert_eq!(admitted(&user("alice")), 1, "one more a second");
    }

    #[test]
    fn client_overrides_match_the_client_address() {
        let clock = FakeRelativeClock::default();
        let mut c = config(1, 1, RateLimitKey::Client);
        c.overrides = vec![RateLimitOverrideConfig { value: "10.0.0.1".into(), rate: 1, burst: 3 }];
        let l = limits(&[c], &clock);
        let h = HeaderMap::new();
        assert_eq!((0..10).filter(|_| l.check(&h, CLIENT, None).is_ok()).count(), 3);
        let other = SocketAddr::from(([10, 0, 0, 2], 1));
        assert_eq!((0..10).filter(|_| l.check(&h, other, None).is_ok()).count(), 1);
    }

    #[test]
    fn a_refusal_carries_retry_after_and_the_ietf_fields() {
        let clock = FakeRelativeClock::default();
        let mut c = config(2, 1, RateLimitKey::None);
        c.name = "total".into();
        let l = limits(&[c], &clock);
        assert!(l.check(&HeaderMap::new(), CLIENT, None).is_ok());
        let denied = l.check(&HeaderMap::new(), CLIENT, None).unwrap_err();
        assert_eq!(denied.wait, Duration::from_millis(500));
        let r = l.rejection(denied);
        assert_eq!(r.error, ProxyError::RateLimited);
        assert_eq!(r.headers["retry-after"], "1", "whole seconds, rounded up");
        assert_eq!(r.headers["ratelimit-policy"], "\"total\";q=2;w=1;meshproxy-burst=1");
        assert_eq!(r.headers["ratelimit"], "\"total\";r=0;t=1");
        let slow = Denied { index: 0, wait: Duration::from_millis(2001) };
        assert_eq!(slow.retry_after_secs(), 3);
    }

    /// The flood [`a_million_distinct_keys_keep_memory_bounded`] runs in a process of its own.
    #[test]
    #[ignore = "run by a_million_distinct_keys_keep_memory_bounded in a child process"]
    fn million_key_flood() {
        let clock = FakeRelativeClock::default();
        // The default `maxKeys`.
        let c = config(1000, 10, RateLimitKey::Header);
        let metrics = Arc::new(LimitMetrics::default());
        let m = metrics.clone();
        let l = Limits::compile("test", "test", &[c], &clock, &Stores::default(), move |_| m.clone())
            .unwrap()
            .unwrap();
        let Buckets::Keyed(k) = &l.limits[0].buckets else { panic!("keyed") };
        let mut h = HeaderMap::new();
        for i in 0..1_000_000u32 {
            h.insert("x-user", HeaderValue::from(i));
            // A flood of new keys 1 µs apart: each bucket is full again 10 ms after its request,
            // so a full map has replenished keys to drop.
            let _ = l.check(&h, CLIENT, None);
            clock.advance(Duration::from_nanos(1_000));
            assert!(k.len() <= 100_000, "{} keys", k.len());
        }
        // Idle keys expire: once every bucket is full again the sweep empties the map.
        clock.advance(Duration::from_secs(1));
        l.sweep();
        assert_eq!(k.len(), 0);
        assert_eq!(metrics.keys.load(Ordering::Relaxed), 0);
        println!("peak-rss-kib {}", proc_status_kib("VmHWM:"));
    }

    #[test]
    fn a_million_distinct_keys_keep_memory_bounded() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "ratelimit::tests::million_key_flood",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let peak: u64 = stdout
            .lines()
            .find_map(|l| l.split("peak-rss-kib ").nth(1))
            .and_then(|v| v.trim().parse().ok())
            .expect("the child reports its peak RSS");
        eprintln!("one million distinct keys: peak RSS {peak} KiB");
        // The bound the README states for a limit's default maxKeys (the test binary included).
        assert!(peak < 16 * 1024, "peak RSS {peak} KiB");
    }

    #[test]
    fn a_full_map_sends_new_keys_to_one_overflow_bucket() {
        let clock = FakeRelativeClock::default();
        let mut c = config(1, 2, RateLimitKey::Header);
        c.max_keys = 2;
        let l = limits(&[c], &clock);
        let user = |v: u32| {
            let mut h = HeaderMap::new();
            h.insert("x-user", HeaderValue::from(v));
            h
        };
        assert!(l.check(&user(1), CLIENT, None).is_ok());
        assert!(l.check(&user(2), CLIENT, None).is_ok());
        // Keys 3, 4, 5 share the overflow bucket: its burst of 2, then refused.
        assert!(l.check(&user(3), CLIENT, None).is_ok());
        assert!(l.check(&user(4), CLIENT, None).is_ok());
        assert!(l.check(&user(5), CLIENT, None).is_err());
        // Key 1 keeps its own bucket.
        assert!(l.check(&user(1), CLIENT, None).is_ok());
    }

    fn proc_status_kib(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn a_limit_keyed_by_identity_counts_each_mtls_peer_apart_and_plaintext_together() {
        let clock = FakeRelativeClock::default();
        let mut c = config(1, 2, RateLimitKey::Identity);
        c.overrides = vec![RateLimitOverrideConfig { value: "billing.shop".into(), rate: 1, burst: 5 }];
        let l = limits(&[c], &clock);
        let web = Some("spiffe://cluster.local/ns/shop/sa/web");
        let admitted =
            |peer: Option<&str>| (0..10).filter(|_| l.check(&HeaderMap::new(), CLIENT, peer).is_ok()).count();
        assert_eq!(admitted(web), 2, "web.shop's own bucket");
        assert_eq!(
            admitted(Some("spiffe://cluster.local/ns/shop/sa/orders")),
            2,
            "another peer, another bucket"
        );
        assert_eq!(
            admitted(Some("spiffe://cluster.local/ns/shop/sa/billing")),
            5,
            "an override by <sa>.<ns>"
        );
        assert_eq!(admitted(None), 2, "plaintext clients share one bucket");
        assert_eq!(admitted(None), 0);
        assert_eq!(super::workload("spiffe://td/ns/shop/sa/web").as_deref(), Some("web.shop"));
        assert_eq!(super::workload("spiffe://td/other"), None);
    }
}

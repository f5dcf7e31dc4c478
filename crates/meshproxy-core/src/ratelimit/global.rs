//! Global rate limits: a limit's count shared by every proxy through one Redis server.
//!
//! The algorithm is GCRA, as the local limits run it, in a Lua script ([`GCRA`]) that Redis runs
//! atomically by EVALSHA (the `redis` crate's [`redis::Script`] loads it once per server, again
//! after a `SCRIPT FLUSH` or a restart). The key holds the bucket's theoretical arrival time in
//! microseconds of Redis's own clock (`TIME`), so proxies' clocks never meet; it expires once
//! the bucket is full again. One check is one round trip on a multiplexed connection: requests
//! checked at once share its socket and are pipelined on it, none waits for another's answer.
//!
//! Why a round trip per request rather than leasing tokens in batches: a lease hands a proxy
//! tokens another proxy may need, which breaks the combined rate when traffic is uneven between
//! proxies, and the local limit in front already bounds what reaches Redis to `rate` per proxy.
//!
//! Who uses it: [`super::Limits`], for a limit with a `global` section, after its local check
//! admits a request. What it must not know: routes, listeners, the HTTP request — it takes a key,
//! a rate and a burst and answers admit, refuse (with the wait) or fail.
//!
//! Failures (Redis down, unreachable, slower than the limit's `timeout`) are the caller's to
//! handle by the limit's fail mode; here they are logged at most every [`WARN_EVERY`] per server.
//! Once a check has failed, one request per [`PROBE_EVERY`] asks the server again and the others
//! fail at once, so an outage costs requests no wait beyond the probe's.
//! The connection is a [`ConnectionManager`]: made lazily by the first check (on the runtime
//! that serves it), reconnected on its own with backoff after an I/O error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::Error;

/// How often a server's failures are logged (each failure is counted in the limit's metrics).
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// While a server fails, how often one request asks it again.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);

/// GCRA on one key. KEYS[1]: the bucket; ARGV[1]: the emission interval (µs, may be
/// fractional); ARGV[2]: the burst. Returns 0 when admitted (and records it), else the wait in
/// µs until a request would be.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local limit = emission * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + emission
local wait = new_tat - now - limit
if wait > 0 then return math.ceil(wait) end
redis.call('SET', KEYS[1], string.format('%d', math.ceil(new_tat)), 'PX', math.ceil((new_tat - now) / 1000))
return 0
";

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA));

/// Why a global check gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum GlobalError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("not asked: redis failed less than {PROBE_EVERY:?} ago")]
    Failing,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Setup(String),
}

/// The Redis servers of a proxy's global limits, by URL: kept across reloads, so a limit that
/// stays keeps its connection.
#[derive(Default)]
pub struct Stores {
    by_url: Mutex<HashMap<Box<str>, Arc<Store>>>,
}

impl Stores {
    /// The server at `url` (`owner` names the limit in messages): the one already known, or a
    /// new one, not yet connected.
    pub fn get(&self, owner: &str, url: &str) -> Result<Arc<Store>, Error> {
        let mut by_url = self.by_url.lock();
        if let Some(s) = by_url.get(url) {
            return Ok(s.clone());
        }
        let client = redis::Client::open(url)
            .map_err(|e| Error::Config(format!("{owner}: invalid global redis URL {url:?}: {e}")))?;
        let store = Arc::new(Store {
            url: redact(url).into(),
            client,
            manager: OnceLock::new(),
            started: tokio::time::Instant::now(),
            last_warn: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            next_probe: AtomicU64::new(0),
        });
        by_url.insert(url.into(), store.clone());
        Ok(store)
    }

    /// Forgets the servers no limit of the running config uses (their connections close once
    /// the last request on an older config is done with them).
    pub fn retain(&self, used: &std::collections::HashSet<&str>) {
        self.by_url.lock().retain(|url, _| used.contains(&**url));
    }
}

/// `url` without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_string(),
    }
}

/// One Redis server.
pub struct Store {
    /// For logs, without a password.
    url: Box<str>,
    client: redis::Client,
    /// Made by the first check, on the runtime that runs it.
    manager: OnceLock<Result<ConnectionManager, String>>,
    started: tokio::time::Instant,
    /// Milliseconds since `started` of the last warning (0: none yet).
    last_warn: AtomicU64,
    /// Whether the last check failed (logged once when checks succeed again).
    failing: AtomicBool,
    /// While `failing`: milliseconds since `started` before which no request asks the server.
    next_probe: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Store {
    fn now_ms(&self) -> u64 {
        (self.started.elapsed().as_millis() as u64).max(1)
    }

    /// While the server fails: whether this request is the one that asks it again (one per
    /// [`PROBE_EVERY`]).
    #[cold]
    fn probe(&self) -> bool {
        let now = self.now_ms();
        let next = self.next_probe.load(Ordering::Relaxed);
        now >= next
            && self
                .next_probe
                .compare_exchange(
                    next,
                    now + PROBE_EVERY.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn manager(&self) -> Result<ConnectionManager, GlobalError> {
        let made = self.manager.get_or_init(|| {
            // Reconnection attempts back off from 50 ms to at most 1 s, so a server that comes
            // back is used again within about a second; each attempt gives up after 1 s.
            let config = ConnectionManagerConfig::new()
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(1))
                .set_number_of_retries(4)
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(None);
            ConnectionManager::new_lazy_with_config(self.client.clone(), config).map_err(|e| e.to_string())
        });
        made.clone().map_err(GlobalError::Setup)
    }

    /// Runs GCRA on `key` at one request per `emission_us` µs (a decimal number), `burst` at
    /// once: `None` when it admits the request, else how long until it would.
    pub async fn check(
        &self,
        key: &[u8],
        emission_us: &str,
        burst: u32,
        timeout: Duration,
    ) -> Result<Option<Duration>, GlobalError> {
        if self.failing.load(Ordering::Relaxed) && !self.probe() {
            return Err(GlobalError::Failing);
        }
        let run = async {
            let mut conn = self.manager()?;
            let wait: i64 = SCRIPT.key(key).arg(emission_us).arg(burst).invoke_async(&mut conn).await?;
            Ok::<_, GlobalError>(wait)
        };
        let wait = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(GlobalError::Timeout(timeout)),
        };
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(redis = %self.url, "global rate limits: redis answers again");
        }
        Ok((wait > 0).then(|| Duration::from_micros(wait as u64)))
    }

    /// Logs `error`, unless this server's last warning is less than [`WARN_EVERY`] old.
    #[cold]
    pub fn failed(&self, error: &GlobalError, fail_closed: bool) {
        let now = self.now_ms();
        if !matches!(error, GlobalError::Failing) && !self.failing.swap(true, Ordering::Relaxed) {
            self.next_probe.store(now + PROBE_EVERY.as_millis() as u64, Ordering::Relaxed);
        }
        let last = self.last_warn.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < WARN_EVERY.as_millis() as u64 {
            return;
        }
        if self.last_warn.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            let outcome = if fail_closed {
                "refused (failMode: closed)"
            } else {
                "admitted by the local limit alone (failMode: open)"
            };
            tracing::warn!(redis = %self.url, %error, "global rate limit check failed; requests are {outcome} until redis answers (logged at most every 10 s)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `redis-server` on a free port, without persistence, killed on drop.
    struct Server {
        child: Option<std::process::Child>,
        port: u16,
        dir: std::path::PathBuf,
    }

    impl Server {
        /// Panics when `redis-server` is not installed: a missing peer is a failure, never a
        /// skip (`.ci/run` installs it).
        fn start(port: Option<u16>) -> Server {
            let port = port.unwrap_or_else(|| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
                l.local_addr().expect("its address").port()
            });
            let dir = std::env::temp_dir().join(format!("meshproxy-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("a temp dir");
            let child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(&dir)
                .stdout(std::process::Stdio::null())
                .spawn();
            let Ok(child) = child else {
                panic!("redis-server is not installed: apt-get install redis-server (.ci/run installs it)");
            };
            let server = Server { child: Some(child), port, dir };
            for _ in 0..200 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            panic!("redis-server did not listen on {port}");
        }

        fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.kill();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    const TIMEOUT: Duration = Duration::from_millis(500);

    #[tokio::test]
    async fn redis_admits_the_burst_then_one_per_emission_interval() {
        let server = Server::start(None);
        let stores = Stores::default();
        let store = stores.get("test", &format!("redis://127.0.0.1:{}", server.port)).unwrap();
        // 2 a second (one every 500 ms), 3 at once.
        let mut admitted = 0;
        let mut refused = None;
        for _ in 0..5 {
            match store.check(b"k", "500000", 3, TIMEOUT).await.unwrap() {
                None => admitted += 1,
                Some(wait) => refused = Some(wait),
            }
        }
        assert_eq!(admitted, 3, "the burst at once");
        let wait = refused.expect("the 4th is refused");
        assert!(wait > Duration::from_millis(300) && wait <= Duration::from_millis(500), "wait {wait:?}");
        // Another key, another bucket.
        assert_eq!(store.check(b"other", "500000", 3, TIMEOUT).await.unwrap(), None);
        tokio::time::sleep(wait + Duration::from_millis(20)).await;
        assert_eq!(store.check(b"k", "500000", 3, TIMEOUT).await.unwrap(), None, "one more after the wait");
    }

    #[tokio::test]
    async fn a_killed_server_fails_within_the_timeout_and_a_restarted_one_is_used_again() {
        let mut server = Server::start(None);
        let port = server.port;
        let stores = Stores::default();
        let store = stores.get("test", &format!("redis://127.0.0.1:{port}")).unwrap();
        assert_eq!(store.check(b"k", "1000", 10, TIMEOUT).await.unwrap(), None);
        server.kill();
        let short = Duration::from_millis(50);
        for _ in 0..3 {
            let started = tokio::time::Instant::now();
            assert!(store.check(b"k", "1000", 10, short).await.is_err());
            assert!(started.elapsed() < Duration::from_secs(1), "bounded by the timeout");
        }
        // Back on the same port, empty: the script is loaded again and checks succeed once the
        // connection manager has reconnected (its backoff is at most 1 s).
        let _server = Server::start(Some(port));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(None) = store.check(b"k", "1000", 10, TIMEOUT).await {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no reconnection within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn limit(
        name: &str,
        redis: &str,
        fail_mode: crate::config::RateLimitFailMode,
    ) -> crate::config::RateLimitConfig {
        crate::config::RateLimitConfig {
            name: name.into(),
            rate: 1,
            burst: 5,
            key: crate::config::RateLimitKey::None,
            header: None,
            overrides: vec![],
            max_keys: 100,
            global: Some(crate::config::GlobalRateLimitConfig {
                redis: redis.into(),
                fail_mode,
                timeout_ms: 200,
            }),
        }
    }

    type Metered = (Arc<super::super::Limits>, Arc<super::super::LimitMetrics>);

    fn compile(stores: &Stores, c: crate::config::RateLimitConfig) -> Metered {
        let m = Arc::new(super::super::LimitMetrics::default());
        let mc = m.clone();
        let clock = governor::clock::DefaultClock::default();
        let l =
            super::super::Limits::compile("service \"s\"", "service:s", &[c], &clock, stores, move |_| {
                mc.clone()
            })
            .unwrap()
            .unwrap();
        (Arc::new(l), m)
    }

    /// Whether `limits` admits one request: local, then global.
    async fn admits(limits: &Arc<super::super::Limits>) -> Result<(), crate::error::ProxyError> {
        let client = std::net::SocketAddr::from(([10, 0, 0, 1], 1));
        let headers = http::HeaderMap::new();
        if let Err(d) = limits.check(&headers, client) {
            return Err(limits.rejection(d).error);
        }
        match limits.global(&headers, client) {
            None => Ok(()),
            Some(check) => check.await.map_err(|r| r.error),
        }
    }

    #[tokio::test]
    async fn two_proxies_share_one_global_count() {
        let server = Server::start(None);
        let url = format!("redis://127.0.0.1:{}", server.port);
        // Two proxies: stores and limits of their own, one limit name and scope.
        let (a, b) = (Stores::default(), Stores::default());
        let (la, ma) = compile(&a, limit("shared", &url, crate::config::RateLimitFailMode::Open));
        let (lb, mb) = compile(&b, limit("shared", &url, crate::config::RateLimitFailMode::Open));
        let mut admitted = 0;
        for _ in 0..6 {
            admitted += usize::from(admits(&la).await.is_ok());
            admitted += usize::from(admits(&lb).await.is_ok());
        }
        // Each local bucket admits its burst of 5 (10 together); Redis admits the burst once.
        assert_eq!(admitted, 5);
        let rejected = ma.rejected.load(Ordering::Relaxed) + mb.rejected.load(Ordering::Relaxed);
        assert_eq!(rejected, 7, "2 refused locally, 5 by redis");
        assert_eq!(ma.fallback.load(Ordering::Relaxed) + mb.fallback.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn without_redis_fail_open_admits_by_the_local_limit_and_fail_closed_refuses() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("redis://127.0.0.1:{port}");
        let stores = Stores::default();
        let (open, mo) = compile(&stores, limit("open", &url, crate::config::RateLimitFailMode::Open));
        let results: Vec<_> = futures_util::future::join_all((0..7).map(|_| admits(&open))).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 5, "the local burst: {results:?}");
        assert_eq!(mo.fallback.load(Ordering::Relaxed), 5);
        let (closed, mc) = compile(&stores, limit("closed", &url, crate::config::RateLimitFailMode::Closed));
        assert_eq!(admits(&closed).await, Err(crate::error::ProxyError::RateLimitUnavailable));
        assert_eq!(mc.fallback.load(Ordering::Relaxed), 1);
        assert_eq!(mc.rejected.load(Ordering::Relaxed), 0, "not counted as over the limit");
    }

    #[tokio::test]
    async fn after_a_failure_one_request_per_probe_interval_asks_and_the_others_fail_at_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let stores = Stores::default();
        let store = stores.get("test", &format!("redis://127.0.0.1:{port}")).unwrap();
        let e = store.check(b"k", "1000", 10, TIMEOUT).await.unwrap_err();
        store.failed(&e, false);
        for _ in 0..5 {
            assert!(matches!(store.check(b"k", "1000", 10, TIMEOUT).await, Err(GlobalError::Failing)));
        }
        tokio::time::sleep(PROBE_EVERY + Duration::from_millis(10)).await;
        // The probe waits up to its (short) timeout; the next request, within the interval, not.
        let probe = store.check(b"k", "1000", 10, Duration::from_millis(20)).await.unwrap_err();
        assert!(!matches!(probe, GlobalError::Failing), "the probe asks redis: {probe}");
        assert!(matches!(store.check(b"k", "1000", 10, TIMEOUT).await, Err(GlobalError::Failing)));
    }

    #[test]
    fn a_password_is_not_logged() {
        assert_eq!(redact("redis://:secret@host:6379/1"), "redis://***@host:6379/1");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}

//! Global rate limits: a limit's count shared by every proxy through one Redis server, or
//! through Envoy's rate limit service ([`rls`]: envoyproxy/ratelimit, Limitador).
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
//! admits a request. What it must not know: routes, listeners, the HTTP request — it takes an
//! [`Ask`] (a key, a rate and a burst, or an encoded descriptor) and answers admit, refuse (with
//! the wait) or fail.
//!
//! A [`Store`] is one server of either kind; what fails and how it is probed is the same for both.
//! Failures (the server down, unreachable, slower than the limit's `timeout`, answering with an
//! error) are the caller's to handle by the limit's fail mode; here they are logged at most every
//! [`WARN_EVERY`] per server.
//! Once a check has failed, one request per [`PROBE_EVERY`] asks the server again and the others
//! fail at once, so an outage costs requests no wait beyond the probe's.
//! A Redis connection is a [`ConnectionManager`]: made lazily by the first check (on the runtime
//! that serves it), reconnected on its own with backoff after an I/O error.
//!
//! `rediss://` servers are reached over TLS (tokio-rustls, ring as the crypto provider, installed
//! as the process default because the `redis` crate builds its client config from the default),
//! verified against the limit's CA bundle or else the system roots, and shown the limit's client
//! certificate when it has one; so are `https://` rate limit services (the upstream TLS
//! connector, ALPN `h2`). A server they do not trust is a failed check
//! like an unreachable one. Passwords in URLs never reach logs or messages
//! ([`meshproxy_config::redact_url`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::Error;

/// How often a server's failures are logged (each failure is counted in the limit's metrics).
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// The time a connection made to find out why a server fails is given.
pub const DIAGNOSE_WITHIN: Duration = Duration::from_secs(2);

/// While a server fails, how often one request asks it again.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);

/// GCRA on one key. KEYS[1]: the bucket; ARGV[1]: the emission interval (µs, may be
/// fractional); ARGV[2]: the burst. Returns 0 when admitted (and records it), else the wait in
/// µs until a request would be. The key lives at least 1 ms: an interval below a double's step at
/// today's time in µs (0.25 µs: over 4 million a second) leaves `new_tat` equal to `now`, and
/// `SET … PX 0` is an error.
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
redis.call('SET', KEYS[1], string.format('%d', math.ceil(new_tat)), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
return 0
";

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA));

/// Why a global check gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum GlobalError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("not asked: the server failed less than {PROBE_EVERY:?} ago")]
    Failing,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Rls(#[from] rls::RlsError),
    #[error("{0}")]
    Setup(String),
}

/// The servers (Redis, rate limit services) of a proxy's global limits, by URL and TLS files:
/// kept across reloads, so a limit that stays keeps its connection.
#[derive(Default)]
pub struct Stores {
    by_url: Mutex<HashMap<StoreKey, Arc<Store>>>,
}

/// A server's URL (a rate limit service's address as written, after `rls:`) and the paths of its
/// CA bundle, client certificate and key.
type StoreKey = (Box<str>, [Option<Box<str>>; 3]);

/// The files of a global limit's TLS, as resolved paths: the CA bundle trusted for the server
/// (none: the system roots), and the client certificate and its key presented to it (none: no
/// client certificate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TlsFiles<'a> {
    pub ca: Option<&'a str>,
    pub cert: Option<&'a str>,
    pub key: Option<&'a str>,
}

impl<'a> TlsFiles<'a> {
    /// A CA bundle alone, no client certificate.
    #[cfg(test)]
    pub(crate) fn ca(ca: Option<&'a str>) -> Self {
        TlsFiles { ca, cert: None, key: None }
    }

    /// The files a global limit names.
    pub fn of(g: &'a crate::config::GlobalRateLimitConfig) -> Self {
        TlsFiles { ca: g.ca.as_deref(), cert: g.cert.as_deref(), key: g.key.as_deref() }
    }

    /// Whether any file is named (only TLS uses them).
    fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// The client certificate and key, both or neither.
    fn client(&self) -> Result<Option<(&'a str, &'a str)>, String> {
        match (self.cert, self.key) {
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (None, None) => Ok(None),
            (Some(_), None) => Err("a client certificate (cert) is given without its key".into()),
            (None, Some(_)) => Err("a client key is given without its certificate (cert)".into()),
        }
    }

    fn owned(&self) -> [Option<Box<str>>; 3] {
        [self.ca, self.cert, self.key].map(|p| p.map(Box::<str>::from))
    }

    fn borrowed(files: &'a [Option<Box<str>>; 3]) -> Self {
        let [ca, cert, key] = files;
        TlsFiles { ca: ca.as_deref(), cert: cert.as_deref(), key: key.as_deref() }
    }
}

impl Stores {
    /// The server at `url`, for `rediss://` trusted through the CA bundle of `files` (none: the
    /// system roots) and shown its client certificate (none: no client certificate); `owner`
    /// names the limit in messages. The one already known, or a new one, not yet connected; files
    /// whose contents changed since give a new one.
    pub fn get(&self, owner: &str, url: &str, files: TlsFiles<'_>) -> Result<Arc<Store>, Error> {
        let shown = meshproxy_config::redact_url(url);
        let invalid = |e: &dyn std::fmt::Display| {
            Error::Config(format!("{owner}: invalid global redis URL {shown:?}: {e}"))
        };
        let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| invalid(&e))?;
        let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        if files.ca.is_some() && !tls {
            return Err(Error::Config(format!(
                "{owner}: a CA bundle is given for {shown:?}, which is not a rediss:// (TLS) URL"
            )));
        }
        if (files.cert.is_some() || files.key.is_some()) && !tls {
            return Err(Error::Config(format!(
                "{owner}: a client certificate is given for {shown:?}, which is not a rediss:// (TLS) URL"
            )));
        }
        let client_files = files.client().map_err(|e| Error::Config(format!("{owner}: {e}")))?;
        let read = |what: &str, path: &str| {
            std::fs::read(path).map_err(|e| {
                Error::Config(format!("{owner}: cannot read the global redis {what} {path:?}: {e}"))
            })
        };
        let roots = files.ca.map(|path| read("CA bundle", path)).transpose()?;
        let client_tls = match client_files {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read("client certificate", cert)?,
                client_key: read("client key", key)?,
            }),
            None => None,
        };
        let digest = files.any().then(|| {
            let mut digest = xxhash_rust::xxh3::Xxh3::new();
            for pem in [roots.as_deref(), client_tls.as_ref().map(|c| &c.client_cert[..])] {
                digest.update(pem.unwrap_or_default());
                digest.update(b"\0");
            }
            if let Some(c) = &client_tls {
                digest.update(&c.client_key);
            }
            digest.digest128()
        });
        let key = (Box::<str>::from(url), files.owned());
        let mut by_url = self.by_url.lock();
        if let Some(s) = by_url.get(&key).filter(|s| s.tls_digest == digest) {
            return Ok(s.clone());
        }
        if tls {
            install_ring();
        }
        let client = if roots.is_some() || client_tls.is_some() {
            redis::Client::build_with_tls(info, redis::TlsCertificates { client_tls, root_cert: roots })
                .map_err(|e| Error::Config(format!("{owner}: the TLS files of global redis {shown:?}: {e}")))
        } else {
            redis::Client::open(info).map_err(|e| invalid(&e))
        }?;
        let store =
            Arc::new(Store::new(shown.into(), digest, Backend::Redis { client, manager: OnceLock::new() }));
        by_url.insert(key, store.clone());
        Ok(store)
    }

    /// The rate limit service at `addr` (`host:port`, `http://host:port`, or `https://host:port`
    /// verified against the CA bundle of `files`, else the system roots, and shown its client
    /// certificate, if any); `owner` names the limit in messages. The one already known, or a new
    /// one, not yet connected; files whose contents changed since give a new one.
    pub fn get_rls(&self, owner: &str, addr: &str, files: TlsFiles<'_>) -> Result<Arc<Store>, Error> {
        let client = files.client().map_err(|e| Error::Config(format!("{owner}: {e}")))?;
        let rls = rls::Rls::new(
            addr,
            files.ca.map(std::path::Path::new),
            client.map(|(cert, key)| (std::path::Path::new(cert), std::path::Path::new(key))),
        )
        .map_err(|e| Error::Config(format!("{owner}: invalid global rls: {e}")))?;
        let key = (Box::<str>::from(format!("rls:{addr}")), files.owned());
        let mut by_url = self.by_url.lock();
        let known = by_url.get(&key).filter(|s| match &s.backend {
            Backend::Rls(known) => known.same_transport(&rls),
            Backend::Redis { .. } => false,
        });
        if let Some(s) = known {
            return Ok(s.clone());
        }
        let store = Arc::new(Store::new(addr.into(), None, Backend::Rls(rls)));
        by_url.insert(key, store.clone());
        Ok(store)
    }

    /// Forgets the servers no limit of the running config uses (their connections close once
    /// the last request on an older config is done with them); `used` names rate limit services
    /// as `rls:<address>`, each with its TLS files.
    pub fn retain(&self, used: &std::collections::HashSet<(std::borrow::Cow<'_, str>, TlsFiles<'_>)>) {
        self.by_url.lock().retain(|(url, files), _| {
            used.contains(&(std::borrow::Cow::Borrowed(&**url), TlsFiles::borrowed(files)))
        });
    }
}

/// Makes ring the process's default rustls provider, which the `redis` crate's TLS connections
/// build their client config with (`ClientConfig::builder()`): explicit, so no other provider
/// can be picked from crate features. A default already installed (by an earlier call) stays.
fn install_ring() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let ring = Arc::unwrap_or_clone(meshproxy_upstream::tls::provider());
        let _ = ring.install_default();
    });
}

/// One server of global limits: Redis or a rate limit service, with the state of its failures.
pub struct Store {
    /// For logs: a Redis URL without its password, or a rate limit service's address.
    url: Box<str>,
    /// xxh3-128 of the CA bundle trusted for it and the client certificate and key shown to it;
    /// none = the system roots and no client certificate (or plaintext).
    tls_digest: Option<u128>,
    backend: Backend,
    started: tokio::time::Instant,
    /// Milliseconds since `started` of the last warning (0: none yet).
    last_warn: AtomicU64,
    /// Whether the last check failed (logged once when checks succeed again).
    failing: AtomicBool,
    /// While `failing`: milliseconds since `started` before which no request asks the server.
    next_probe: AtomicU64,
}

enum Backend {
    Redis {
        client: redis::Client,
        /// Made by the first check, on the runtime that runs it.
        manager: OnceLock<Result<ConnectionManager, String>>,
    },
    Rls(rls::Rls),
}

/// What one global check asks its server.
pub enum Ask {
    /// GCRA on `key` at one request per `emission_us` µs (a decimal number), `burst` at once.
    Gcra { key: Vec<u8>, emission_us: Arc<str>, burst: u32 },
    /// A `ShouldRateLimit` request, encoded ([`rls::Template::encode`]).
    Rls(bytes::Bytes),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Store {
    fn new(url: Box<str>, tls_digest: Option<u128>, backend: Backend) -> Self {
        Store {
            url,
            tls_digest,
            backend,
            started: tokio::time::Instant::now(),
            last_warn: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            next_probe: AtomicU64::new(0),
        }
    }

    /// What the server is called in logs.
    fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Redis { .. } => "redis",
            Backend::Rls(_) => "the rate limit service",
        }
    }

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

    fn manager(
        client: &redis::Client,
        manager: &OnceLock<Result<ConnectionManager, String>>,
    ) -> Result<ConnectionManager, GlobalError> {
        let made = manager.get_or_init(|| {
            // Reconnection attempts back off from 50 ms to at most 1 s, so a server that comes
            // back is used again within about a second; each attempt gives up after 1 s.
            let config = ConnectionManagerConfig::new()
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(1))
                .set_number_of_retries(4)
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(None);
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|e| e.to_string())
        });
        made.clone().map_err(GlobalError::Setup)
    }

    /// Asks the server `ask` within `timeout`: `None` when it admits the request, else how long
    /// until it would.
    pub async fn check(&self, ask: &Ask, timeout: Duration) -> Result<Option<Duration>, GlobalError> {
        if self.failing.load(Ordering::Relaxed) && !self.probe() {
            return Err(GlobalError::Failing);
        }
        let run = async {
            match (&self.backend, ask) {
                (Backend::Redis { client, manager }, Ask::Gcra { key, emission_us, burst }) => {
                    let mut conn = Self::manager(client, manager)?;
                    let wait: i64 =
                        SCRIPT.key(&key[..]).arg(&**emission_us).arg(*burst).invoke_async(&mut conn).await?;
                    Ok::<_, GlobalError>((wait > 0).then(|| Duration::from_micros(wait as u64)))
                }
                (Backend::Rls(rls), Ask::Rls(request)) => Ok(rls.check(request.clone()).await?),
                _ => Err(GlobalError::Setup("a check of another kind of server".into())),
            }
        };
        let wait = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(GlobalError::Timeout(timeout)),
        };
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(server = %self.url, "global rate limits: {} answers again", self.kind());
        }
        Ok(wait)
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
            let kind = self.kind();
            match self.backend {
                Backend::Redis { .. } => {
                    tracing::warn!(redis = %self.url, %error, "global rate limit check failed; requests are {outcome} until {kind} answers (logged at most every 10 s)")
                }
                Backend::Rls(_) => {
                    tracing::warn!(rls = %self.url, %error, "global rate limit check failed; requests are {outcome} until {kind} answers (logged at most every 10 s)")
                }
            }
            if matches!(error, GlobalError::Timeout(_)) {
                self.diagnose();
            }
        }
    }

    /// A check timed out, which says nothing of why (the connection manager retries a failed
    /// connect within the check's time; a rate limit service's connect may be cut short by it):
    /// one connection of its own, given [`DIAGNOSE_WITHIN`], logs why it cannot connect —
    /// refused, a certificate the CA bundle does not trust, a wrong password — or nothing when
    /// it connects (the server is only slow).
    #[cold]
    fn diagnose(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let url = self.url.clone();
        match &self.backend {
            Backend::Redis { client, .. } => {
                let client = client.clone();
                runtime.spawn(async move {
                    let connect = client.get_multiplexed_async_connection();
                    let why = match tokio::time::timeout(DIAGNOSE_WITHIN, connect).await {
                        Ok(Ok(_)) => return,
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no connection within {DIAGNOSE_WITHIN:?}"),
                    };
                    tracing::warn!(redis = %url, error = %why, "global rate limits: cannot connect to redis");
                });
            }
            Backend::Rls(rls) => {
                let connect = rls.try_connect();
                runtime.spawn(async move {
                    let why = match tokio::time::timeout(DIAGNOSE_WITHIN, connect).await {
                        Ok(Ok(())) => return,
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no connection within {DIAGNOSE_WITHIN:?}"),
                    };
                    tracing::warn!(rls = %url, error = %why, "global rate limits: cannot connect to the rate limit service");
                });
            }
        }
    }
}

pub mod rls;

#[cfg(test)]
mod tests;

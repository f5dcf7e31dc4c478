//! A limit's global side: which server counts it and what each request asks that server — a
//! GCRA key on Redis, or a descriptor for a rate limit service.
//!
//! The descriptor a rate limit service gets is one per request and limit, with `hits_addend` 1:
//! `[{service|route: <name>}, {limit: <limit name>}]`, and for a keyed limit a third entry
//! `{remote_address|identity|<header name>: <key value>}` (the client's canonical IP address,
//! the mTLS peer's SPIFFE ID or "" without one, the header's value or "" without it). The rate
//! and burst of a limit and its overrides stay local; the service's own config says how many
//! requests each descriptor gets.

use std::borrow::Cow;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use http::header::HeaderValue;
use http::HeaderMap;
use rustc_hash::FxHashMap;

use super::global::{self, Ask};
use super::global::{rls, TlsFiles};
use super::{workload, Buckets, Limit, Source, Stores};
use crate::config::{RateLimitConfig, RateLimitFailMode, RateLimitKey};
use crate::Error;

/// Key values longer than this are hashed in a global limit's Redis key.
const MAX_KEY_VALUE: usize = 128;

/// A limit's global side: its server, what it asks it, and what a request gets when it cannot.
#[derive(Debug)]
pub(super) struct Global {
    pub(super) store: Arc<global::Store>,
    asks: Asks,
    pub(super) fail_closed: bool,
    pub(super) timeout: Duration,
}

#[derive(Debug)]
enum Asks {
    Redis {
        /// `meshproxy:ratelimit:<scope>:<limit name>`; a keyed limit appends `:<key value>`.
        prefix: Box<str>,
        /// The emission interval in µs, formatted once: the script's argument.
        emission_us: Arc<str>,
        burst: u32,
        /// Key values (header values, or client addresses as text) with a rate and burst of
        /// their own.
        overrides: FxHashMap<Box<[u8]>, (Arc<str>, u32)>,
    },
    /// The limit's `ShouldRateLimit` request, laid out when the limit is compiled; a request
    /// adds its key value.
    Rls(rls::Template),
}

impl Global {
    pub(super) fn compile<C: Clock>(
        owner: &str,
        scope: &str,
        limit: &Limit<C>,
        c: &RateLimitConfig,
        g: &crate::config::GlobalRateLimitConfig,
        stores: &Stores,
    ) -> Result<Self, Error> {
        let (store, asks) = match (&g.redis, &g.rls) {
            (Some(redis), None) => {
                (stores.get(owner, redis, TlsFiles::of(g))?, redis_asks(scope, &limit.name, c))
            }
            (None, Some(addr)) => {
                let domain = g.domain.as_deref().filter(|d| !d.is_empty()).ok_or_else(|| {
                    Error::Config(format!("{owner}: a global rate limit with rls needs a domain"))
                })?;
                let (kind, name) = scope.split_once(':').unwrap_or(("service", scope));
                let key = match &limit.buckets {
                    Buckets::One(_) => None,
                    Buckets::Keyed(k) => Some(match &k.source {
                        Source::Client => "remote_address",
                        Source::Header(name) => name.as_str(),
                        Source::Identity => "identity",
                    }),
                };
                let template = rls::Template::new(domain, &[(kind, name), ("limit", &limit.name)], key);
                let asks = Asks::Rls(template);
                (stores.get_rls(owner, addr, TlsFiles::of(g))?, asks)
            }
            _ => {
                return Err(Error::Config(format!(
                    "{owner}: a global rate limit needs exactly one of redis and rls"
                )))
            }
        };
        Ok(Global {
            store,
            asks,
            fail_closed: g.fail_mode == RateLimitFailMode::Closed,
            timeout: Duration::from_millis(g.timeout_ms.max(1)),
        })
    }

    /// What a request of `limit` with `headers` from `client` asks the server.
    pub(super) fn ask<C: Clock>(
        &self,
        limit: &Limit<C>,
        headers: &HeaderMap,
        client: IpAddr,
        peer: Option<&str>,
    ) -> Ask {
        let source = match &limit.buckets {
            Buckets::One(_) => None,
            Buckets::Keyed(k) => Some(&k.source),
        };
        let value = |source: &Source| -> Cow<'_, [u8]> {
            match source {
                Source::Client => client.to_canonical().to_string().into_bytes().into(),
                Source::Header(name) => headers.get(name).map_or(&b""[..], HeaderValue::as_bytes).into(),
                Source::Identity => peer.unwrap_or_default().as_bytes().into(),
            }
        };
        match &self.asks {
            Asks::Rls(template) => Ask::Rls(match source {
                None => template.encode(""),
                Some(Source::Client) => {
                    // The address as text, on the stack (an IPv6 address takes at most 45 bytes).
                    let mut text = [0u8; 48];
                    let mut cursor = std::io::Cursor::new(&mut text[..]);
                    let _ = write!(cursor, "{}", client.to_canonical());
                    let len = cursor.position() as usize;
                    template.encode(std::str::from_utf8(&text[..len]).unwrap_or_default())
                }
                Some(source) => template.encode(&String::from_utf8_lossy(&value(source))),
            }),
            Asks::Redis { prefix, emission_us, burst, overrides } => {
                let mut key = Vec::with_capacity(prefix.len() + 48);
                key.extend_from_slice(prefix.as_bytes());
                let Some(source) = source else {
                    return Ask::Gcra { key, emission_us: emission_us.clone(), burst: *burst };
                };
                let value = value(source);
                // An identity's override may name its workload (`<sa>.<ns>`) rather than its SPIFFE ID.
                let by_workload = || {
                    matches!(source, Source::Identity)
                        .then(|| peer.and_then(workload))
                        .flatten()
                        .and_then(|w| overrides.get(w.as_bytes()))
                };
                let (emission_us, burst) = overrides
                    .get(&*value)
                    .or_else(by_workload)
                    .cloned()
                    .unwrap_or_else(|| (emission_us.clone(), *burst));
                key.push(b':');
                if value.len() > MAX_KEY_VALUE {
                    let h = xxhash_rust::xxh3::xxh3_128(&value);
                    key.extend_from_slice(format!("xxh3:{h:032x}").as_bytes());
                } else {
                    key.extend_from_slice(&value);
                }
                Ask::Gcra { key, emission_us, burst }
            }
        }
    }
}

/// A Redis limit's key prefix and GCRA parameters, its overrides' among them.
fn redis_asks(scope: &str, name: &str, c: &RateLimitConfig) -> Asks {
    let emission = |rate: u32| Arc::<str>::from((1_000_000.0 / f64::from(rate.max(1))).to_string());
    let overrides = c
        .overrides
        .iter()
        .map(|o| {
            // Client addresses as the request's canonical address prints them.
            let value = match o.value.parse::<IpAddr>() {
                Ok(ip) if c.key == RateLimitKey::Client => ip.to_canonical().to_string(),
                _ => o.value.clone(),
            };
            (value.into_bytes().into_boxed_slice(), (emission(o.rate), o.burst))
        })
        .collect();
    Asks::Redis {
        prefix: format!("meshproxy:ratelimit:{scope}:{name}").into(),
        emission_us: emission(c.rate),
        burst: c.burst,
        overrides,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GlobalRateLimitConfig;
    use prost::Message;

    fn config(key: RateLimitKey, global: GlobalRateLimitConfig) -> RateLimitConfig {
        RateLimitConfig {
            name: "per-user".into(),
            rate: 10,
            burst: 10,
            key,
            header: (key == RateLimitKey::Header).then(|| "x-user".into()),
            overrides: vec![],
            max_keys: 100,
            global: Some(global),
        }
    }

    fn rls_global() -> GlobalRateLimitConfig {
        GlobalRateLimitConfig {
            redis: None,
            rls: Some("127.0.0.1:8081".into()),
            domain: Some("mesh".into()),
            ca: None,
            cert: None,
            key: None,
            fail_mode: RateLimitFailMode::Open,
            timeout_ms: 50,
        }
    }

    fn compile(c: RateLimitConfig) -> Result<super::super::Limits, Error> {
        let clock = governor::clock::DefaultClock::default();
        super::super::Limits::compile("route \"r\"", "route:api", &[c], &clock, &Stores::default(), |_| {
            Arc::default()
        })
        .map(|l| l.expect("one limit"))
    }

    /// The descriptor entries a request of the one limit of `l` sends.
    fn entries(l: &super::super::Limits, headers: &HeaderMap, peer: Option<&str>) -> Vec<(String, String)> {
        let limit = &l.limits[0];
        let Ask::Rls(frame) =
            limit.global.as_deref().unwrap().ask(limit, headers, "10.0.0.7".parse().unwrap(), peer)
        else {
            panic!("an rls ask")
        };
        let request = rls::RateLimitRequest::decode(&frame[5..]).unwrap();
        assert_eq!(request.domain, "mesh");
        assert_eq!(request.hits_addend, 1);
        assert_eq!(request.descriptors.len(), 1);
        request.descriptors[0].entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_descriptor_names_the_scope_the_limit_and_the_key() {
        let none = compile(config(RateLimitKey::None, rls_global())).unwrap();
        assert_eq!(
            entries(&none, &HeaderMap::new(), None),
            pairs(&[("route", "api"), ("limit", "per-user")])
        );
        let client = compile(config(RateLimitKey::Client, rls_global())).unwrap();
        assert_eq!(
            entries(&client, &HeaderMap::new(), None),
            pairs(&[("route", "api"), ("limit", "per-user"), ("remote_address", "10.0.0.7")])
        );
        let header = compile(config(RateLimitKey::Header, rls_global())).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("alice"));
        assert_eq!(
            entries(&header, &h, None),
            pairs(&[("route", "api"), ("limit", "per-user"), ("x-user", "alice")])
        );
        assert_eq!(
            entries(&header, &HeaderMap::new(), None)[2],
            ("x-user".into(), String::new()),
            "no header: \"\""
        );
        let identity = compile(config(RateLimitKey::Identity, rls_global())).unwrap();
        assert_eq!(
            entries(&identity, &HeaderMap::new(), Some("spiffe://td/ns/shop/sa/web"))[2],
            ("identity".into(), "spiffe://td/ns/shop/sa/web".into())
        );
    }

    #[test]
    fn a_global_limit_needs_one_server_and_rls_a_domain() {
        let err = |g: GlobalRateLimitConfig| compile(config(RateLimitKey::None, g)).unwrap_err().to_string();
        let both = GlobalRateLimitConfig { redis: Some("redis://127.0.0.1:6379".into()), ..rls_global() };
        assert_eq!(err(both), "route \"r\": a global rate limit needs exactly one of redis and rls");
        let neither = GlobalRateLimitConfig { rls: None, ..rls_global() };
        assert_eq!(err(neither), "route \"r\": a global rate limit needs exactly one of redis and rls");
        let no_domain = GlobalRateLimitConfig { domain: None, ..rls_global() };
        assert_eq!(err(no_domain), "route \"r\": a global rate limit with rls needs a domain");
        let bad = GlobalRateLimitConfig { rls: Some("127.0.0.1".into()), ..rls_global() };
        assert!(err(bad).starts_with(
            "route \"r\": invalid global rls: \"127.0.0.1\" is not a rate limit service address"
        ));
        let ca = GlobalRateLimitConfig { ca: Some("/ca.pem".into()), ..rls_global() };
        assert!(err(ca).contains("a CA bundle is only used with TLS"));
    }
}

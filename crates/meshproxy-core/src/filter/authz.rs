//! Authorization: whether a request may go through its route, decided by rules on the client's
//! network, the method, the path and header values. A route's rules are tried first, then its
//! listener's; the first rule that matches decides, and a request no rule matches gets the
//! listener's `default`. A denied request is answered 403 `forbidden` (gRPC: PERMISSION_DENIED)
//! before any other filter runs, so it never reaches a backend or counts against an endpoint.
//!
//! Compiled per route into one [`Authz`] (the route's rules, then the listener's), run as the
//! first request filter. A rule's conditions are checked cheapest first (network, method, headers,
//! path), and the path is parsed into segments only when a rule asks for it.
//!
//! On a listener with `mtls`, `identities` matches the peer's SPIFFE ID (its client certificate,
//! verified against the trust anchors): `sa.ns` (that workload, whatever the trust domain the
//! anchors vouch for), a whole SPIFFE ID, or `*` (any authenticated peer). A request without a
//! peer identity (plaintext, a listener without `mtls`) matches no rule with `identities`.

use std::net::IpAddr;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use meshproxy_config::{AuthorizationAction, AuthorizationConfig, AuthorizationRule};
use meshproxy_route::path::{PathMatcher, Segments};

use super::{RequestCx, RequestFilter, Verdict};
use crate::error::ProxyError;
use crate::Error;

/// A route's compiled authorization: its rules, then its listener's, then the default.
#[derive(Debug)]
pub struct Authz {
    rules: Box<[Rule]>,
    default: Action,
    /// Every rule decides by the client's network alone (the common small rule set): decided
    /// without looking at the request.
    by_network: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

impl From<AuthorizationAction> for Action {
    fn from(a: AuthorizationAction) -> Self {
        match a {
            AuthorizationAction::Allow => Action::Allow,
            AuthorizationAction::Deny => Action::Deny,
        }
    }
}

/// A network in one 128-bit space where IPv4 is its IPv4-mapped IPv6 range (`10.0.0.0/8` is
/// `::ffff:10.0.0.0/104`): a client is in it when its address, placed the same way, masked
/// equals `bits`. So an IPv4 client is in an IPv6 network that holds its mapped address, and an
/// IPv4 network holds no other IPv6 client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    bits: u128,
    mask: u128,
}

const MAPPED: u128 = 0xffff << 32;

impl Net {
    fn new(net: IpNet) -> Self {
        let (bits, width, prefix) = match net.trunc() {
            IpNet::V4(n) => (MAPPED | u128::from(u32::from(n.addr())), 32, n.prefix_len()),
            IpNet::V6(n) => (u128::from(n.addr()), 128, n.prefix_len()),
        };
        let host = width - u32::from(prefix);
        let mask = if host == 128 { 0 } else { u128::MAX << host };
        Net { bits, mask }
    }

    #[inline]
    fn holds(self, client: u128) -> bool {
        client & self.mask == self.bits
    }
}

/// A client address in [`Net`]'s space.
#[inline]
fn place(ip: IpAddr) -> u128 {
    match client_ip(ip) {
        IpAddr::V4(a) => MAPPED | u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

#[derive(Debug)]
struct Rule {
    action: Action,
    /// Empty = any client.
    networks: Box<[Net]>,
    /// Empty = any method.
    methods: Box<[Method]>,
    /// None = any path.
    path: Option<PathMatcher>,
    headers: Box<[(HeaderName, HeaderValue)]>,
    /// Empty = any peer (or none).
    identities: Box<[PeerMatch]>,
}

/// One entry of a rule's `identities`.
#[derive(Debug)]
enum PeerMatch {
    /// `*`: any authenticated peer.
    Any,
    /// A whole SPIFFE ID.
    Exact(Box<str>),
    /// `sa.ns`: the path `/ns/<ns>/sa/<sa>` of a SPIFFE ID, in any trust domain.
    Workload(Box<str>),
}

impl PeerMatch {
    fn compile(s: &str) -> Option<PeerMatch> {
        if s == "*" {
            return Some(PeerMatch::Any);
        }
        if s.starts_with("spiffe://") {
            return Some(PeerMatch::Exact(s.into()));
        }
        let (sa, ns) = s.split_once('.')?;
        let label = |l: &str| {
            !l.is_empty() && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        (label(sa) && label(ns)).then(|| PeerMatch::Workload(format!("/ns/{ns}/sa/{sa}").into()))
    }

    fn holds(&self, peer: &str) -> bool {
        match self {
            PeerMatch::Any => true,
            PeerMatch::Exact(id) => **id == *peer,
            PeerMatch::Workload(path) => peer
                .strip_prefix("spiffe://")
                .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
                .is_some_and(|p| p == &**path),
        }
    }
}

/// What a rule reads of a request.
pub struct Request<'a> {
    /// The client's address (an IPv4-mapped IPv6 one is taken as IPv4: [`client_ip`]).
    pub client: IpAddr,
    pub method: &'a Method,
    /// The raw path, without the query.
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The mTLS peer's SPIFFE ID, if the request came from one.
    pub peer: Option<&'a str>,
}

/// The client's address as rules see it: an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what
/// a dual-stack socket reports for an IPv4 peer) is the IPv4 address it maps.
#[inline]
pub fn client_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl Rule {
    fn compile(route: &str, r: &AuthorizationRule) -> Result<Self, Error> {
        let bad = |what: String| Error::Config(format!("route {route:?}: authorization rule {what}"));
        let networks = r
            .networks
            .iter()
            .map(|n| {
                n.parse::<IpNet>().map(Net::new).map_err(|_| bad(format!("network {n:?} is not a CIDR")))
            })
            .collect::<Result<_, _>>()?;
        let methods = r
            .methods
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| bad(format!("method {m:?} is invalid"))))
            .collect::<Result<_, _>>()?;
        let path = PathMatcher::compile(&r.path).map_err(bad)?;
        let headers = r
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| bad(format!("header name {:?} is invalid", h.name)))?;
                let value = HeaderValue::from_str(&h.value)
                    .map_err(|_| bad(format!("header value {:?} is invalid", h.value)))?;
                Ok((name, value))
            })
            .collect::<Result<_, Error>>()?;
        let identities = r
            .identities
            .iter()
            .map(|i| {
                PeerMatch::compile(i).ok_or_else(|| {
                    bad(format!("identity {i:?} is not <sa>.<namespace>, a SPIFFE ID or \"*\""))
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Rule {
            action: r.action.into(),
            networks,
            methods,
            path: (!path.is_any()).then_some(path),
            headers,
            identities,
        })
    }

    /// Whether every condition holds for a client placed at `client`; `segs` is the request's
    /// path, parsed on first need.
    #[inline]
    fn matches<'p>(&self, client: u128, req: &Request<'p>, segs: &mut Option<Segments<'p>>) -> bool {
        if !self.networks.is_empty() && !self.networks.iter().any(|n| n.holds(client)) {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method) {
            return false;
        }
        if !self.identities.is_empty()
            && !req.peer.is_some_and(|peer| self.identities.iter().any(|i| i.holds(peer)))
        {
            return false;
        }
        if !self.headers.iter().all(|(name, value)| req.headers.get_all(name).iter().any(|v| v == value)) {
            return false;
        }
        match &self.path {
            None => true,
            Some(p) => path_matches(p, req.path, segs),
        }
    }
}

/// Out of line: most rules have no path, and the parsed path is large.
#[inline(never)]
fn path_matches<'p>(p: &PathMatcher, path: &'p str, segs: &mut Option<Segments<'p>>) -> bool {
    p.matches(segs.get_or_insert_with(|| Segments::parse(path)))
}

/// Whether a route's authorization (the first of its `filters`, when it has one) lets a `CONNECT`
/// through: a tunnel runs no other filter, and is matched as path `/`, as the routing table
/// matches it.
pub fn allows_connect<B>(
    filters: &[RequestFilter],
    client: std::net::SocketAddr,
    peer: Option<&str>,
    req: &http::Request<B>,
) -> bool {
    match filters.first() {
        Some(RequestFilter::Authorize(a)) => {
            let req = Request {
                client: client.ip(),
                method: req.method(),
                path: "/",
                headers: req.headers(),
                peer,
            };
            a.decide(&req) == Action::Allow
        }
        _ => true,
    }
}

impl Authz {
    /// Route `route`'s authorization: its `rules`, then the listener's. None when every request
    /// is allowed whatever it is (no rule can deny and the default allows), so such a route has
    /// no filter at all.
    pub fn compile(
        route: &str,
        rules: &[AuthorizationRule],
        listener: &AuthorizationConfig,
    ) -> Result<Option<Self>, Error> {
        let mut compiled = rules
            .iter()
            .chain(&listener.rules)
            .map(|r| Rule::compile(route, r))
            .collect::<Result<Vec<_>, _>>()?;
        let default = Action::from(listener.default);
        // Trailing rules that decide as the default does change nothing: first match wins, and
        // without them the same requests fall through to the same answer.
        while compiled.last().is_some_and(|r| r.action == default) {
            compiled.pop();
        }
        if compiled.is_empty() && default == Action::Allow {
            return Ok(None);
        }
        let by_network = compiled.iter().all(|r| {
            r.methods.is_empty() && r.headers.is_empty() && r.path.is_none() && r.identities.is_empty()
        });
        Ok(Some(Authz { rules: compiled.into(), default, by_network }))
    }

    /// The filter's verdict: continue, or 403 `forbidden` (gRPC: PERMISSION_DENIED).
    #[inline]
    pub(super) fn verdict(&self, cx: &RequestCx<'_>) -> Verdict {
        let action =
            if self.by_network { self.decide_by_network(place(cx.client.ip())) } else { self.decide_cx(cx) };
        match action {
            Action::Allow => Verdict::Continue,
            Action::Deny => Verdict::Respond(ProxyError::Forbidden),
        }
    }

    /// The decision when every rule has only networks: the first rule holding the client.
    #[inline]
    fn decide_by_network(&self, client: u128) -> Action {
        for rule in self.rules.iter() {
            if rule.networks.is_empty() || rule.networks.iter().any(|n| n.holds(client)) {
                return rule.action;
            }
        }
        self.default
    }

    #[inline(never)]
    fn decide_cx(&self, cx: &RequestCx<'_>) -> Action {
        // The only CONNECT that reaches the filters is a WebSocket over HTTP/2 (RFC 8441, a plain
        // CONNECT is a tunnel: `allows_connect`), which routes match as the GET it stands for.
        let method = if cx.head.method == Method::CONNECT { &Method::GET } else { &cx.head.method };
        let req = Request {
            client: cx.client.ip(),
            method,
            path: cx.head.uri.path(),
            headers: &cx.head.headers,
            peer: cx.peer_id,
        };
        self.decide(&req)
    }

    /// The decision for a request: the first matching rule's action, else the default.
    #[inline]
    pub fn decide(&self, req: &Request<'_>) -> Action {
        let client = place(req.client);
        let mut segs = None;
        for rule in self.rules.iter() {
            if rule.matches(client, req, &mut segs) {
                return rule.action;
            }
        }
        self.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshproxy_config::{HeaderMatch, PathMatch, PathMatchType};

    fn rule(action: AuthorizationAction, networks: &[&str]) -> AuthorizationRule {
        AuthorizationRule {
            action,
            networks: networks.iter().map(|n| (*n).into()).collect(),
            methods: vec![],
            path: PathMatch { kind: PathMatchType::Prefix, value: "/".into() },
            headers: vec![],
            identities: vec![],
        }
    }

    use AuthorizationAction::{Allow, Deny};

    fn listener(default: AuthorizationAction, rules: Vec<AuthorizationRule>) -> AuthorizationConfig {
        AuthorizationConfig { default, rules }
    }

    fn decide_for(a: &Authz, ip: &str, method: Method, path: &str, headers: &http::HeaderMap) -> Action {
        let client = client_ip(ip.parse().unwrap());
        a.decide(&Request { client, method: &method, path, headers, peer: None })
    }

    fn from(a: &Authz, ip: &str) -> Action {
        decide_for(a, ip, Method::GET, "/", &http::HeaderMap::new())
    }

    #[test]
    fn cidrs_match_ipv4_ipv6_and_ipv4_mapped_clients() {
        let a = Authz::compile(
            "r",
            &[],
            &listener(Deny, vec![rule(Allow, &["10.0.0.0/8", "2001:db8::/32", "192.168.1.7/32"])]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(from(&a, "10.1.2.3"), Action::Allow);
        assert_eq!(from(&a, "11.0.0.1"), Action::Deny);
        assert_eq!(from(&a, "192.168.1.7"), Action::Allow);
        assert_eq!(from(&a, "192.168.1.8"), Action::Deny);
        assert_eq!(from(&a, "2001:db8:1::5"), Action::Allow);
        assert_eq!(from(&a, "2001:db9::5"), Action::Deny);
        // A dual-stack socket reports an IPv4 peer as IPv4-mapped IPv6: IPv4 rules apply to it.
        assert_eq!(from(&a, "::ffff:10.9.9.9"), Action::Allow);
        assert_eq!(from(&a, "::ffff:11.0.0.1"), Action::Deny);
        // An IPv4-compatible or other IPv6 address is not an IPv4 one.
        assert_eq!(from(&a, "::10.9.9.9"), Action::Deny);
    }

    #[test]
    fn an_ipv6_rule_in_the_mapped_range_holds_the_ipv4_addresses_it_maps() {
        let a = Authz::compile("r", &[], &listener(Allow, vec![rule(Deny, &["::ffff:10.0.0.0/104"])]))
            .unwrap()
            .unwrap();
        assert_eq!(from(&a, "10.200.0.1"), Action::Deny);
        assert_eq!(from(&a, "::ffff:10.200.0.1"), Action::Deny);
        assert_eq!(from(&a, "11.0.0.1"), Action::Allow);
    }

    #[test]
    fn rules_of_networks_alone_decide_as_the_full_rules_do() {
        let l = listener(
            Deny,
            vec![rule(Allow, &["127.0.0.0/8"]), rule(Deny, &["10.0.0.0/8"]), rule(Allow, &[])],
        );
        let a = Authz::compile("r", &[rule(Deny, &["127.0.0.9/32"])], &l).unwrap().unwrap();
        assert!(a.by_network);
        let none = http::HeaderMap::new();
        for ip in ["127.0.0.1", "127.0.0.9", "10.1.1.1", "192.0.2.1", "::ffff:127.0.0.9", "::1"] {
            let client: IpAddr = ip.parse().unwrap();
            let full =
                a.decide(&Request { client, method: &Method::GET, path: "/", headers: &none, peer: None });
            assert_eq!(a.decide_by_network(place(client)), full, "{ip}");
        }
        let mut by_method = rule(Deny, &[]);
        by_method.methods = vec!["POST".into()];
        assert!(!Authz::compile("r", &[by_method], &l).unwrap().unwrap().by_network);
    }

    #[test]
    fn zero_length_prefixes_hold_their_whole_family() {
        let v4 =
            Authz::compile("r", &[], &listener(Allow, vec![rule(Deny, &["0.0.0.0/0"])])).unwrap().unwrap();
        assert_eq!(from(&v4, "203.0.113.9"), Action::Deny);
        assert_eq!(from(&v4, "::ffff:203.0.113.9"), Action::Deny);
        assert_eq!(from(&v4, "2001:db8::1"), Action::Allow, "an IPv4 network holds no IPv6 client");
        let all = Authz::compile("r", &[], &listener(Allow, vec![rule(Deny, &["::/0"])])).unwrap().unwrap();
        assert_eq!(from(&all, "203.0.113.9"), Action::Deny);
        assert_eq!(from(&all, "2001:db8::1"), Action::Deny);
    }

    #[test]
    fn host_bits_of_a_network_are_ignored() {
        let a =
            Authz::compile("r", &[], &listener(Deny, vec![rule(Allow, &["10.1.2.3/8"])])).unwrap().unwrap();
        assert_eq!(from(&a, "10.200.0.1"), Action::Allow);
    }

    #[test]
    fn first_match_wins_route_rules_before_the_listeners() {
        let route_rules = [rule(Allow, &["10.0.0.7/32"])];
        let l = listener(Allow, vec![rule(Deny, &["10.0.0.0/8"])]);
        let a = Authz::compile("r", &route_rules, &l).unwrap().unwrap();
        assert_eq!(from(&a, "10.0.0.7"), Action::Allow, "the route's exception comes first");
        assert_eq!(from(&a, "10.0.0.8"), Action::Deny);
        assert_eq!(from(&a, "127.0.0.1"), Action::Allow, "no rule: the listener's default");
    }

    #[test]
    fn method_path_and_header_conditions_all_hold() {
        let mut admin = rule(Deny, &[]);
        admin.methods = vec!["POST".into(), "DELETE".into()];
        admin.path = PathMatch { kind: PathMatchType::Prefix, value: "/admin".into() };
        admin.headers = vec![HeaderMatch { name: "x-role".into(), value: "guest".into() }];
        let a = Authz::compile("r", &[admin], &listener(Allow, vec![])).unwrap().unwrap();
        let mut guest = http::HeaderMap::new();
        guest.append("x-role", HeaderValue::from_static("staff"));
        guest.append("x-role", HeaderValue::from_static("guest"));
        let none = http::HeaderMap::new();
        let ip = "127.0.0.1";
        assert_eq!(decide_for(&a, ip, Method::POST, "/admin/users", &guest), Action::Deny);
        assert_eq!(decide_for(&a, ip, Method::DELETE, "/x/../admin", &guest), Action::Deny);
        assert_eq!(decide_for(&a, ip, Method::GET, "/admin/users", &guest), Action::Allow);
        assert_eq!(decide_for(&a, ip, Method::POST, "/administrator", &guest), Action::Allow);
        assert_eq!(decide_for(&a, ip, Method::POST, "/admin", &none), Action::Allow);
    }

    #[test]
    fn rules_that_cannot_change_the_answer_compile_to_nothing() {
        // Allowing by default with only allow rules: every request passes, no filter.
        let l = listener(Allow, vec![rule(Allow, &["10.0.0.0/8"])]);
        assert!(Authz::compile("r", &[], &l).unwrap().is_none());
        assert!(Authz::compile("r", &[], &AuthorizationConfig::default()).unwrap().is_none());
        // Deny by default with no rule: everything is denied.
        let closed = Authz::compile("r", &[], &listener(Deny, vec![])).unwrap().unwrap();
        assert_eq!(from(&closed, "127.0.0.1"), Action::Deny);
        // A trailing deny under a deny default is dropped; the allow before it stays.
        let l = listener(Deny, vec![rule(Allow, &["127.0.0.0/8"]), rule(Deny, &["10.0.0.0/8"])]);
        let a = Authz::compile("r", &[], &l).unwrap().unwrap();
        assert_eq!(a.rules.len(), 1);
        assert_eq!(from(&a, "127.0.0.1"), Action::Allow);
    }

    #[test]
    fn the_filter_answers_forbidden_and_sees_a_websocket_over_http2_as_a_get() {
        let mut gets = rule(Allow, &[]);
        gets.methods = vec!["GET".into()];
        let a = Authz::compile("r", &[gets], &listener(Deny, vec![])).unwrap().unwrap();
        let ip = HeaderValue::from_static("127.0.0.1");
        let client = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
        let mut seen = meshproxy_http::headers::Seen::default();
        let verdict = |method: Method, seen: &mut meshproxy_http::headers::Seen| {
            let mut head =
                http::Request::builder().method(method).uri("/chat").body(()).unwrap().into_parts().0;
            a.verdict(&RequestCx { head: &mut head, seen, client, client_ip: &ip, tls: false, peer_id: None })
        };
        assert!(matches!(verdict(Method::GET, &mut seen), Verdict::Continue));
        assert!(matches!(verdict(Method::CONNECT, &mut seen), Verdict::Continue));
        assert!(matches!(verdict(Method::POST, &mut seen), Verdict::Respond(ProxyError::Forbidden)));
    }

    #[test]
    fn a_bad_rule_is_a_config_error() {
        let bad = |r: AuthorizationRule| Authz::compile("r", &[r], &AuthorizationConfig::default()).is_err();
        assert!(bad(rule(Deny, &["10.0.0.0/33"])));
        assert!(bad(rule(Deny, &["not-a-network"])));
        let mut m = rule(Deny, &[]);
        m.methods = vec!["BAD METHOD".into()];
        assert!(bad(m));
    }

    #[test]
    fn identities_match_the_mtls_peer_by_workload_spiffe_id_or_any() {
        let by = |ids: &[&str]| AuthorizationRule {
            identities: ids.iter().map(|i| (*i).into()).collect(),
            ..rule(Allow, &[])
        };
        let a = Authz::compile(
            "r",
            &[by(&["web.shop"]), by(&["spiffe://other.td/ns/ops/sa/admin"])],
            &listener(Deny, vec![]),
        )
        .unwrap()
        .unwrap();
        assert!(!a.by_network);
        let none = http::HeaderMap::new();
        let peer = |p: Option<&str>| {
            let client = client_ip("10.0.0.1".parse().unwrap());
            a.decide(&Request { client, method: &Method::GET, path: "/", headers: &none, peer: p })
        };
        assert_eq!(peer(Some("spiffe://cluster.local/ns/shop/sa/web")), Action::Allow);
        assert_eq!(peer(Some("spiffe://cluster.local/ns/shop/sa/orders")), Action::Deny);
        assert_eq!(peer(Some("spiffe://cluster.local/ns/shopx/sa/web")), Action::Deny);
        assert_eq!(peer(Some("spiffe://other.td/ns/ops/sa/admin")), Action::Allow);
        assert_eq!(peer(Some("spiffe://cluster.local/ns/ops/sa/admin")), Action::Deny);
        assert_eq!(peer(None), Action::Deny, "plaintext: no identity matches");
        let any = Authz::compile("r", &[by(&["*"])], &listener(Deny, vec![])).unwrap().unwrap();
        let client = client_ip("10.0.0.1".parse().unwrap());
        let decide =
            |p| any.decide(&Request { client, method: &Method::GET, path: "/", headers: &none, peer: p });
        assert_eq!(decide(Some("spiffe://x/ns/a/sa/b")), Action::Allow);
        assert_eq!(decide(None), Action::Deny);
        assert!(Authz::compile("r", &[by(&["Web"])], &listener(Deny, vec![])).is_err());
    }
}

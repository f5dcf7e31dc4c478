//! Rego policies as routes and services attach them ([`meshproxy_policy`] compiles and evaluates
//! them): their inputs (OPA-Envoy's `input.attributes.request.http`, and the seed's
//! `input.response`), their actions and error modes, their counters.
//!
//! Where they run: a request-phase policy is a request filter ([`crate::filter`]) and refuses
//! with 403 `forbidden`. Response-phase policies run in [`crate::proxy`]'s respond phase: those
//! that do not read the body on the response head; `classify` ones that read it on a bounded copy
//! kept while the body streams to the client, judged at its end ([`BodyCheck`]); `deny` and
//! `warn` ones that read it after holding the head until the body ends or reaches the bound
//! ([`hold`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use meshproxy_config::{PolicyAction, PolicyBody, PolicyConfig, PolicyOnError, PolicyPhase};
use meshproxy_policy::{object, Limits, Messages, Policy, Value};

use crate::metrics::{MetricSet, Metrics, PolicyMetrics};
use crate::proxy::outcome::BodyVerdict;
use crate::upstream::Endpoint;
use crate::Error;

/// The response field a `warn` policy's messages go in.
pub static WARNING_HEADER: HeaderName = HeaderName::from_static("meshproxy-policy-warning");

/// A compiled policy with what its owner asked of it.
pub struct Attached {
    policy: Policy,
    pub action: PolicyAction,
    fail_open: bool,
    /// Reads `input.response.body` (never for a request-phase policy).
    pub reads_body: bool,
    pub max_body: usize,
    metrics: Arc<PolicyMetrics>,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached").field("policy", &self.policy).field("action", &self.action).finish()
    }
}

impl Attached {
    /// Evaluates the policy on `input` and applies its error mode: the messages of a violation
    /// (a failed evaluation is one, `policy error: …`, when the mode is `closed`), or None.
    pub fn judge(&self, input: Value) -> Option<Messages> {
        self.metrics.evaluations.fetch_add(1, Ordering::Relaxed);
        let messages = match self.policy.evaluate(input) {
            Ok(m) if m.is_empty() => return None,
            Ok(m) => m,
            Err(e) => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(policy = self.policy.file(), error = %e, fail_open = self.fail_open, "policy evaluation failed");
                if self.fail_open {
                    return None;
                }
                vec![format!("policy error: {e}")]
            }
        };
        self.metrics.violations.fetch_add(1, Ordering::Relaxed);
        Some(messages)
    }

    pub fn file(&self) -> &str {
        self.policy.file()
    }
}

/// A route's or a service's response-phase policies, and what they need of a response.
#[derive(Debug)]
pub struct ResponsePolicies {
    pub list: Box<[Arc<Attached>]>,
    /// Some `deny` or `warn` policy reads the body: the head waits for it ([`hold`]).
    pub holds: bool,
    /// The largest body bound of those `deny` and `warn` policies: how much the head waits for.
    pub hold_bytes: usize,
    /// Some `classify` policy reads the body: a bounded copy is kept as it streams.
    pub copies: bool,
}

/// A route's or a service's policies: the request-phase ones and the response-phase ones.
pub type Compiled = (Vec<Arc<Attached>>, Option<Arc<ResponsePolicies>>);

/// Compiles the policies of a route (`owner` = `route:<listener>/<route>`) or a service
/// (`service:<name>`): the request-phase ones (a route's only) and the response-phase ones.
pub fn compile(
    owner: &str,
    configs: &[PolicyConfig],
    request_allowed: bool,
    metrics: &Metrics,
    set: &mut MetricSet,
) -> Result<Compiled, Error> {
    let mut request = Vec::new();
    let mut response = Vec::new();
    for c in configs {
        let bad = |what: String| Error::Config(format!("{owner}: policy {:?}: {what}", c.file));
        let request_phase = c.phase == PolicyPhase::Request;
        if request_phase && !request_allowed {
            return Err(bad("a service's policies check responses only".into()));
        }
        if request_phase && c.action != PolicyAction::Deny {
            return Err(bad("a request policy's action is deny".into()));
        }
        let limits = Limits { time: Duration::from_millis(c.timeout_ms.max(1)) };
        let policy = Policy::compile(&c.file, &c.source, &c.rule, limits)
            .map_err(|e| Error::Config(format!("{e} (policy of {owner})")))?;
        let reads_body = !request_phase
            && match c.body {
                PolicyBody::Auto => policy.reads_body(),
                PolicyBody::Read => true,
                PolicyBody::Skip => false,
            };
        let action = match c.action {
            PolicyAction::Classify => "classify",
            PolicyAction::Deny => "deny",
            PolicyAction::Warn => "warn",
        };
        let attached = Arc::new(Attached {
            metrics: metrics.policy(set, owner, &c.file, action),
            policy,
            action: c.action,
            fail_open: c.on_error == PolicyOnError::Open,
            reads_body,
            max_body: c.max_body_bytes as usize,
        });
        if request_phase {
            request.push(attached);
        } else {
            response.push(attached);
        }
    }
    let response = (!response.is_empty()).then(|| {
        let holds = response.iter().any(|p| p.reads_body && p.action != PolicyAction::Classify);
        let hold_bytes = response
            .iter()
            .filter(|p| p.reads_body && p.action != PolicyAction::Classify)
            .map(|p| p.max_body)
            .max()
            .unwrap_or(0);
        let copies = response.iter().any(|p| p.reads_body && p.action == PolicyAction::Classify);
        Arc::new(ResponsePolicies { list: response.into(), holds, hold_bytes, copies })
    });
    Ok((request, response))
}

/// OPA-Envoy's `input.attributes.request.http`: method, path (with its query), host and headers
/// (lower-case names; repeated fields joined with `, `).
pub fn request_value(head: &http::request::Parts) -> Value {
    let host = head
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| head.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let http = object([
        ("method", Value::from(head.method.as_str())),
        ("path", Value::from(path)),
        ("host", Value::from(host)),
        ("headers", headers_value(&head.headers)),
    ]);
    object([("request", object([("http", http)]))])
}

/// Header fields as an object of lower-case names to values (repeated fields joined by `, `;
/// values that are not UTF-8 are read lossily).
fn headers_value(h: &HeaderMap) -> Value {
    let mut v = Value::new_object();
    if let Ok(map) = v.as_object_mut() {
        for name in h.keys() {
            let mut values = h.get_all(name).iter();
            let first = values.next().map_or(Default::default(), |v| String::from_utf8_lossy(v.as_bytes()));
            let value = match values.next() {
                // One field (the common case): its text as it is, without a copy to join into.
                None => Value::from(&*first),
                Some(second) => {
                    let mut joined = first.into_owned();
                    for v in std::iter::once(second).chain(values) {
                        joined.push_str(", ");
                        joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
                    }
                    Value::from(joined)
                }
            };
            map.insert(Value::from(name.as_str()), value);
        }
    }
    v
}

/// A request-phase input: `{ attributes: { request: { http } } }`.
pub fn request_input(head: &http::request::Parts) -> Value {
    object([("attributes", request_value(head))])
}

/// A response-phase input: the request's attributes (when kept) and `response`: status code,
/// headers, and the body as text when it was read whole (else absent, with `truncated` true
/// when it went past its bound).
pub fn response_input(
    attributes: Option<&Value>,
    status: u16,
    headers: &HeaderMap,
    body: Option<&Body>,
) -> Value {
    let mut response =
        object([("status_code", Value::from(u64::from(status))), ("headers", headers_value(headers))]);
    if let (Some(b), Ok(map)) = (body, response.as_object_mut()) {
        if b.truncated {
            map.insert(Value::from("truncated"), Value::from(true));
        } else {
            map.insert(Value::from("body"), Value::from(String::from_utf8_lossy(&b.bytes).into_owned()));
            map.insert(Value::from("truncated"), Value::from(false));
        }
    }
    let mut input = object([("response", response)]);
    if let (Some(a), Ok(map)) = (attributes, input.as_object_mut()) {
        map.insert(Value::from("attributes"), a.clone());
    }
    input
}

/// A response body as a policy reads it: at most its bound, copied.
#[derive(Default)]
pub struct Body {
    pub bytes: BytesMut,
    /// The body went past the bound: what was kept is not the body.
    pub truncated: bool,
}

impl Body {
    /// Keeps `data` while the body stays within `max`; past it, drops what was kept.
    pub fn push(&mut self, data: &[u8], max: usize) {
        if self.truncated {
            return;
        }
        if self.bytes.len() + data.len() > max {
            self.truncated = true;
            self.bytes = BytesMut::new();
            return;
        }
        self.bytes.extend_from_slice(data);
    }
}

/// The verdicts of response policies on one response.
#[derive(Default)]
pub struct Verdicts {
    /// A `classify` policy found the response its endpoint's failure.
    pub failed: bool,
    /// A `deny` policy's messages: the client is refused.
    pub denied: Option<Messages>,
    /// `warn` policies' messages.
    pub warnings: Messages,
}

/// Judges `response` with the policies of `lists` that `which` selects, on `input`'s maker.
pub fn judge<'a>(
    lists: impl Iterator<Item = &'a ResponsePolicies>,
    which: impl Fn(&Attached) -> bool,
    input: impl Fn() -> Value,
) -> Verdicts {
    let mut out = Verdicts::default();
    let mut made: Option<Value> = None;
    for p in lists.flat_map(|l| l.list.iter()).filter(|p| which(p)) {
        let input = made.get_or_insert_with(&input).clone();
        let Some(messages) = p.judge(input) else { continue };
        match p.action {
            PolicyAction::Classify => {
                tracing::debug!(policy = p.file(), messages = ?messages, "policy classified the response as a failure");
                out.failed = true;
            }
            PolicyAction::Deny => {
                tracing::info!(policy = p.file(), messages = ?messages, "policy denied the response");
                out.denied.get_or_insert_with(Vec::new).extend(messages);
            }
            PolicyAction::Warn => {
                tracing::warn!(policy = p.file(), messages = ?messages, "policy warning");
                out.warnings.extend(messages);
            }
        }
    }
    out
}

/// The `classify` policies that read a streamed body: a bounded copy of it, judged at its end,
/// whose verdict joins the endpoint's ([`BodyVerdict`]).
pub struct BodyCheck {
    lists: [Option<Arc<ResponsePolicies>>; 2],
    attributes: Option<Value>,
    status: u16,
    headers: HeaderMap,
    body: Body,
    max: usize,
    endpoint: Arc<Endpoint>,
    /// The head was the endpoint's failure already (`failureStatuses`): counted once, there.
    head_failed: bool,
}

impl BodyCheck {
    pub fn new(
        lists: [Option<Arc<ResponsePolicies>>; 2],
        attributes: Option<Value>,
        (status, headers): (u16, HeaderMap),
        endpoint: Arc<Endpoint>,
        head_failed: bool,
    ) -> Self {
        let max = lists
            .iter()
            .flatten()
            .flat_map(|l| l.list.iter())
            .filter(|p| p.reads_body && p.action == PolicyAction::Classify)
            .map(|p| p.max_body)
            .max()
            .unwrap_or(0);
        BodyCheck { lists, attributes, status, headers, body: Body::default(), max, endpoint, head_failed }
    }

    /// A data frame went by.
    pub fn data(&mut self, data: &[u8]) {
        self.body.push(data, self.max);
    }

    /// The body ended (`broken`: cut short): the policies' verdict, told with the endpoint's
    /// (`verdict`) or, when the endpoint's health waits for none, counted on its own. A body cut
    /// short is a failure already and is not judged.
    pub fn finish(self, verdict: Option<BodyVerdict>, grpc_status: Option<u8>, broken: bool) {
        let failed = !broken && {
            let BodyCheck { lists, attributes, status, headers, body, .. } = &self;
            judge(
                lists.iter().flatten().map(|l| &**l),
                |p| p.reads_body && p.action == PolicyAction::Classify,
                || response_input(attributes.as_ref(), *status, headers, Some(body)),
            )
            .failed
        };
        match verdict {
            Some(v) => v.end(grpc_status, broken || failed),
            None if failed && !self.head_failed => self.endpoint.count_failure(),
            None => {}
        }
    }
}

/// Messages as one header value: joined by `; `, characters a field value cannot hold replaced.
pub fn warning_value(messages: &[String]) -> HeaderValue {
    let joined = messages.join("; ");
    let clean: String =
        joined.chars().map(|c| if c == '\t' || (' '..='~').contains(&c) { c } else { '?' }).collect();
    HeaderValue::from_str(&clean).unwrap_or(HeaderValue::from_static("policy warning"))
}

/// Messages as a body: one a line.
pub fn messages_body(messages: &[String]) -> Bytes {
    let mut s = messages.join("\n");
    s.push('\n');
    Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_past_its_bound_is_dropped_and_marked() {
        let mut b = Body::default();
        b.push(b"hello ", 8);
        assert_eq!(&b.bytes[..], b"hello ");
        b.push(b"world", 8);
        assert!(b.truncated);
        assert!(b.bytes.is_empty());
        b.push(b"!", 8);
        assert!(b.bytes.is_empty());
    }

    #[test]
    fn request_input_follows_opa_envoy() {
        let head = http::Request::builder()
            .method("POST")
            .uri("/a?b=1")
            .header("host", "api.example")
            .header("X-Tag", "1")
            .header("x-tag", "2")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let json: serde_json::Value =
            serde_json::from_str(&request_input(&head).to_json_str().unwrap()).unwrap();
        let http = &json["attributes"]["request"]["http"];
        assert_eq!(http["method"], "POST");
        assert_eq!(http["path"], "/a?b=1");
        assert_eq!(http["host"], "api.example");
        assert_eq!(http["headers"]["x-tag"], "1, 2");
    }

    #[test]
    fn warnings_make_a_valid_field_value() {
        let v = warning_value(&["a\nb".into(), "ok ✓".into()]);
        assert_eq!(v, "a?b; ok ?");
    }
}

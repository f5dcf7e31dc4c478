//! The two spellings of a workload's mesh identity: its SPIFFE ID
//! (`spiffe://<td>/ns/<ns>/sa/<name>`, the certificate's URI SAN) and its DNS form
//! (`<name>.<ns>.serviceaccount.identity.<td>`, the certificate's DNS SAN and the SNI a client
//! sends, as Linkerd does). Also the peer's SPIFFE ID read from its certificate.

use x509_parser::extensions::GeneralName;

/// A workload's identity: service account, namespace and trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadId {
    pub name: String,
    pub namespace: String,
    pub trust_domain: String,
}

impl WorkloadId {
    /// `spiffe://<td>/ns/<ns>/sa/<name>`.
    pub fn spiffe(&self) -> String {
        format!("spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.name)
    }

    /// `<name>.<ns>.serviceaccount.identity.<td>`: the SNI sent and the DNS SAN verified.
    pub fn dns(&self) -> String {
        format!("{}.{}.serviceaccount.identity.{}", self.name, self.namespace, self.trust_domain)
    }

    /// Reads `spiffe://<td>/ns/<ns>/sa/<name>`.
    pub fn from_spiffe(id: &str) -> Option<WorkloadId> {
        let rest = id.strip_prefix("spiffe://")?;
        let (td, path) = rest.split_once('/')?;
        let mut parts = path.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(name), None)
                if label(ns) && label(name) && trust_domain(td) =>
            {
                Some(WorkloadId { name: name.into(), namespace: ns.into(), trust_domain: td.into() })
            }
            _ => None,
        }
    }

    /// Reads `<name>.<ns>.serviceaccount.identity.<td>`.
    pub fn from_dns(dns: &str) -> Option<WorkloadId> {
        let (name, rest) = dns.split_once('.')?;
        let (ns, rest) = rest.split_once('.')?;
        let td = rest.strip_prefix("serviceaccount.identity.")?;
        (label(name) && label(ns) && trust_domain(td)).then(|| WorkloadId {
            name: name.into(),
            namespace: ns.into(),
            trust_domain: td.into(),
        })
    }

    /// Reads an identity as a service names it: `<name>.<ns>` (in `trust_domain`) or a SPIFFE ID.
    pub fn parse(given: &str, trust_domain: &str) -> Option<WorkloadId> {
        if given.starts_with("spiffe://") {
            return WorkloadId::from_spiffe(given);
        }
        let (name, ns) = given.split_once('.')?;
        (label(name) && label(ns)).then(|| WorkloadId {
            name: name.into(),
            namespace: ns.into(),
            trust_domain: trust_domain.into(),
        })
    }
}

/// A Kubernetes name (RFC 1123 label).
fn label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A SPIFFE trust domain.
fn trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_'))
}

/// The SPIFFE ID in a certificate's URI SAN (the first `spiffe://` one), if any.
pub fn spiffe_id_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_owned()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_name_the_same_workload() {
        let id = WorkloadId::parse("orders.shop", "cluster.local").expect("name.ns");
        assert_eq!(id.spiffe(), "spiffe://cluster.local/ns/shop/sa/orders");
        assert_eq!(id.dns(), "orders.shop.serviceaccount.identity.cluster.local");
        assert_eq!(WorkloadId::from_dns(&id.dns()), Some(id.clone()));
        assert_eq!(WorkloadId::from_spiffe(&id.spiffe()), Some(id.clone()));
        assert_eq!(WorkloadId::parse("spiffe://cluster.local/ns/shop/sa/orders", "other.td"), Some(id));
    }

    #[test]
    fn other_shapes_are_not_workload_identities() {
        for bad in [
            "orders",
            "Orders.shop",
            "orders.shop.extra",
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns/shop/sa/orders/x",
            "spiffe:///ns/shop/sa/orders",
        ] {
            assert_eq!(WorkloadId::parse(bad, "cluster.local"), None, "{bad}");
        }
        assert_eq!(WorkloadId::from_dns("orders.shop.svc.cluster.local"), None);
    }
}

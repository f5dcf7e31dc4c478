//! The names in an identity: a SPIFFE trust domain, and the Kubernetes names (namespace, service
//! account) a workload's SPIFFE ID is built from.

use crate::Error;

/// Checks a SPIFFE trust domain name: lowercase letters, digits, `.`, `-` and `_`, at most 255
/// bytes (the SPIFFE ID specification, section 2.1).
pub fn validate_trust_domain(td: &str) -> Result<(), Error> {
    let invalid =
        |why: &str| Error::Invalid { what: "trust domain", value: td.to_string(), why: why.to_string() };
    if td.is_empty() {
        return Err(invalid("it is empty"));
    }
    if td.len() > 255 {
        return Err(invalid("it is longer than 255 bytes"));
    }
    if let Some(c) = td.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')) {
        return Err(invalid(&format!(
            "{c:?} is not allowed (lowercase letters, digits, '.', '-' and '_' are), e.g. cluster.local"
        )));
    }
    Ok(())
}

/// Checks a namespace or service-account name as Kubernetes does (an RFC 1123 label): lowercase
/// letters, digits and `-`, starting and ending with a letter or digit, at most 63 bytes.
pub fn validate_label(what: &'static str, value: &str) -> Result<(), Error> {
    let invalid = |why: &str| Error::Invalid { what, value: value.to_string(), why: why.to_string() };
    if value.is_empty() {
        return Err(invalid("it is empty"));
    }
    if value.len() > 63 {
        return Err(invalid("it is longer than 63 bytes"));
    }
    if !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(invalid("only lowercase letters, digits and '-' are allowed"));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(invalid("it must start and end with a letter or digit"));
    }
    Ok(())
}

/// The SPIFFE ID of the workload running as service account `name` in `namespace`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, name: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{name}")
}

/// The trust domain of a SPIFFE ID (`spiffe://td` or `spiffe://td/path`).
pub fn trust_domain_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    let td = rest.split('/').next()?;
    (!td.is_empty()).then_some(td)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_domains_follow_the_spiffe_rules() {
        assert!(validate_trust_domain("cluster.local").is_ok());
        assert!(validate_trust_domain("prod_1-eu.example.org").is_ok());
        for bad in ["", "Cluster.local", "cluster.local:8443", "a/b", "spiffe://x"] {
            assert!(validate_trust_domain(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_are_kubernetes_labels() {
        assert!(validate_label("name", "web-1").is_ok());
        for bad in ["", "-web", "web-", "Web", "web.ns", &"a".repeat(64)] {
            assert!(validate_label("name", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn spiffe_ids_name_namespace_and_service_account() {
        let id = spiffe_id("cluster.local", "shop", "web");
        assert_eq!(id, "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(trust_domain_of(&id), Some("cluster.local"));
        assert_eq!(trust_domain_of("spiffe://cluster.local"), Some("cluster.local"));
        assert_eq!(trust_domain_of("https://cluster.local"), None);
    }
}

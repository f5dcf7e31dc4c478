//! The check a resumed mesh session needs on the inbound side. A resumed handshake verifies no
//! certificate: the client's chain comes from the session ticket, verified when the session was
//! made with the material that made the ticket (a reload makes new ticket keys, so tickets never
//! outlive the anchors they were verified against). What can change while a ticket lives (up to
//! 12 h with ring's ticketer) is time: the certificate may have expired since.

use std::time::SystemTime;

use rustls::pki_types::CertificateDer;

/// Whether every certificate of `chain` is within its validity period at `now` (false for an
/// empty chain or a certificate that does not parse).
pub fn chain_current(chain: &[CertificateDer<'_>], now: SystemTime) -> bool {
    let Ok(since_epoch) = now.duration_since(SystemTime::UNIX_EPOCH) else {
        return false;
    };
    let Ok(secs) = i64::try_from(since_epoch.as_secs()) else {
        return false;
    };
    let Ok(at) = x509_parser::time::ASN1Time::from_timestamp(secs) else {
        return false;
    };
    !chain.is_empty()
        && chain.iter().all(|der| {
            x509_parser::parse_x509_certificate(der.as_ref()).is_ok_and(|(_, c)| c.validity().is_valid_at(at))
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn certificate(
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["web.shop".into()]).expect("params");
        params.not_before = not_before;
        params.not_after = not_after;
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("certificate").der().clone()
    }

    #[test]
    fn a_chain_is_current_only_inside_every_certificates_validity() {
        let now = time::OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        let valid = certificate(now - day, now + day);
        let expired = certificate(now - 2 * day, now - day);
        let later = certificate(now + day, now + 2 * day);
        let t = SystemTime::now();
        assert!(chain_current(std::slice::from_ref(&valid), t));
        assert!(!chain_current(&[valid.clone(), expired.clone()], t), "an expired issuer");
        assert!(!chain_current(std::slice::from_ref(&expired), t));
        assert!(!chain_current(std::slice::from_ref(&later), t), "not valid yet");
        assert!(!chain_current(std::slice::from_ref(&valid), t + Duration::from_secs(2 * 24 * 3600)));
        assert!(!chain_current(&[], t));
        assert!(!chain_current(&[CertificateDer::from(vec![1u8, 2, 3])], t));
    }
}

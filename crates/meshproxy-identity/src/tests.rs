//! Making, rotating and checking identity material in a temporary directory, at chosen times.

use std::time::Duration;

use time::OffsetDateTime;

use crate::*;

const HOUR: Duration = Duration::from_secs(3600);

fn t0() -> OffsetDateTime {
    OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or_else(|_| OffsetDateTime::now_utc())
}

fn at(now: OffsetDateTime, d: Duration) -> OffsetDateTime {
    now + time::Duration::try_from(d).unwrap_or(time::Duration::ZERO)
}

fn standing(status: &Status, role: Role) -> Vec<Standing> {
    status.certificates.iter().filter(|c| c.role == role).map(|c| c.standing).collect()
}

#[test]
fn an_issued_certificate_names_its_workload_and_checks_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = t0();
    let anchor =
        init(dir.path(), "cluster.local", DEFAULT_ANCHOR_VALIDITY, Existing::Refuse, now).expect("init");
    assert_eq!(anchor.id, "spiffe://cluster.local");
    let leaf = issue(dir.path(), "web", "shop", DEFAULT_WORKLOAD_VALIDITY, now).expect("issue");
    assert_eq!(leaf.id, "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(leaf.cert, dir.path().join("web.shop.crt"));
    assert_eq!(leaf.not_after, at(now, DEFAULT_WORKLOAD_VALIDITY));
    let status = check(dir.path(), None, now).expect("check");
    assert!(status.ok, "{status:?}");
    let workload = status.certificates.iter().find(|c| c.role == Role::Workload).expect("workload");
    assert_eq!(workload.id.as_deref(), Some("spiffe://cluster.local/ns/shop/sa/web"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "web.shop.key"] {
            let mode = std::fs::metadata(dir.path().join(key)).expect("key").permissions().mode();
            assert_eq!(mode & 0o077, 0, "{key} is readable by others: {mode:o}");
        }
    }
}

#[test]
fn a_leaf_never_outlives_its_issuer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = t0();
    let anchor = init(dir.path(), "cluster.local", 2 * HOUR, Existing::Refuse, now).expect("init");
    let leaf = issue(dir.path(), "web", "shop", 24 * HOUR, now).expect("issue");
    assert_eq!(leaf.not_after, anchor.not_after);
}

#[test]
fn an_expired_anchor_issues_nothing_and_expired_material_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = t0();
    init(dir.path(), "cluster.local", 2 * HOUR, Existing::Refuse, now).expect("init");
    issue(dir.path(), "web", "shop", HOUR, now).expect("issue");
    let later = at(now, 3 * HOUR);
    let err = issue(dir.path(), "api", "shop", HOUR, later).expect_err("issued by an expired anchor");
    assert_eq!(err.code(), "MESHPROXY_IDENTITY_ANCHOR_EXPIRED");
    let status = check(dir.path(), None, later).expect("check reads expired material");
    assert!(!status.ok);
    assert_eq!(standing(&status, Role::Anchor), [Standing::Expired]);
    assert_eq!(standing(&status, Role::Workload), [Standing::Expired]);
}

#[test]
fn check_flags_a_certificate_near_its_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = t0();
    init(dir.path(), "cluster.local", DEFAULT_ANCHOR_VALIDITY, Existing::Refuse, now).expect("init");
    issue(dir.path(), "web", "shop", 10 * HOUR, now).expect("issue");
    // 30 % of the lifetime left by default: after 7 of 10 hours.
    assert!(check(dir.path(), None, at(now, 6 * HOUR)).expect("check").ok);
    let late = check(dir.path(), None, at(now, 8 * HOUR)).expect("check");
    assert_eq!(standing(&late, Role::Workload), [Standing::Near]);
    // An explicit threshold replaces the share.
    let strict = check(dir.path(), Some(5 * HOUR), at(now, 6 * HOUR)).expect("check");
    assert_eq!(standing(&strict, Role::Workload), [Standing::Near]);
}

#[test]
fn init_refuses_to_replace_an_anchor_unless_told_and_rotation_keeps_the_old_one_trusted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = t0();
    init(dir.path(), "cluster.local", DEFAULT_ANCHOR_VALIDITY, Existing::Refuse, now).expect("init");
    issue(dir.path(), "web", "shop", DEFAULT_WORKLOAD_VALIDITY, now).expect("issue");
    let err = init(dir.path(), "cluster.local", DEFAULT_ANCHOR_VALIDITY, Existing::Refuse, now)
        .expect_err("replaced");
    assert_eq!(err.code(), "MESHPROXY_IDENTITY_EXISTS");

    let rotated =
        init(dir.path(), "cluster.local", DEFAULT_ANCHOR_VALIDITY, Existing::Rotate, now).expect("rotate");
    assert_eq!(rotated.bundle, 2);
    let status = check(dir.path(), None, now).expect("check");
    assert!(status.ok, "the old anchor's leaf stays trusted during a rotation: {status:?}");
    // The new anchor issues from now on; its leaf is trusted by the same bundle.
    issue(dir.path(), "api", "shop", DEFAULT_WORKLOAD_VALIDITY, now).expect("issue after rotation");
    assert!(check(dir.path(), None, now).expect("check").ok);

    let replaced =
        init(dir.path(), "cluster.local", DEFAULT_ANCHOR_VALIDITY, Existing::Replace, now).expect("replace");
    assert_eq!(replaced.bundle, 1);
    let status = check(dir.path(), None, now).expect("check");
    assert_eq!(standing(&status, Role::Workload), [Standing::Untrusted, Standing::Untrusted]);
}

#[test]
fn a_certificate_from_another_trust_anchor_is_untrusted_and_a_swapped_key_is_caught() {
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let now = t0();
    init(a.path(), "cluster.local", DEFAULT_ANCHOR_VALIDITY, Existing::Refuse, now).expect("init a");
    init(b.path(), "cluster.local", DEFAULT_ANCHOR_VALIDITY, Existing::Refuse, now).expect("init b");
    issue(b.path(), "web", "shop", DEFAULT_WORKLOAD_VALIDITY, now).expect("issue");
    std::fs::copy(b.path().join("web.shop.crt"), a.path().join("web.shop.crt")).expect("copy");
    let status = check(a.path(), None, now).expect("check");
    assert_eq!(standing(&status, Role::Workload), [Standing::Untrusted]);

    issue(a.path(), "api", "shop", DEFAULT_WORKLOAD_VALIDITY, now).expect("issue");
    issue(a.path(), "db", "shop", DEFAULT_WORKLOAD_VALIDITY, now).expect("issue");
    std::fs::copy(a.path().join("db.shop.key"), a.path().join("api.shop.key")).expect("copy key");
    let status = check(a.path(), None, now).expect("check");
    let api = status.certificates.iter().find(|c| c.path.ends_with("api.shop.crt")).expect("api");
    assert_eq!(api.standing, Standing::KeyMismatch);
}

#[test]
fn bad_names_and_missing_material_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = t0();
    let err = init(dir.path(), "Cluster.Local", DEFAULT_ANCHOR_VALIDITY, Existing::Refuse, now)
        .expect_err("accepted");
    assert_eq!(err.code(), "MESHPROXY_IDENTITY_INVALID");
    let err = issue(dir.path(), "web", "shop", DEFAULT_WORKLOAD_VALIDITY, now)
        .expect_err("issued without an anchor");
    assert_eq!(err.code(), "MESHPROXY_IDENTITY_IO");
    init(dir.path(), "cluster.local", DEFAULT_ANCHOR_VALIDITY, Existing::Refuse, now).expect("init");
    let err = issue(dir.path(), "Web_1", "shop", DEFAULT_WORKLOAD_VALIDITY, now).expect_err("accepted");
    assert!(err.to_string().contains("name \"Web_1\""), "{err}");
    std::fs::write(dir.path().join("ca.crt"), "not a certificate").expect("write");
    let err = issue(dir.path(), "web", "shop", DEFAULT_WORKLOAD_VALIDITY, now).expect_err("accepted");
    assert_eq!(err.code(), "MESHPROXY_IDENTITY_BAD_MATERIAL");
}

//! Request-path normalization for matching: dot segments (`.`, `..` and their percent-encoded
//! forms) are removed and empty segments collapsed, so `/a/../admin` and `/a/%2e%2e/admin` are
//! matched as `/admin` and cannot slip past a rule. Segments are borrowed from the request path
//! and kept on the stack for the common case, so matching allocates nothing.

use meshproxy_config::{PathMatch, PathMatchType};

/// A compiled path match (`Exact`, or `Prefix` on whole segments), as routes match paths: the
/// routing table's and the authorization rules' (`meshproxy-core`), so both read a path alike.
#[derive(Debug, Clone)]
pub struct PathMatcher {
    pub(crate) exact: bool,
    pub(crate) segments: Box<[Box<str>]>,
    trailing_slash: bool,
}

impl PathMatcher {
    /// `m`, normalized as requests are; an error names what is wrong with its value.
    pub fn compile(m: &PathMatch) -> Result<Self, String> {
        if !m.value.starts_with('/') {
            return Err(format!("path {:?} must start with '/'", m.value));
        }
        let segs = Segments::parse(&m.value);
        let segments = (0..segs.len()).filter_map(|i| segs.get(i)).map(Box::<str>::from).collect();
        Ok(PathMatcher {
            exact: m.kind == PathMatchType::Exact,
            segments,
            trailing_slash: segs.trailing_slash,
        })
    }

    /// Whether this matches every path (`Prefix /`).
    pub fn is_any(&self) -> bool {
        !self.exact && self.segments.is_empty()
    }

    /// Whether a request path, parsed into `segs`, matches.
    #[inline]
    pub fn matches(&self, segs: &Segments<'_>) -> bool {
        if self.exact {
            if segs.len() != self.segments.len() || segs.trailing_slash != self.trailing_slash {
                return false;
            }
        } else if segs.len() < self.segments.len() {
            return false;
        }
        self.segments.iter().enumerate().all(|(i, want)| segs.get(i) == Some(&**want))
    }
}

/// Segments kept inline; deeper paths spill to the heap (rare, still correct).
const INLINE: usize = 32;

/// The normalized segments of a path plus whether it ended with `/`.
pub struct Segments<'a> {
    inline: [&'a str; INLINE],
    len: usize,
    spill: Vec<&'a str>,
    pub trailing_slash: bool,
}

impl<'a> Segments<'a> {
    pub fn parse(path: &'a str) -> Self {
        let mut s = Segments { inline: [""; INLINE], len: 0, spill: Vec::new(), trailing_slash: false };
        let body = path.strip_prefix('/').unwrap_or(path);
        if body.is_empty() {
            return s;
        }
        let mut parts = body.split('/').peekable();
        while let Some(seg) = parts.next() {
            let last = parts.peek().is_none();
            if is_dot(seg) {
                s.trailing_slash = last;
            } else if is_dot_dot(seg) {
                s.pop();
                s.trailing_slash = last;
            } else if seg.is_empty() {
                s.trailing_slash = last;
            } else {
                s.push(seg);
                s.trailing_slash = false;
            }
        }
        if s.is_empty() {
            // `/.` and `/a/..` normalize to the root, which has no trailing-slash distinction.
            s.trailing_slash = false;
        }
        s
    }

    fn push(&mut self, seg: &'a str) {
        if self.len < INLINE {
            self.inline[self.len] = seg;
        } else {
            self.spill.push(seg);
        }
        self.len += 1;
    }

    fn pop(&mut self) {
        if self.len > INLINE {
            self.spill.pop();
        }
        self.len = self.len.saturating_sub(1);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: usize) -> Option<&'a str> {
        if i >= self.len {
            None
        } else if i < INLINE {
            Some(self.inline[i])
        } else {
            self.spill.get(i - INLINE).copied()
        }
    }

    /// Rebuilds the normalized path (used at config-compile time, not per request).
    pub fn to_path(&self) -> String {
        let mut out = String::from("/");
        for i in 0..self.len {
            if i > 0 {
                out.push('/');
            }
            out.push_str(self.get(i).unwrap_or_default());
        }
        if self.trailing_slash && self.len > 0 {
            out.push('/');
        }
        out
    }
}

/// The normalized form of a request path (origin-form, starting with `/`), or `None` when it is
/// already normal: no `.` or `..` segment (plain or percent-encoded) and no empty segment but a
/// trailing one. The path forwarded upstream is the one routes and rules matched, so a backend
/// never resolves `/public/../admin` into a resource the proxy did not route or authorize.
/// One byte scan for the common (normal) path; the rebuild is for paths that need it.
pub fn normalized(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return None;
    }
    // A segment that may need work starts right after a `/` with `/`, `.` or `%2e`.
    let suspect = (0..bytes.len()).any(|i| {
        bytes[i] == b'/'
            && match bytes.get(i + 1) {
                Some(b'/' | b'.') => true,
                Some(b'%') => bytes.get(i + 2..i + 4).is_some_and(|h| h.eq_ignore_ascii_case(b"2e")),
                _ => false,
            }
    });
    if !suspect {
        return None;
    }
    let out = Segments::parse(path).to_path();
    (out != path).then_some(out)
}

fn is_dot(seg: &str) -> bool {
    seg == "." || seg.eq_ignore_ascii_case("%2e")
}

fn is_dot_dot(seg: &str) -> bool {
    match seg.len() {
        2 => seg == "..",
        4 => seg.eq_ignore_ascii_case(".%2e") || seg.eq_ignore_ascii_case("%2e."),
        6 => seg.eq_ignore_ascii_case("%2e%2e"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{PathMatcher, Segments};
    use meshproxy_config::{PathMatch, PathMatchType};

    #[test]
    fn path_matcher_matches_exact_and_prefix_on_segments() {
        let m = |kind, value: &str| PathMatcher::compile(&PathMatch { kind, value: value.into() }).unwrap();
        let hit = |m: &PathMatcher, p: &str| m.matches(&Segments::parse(p));
        let prefix = m(PathMatchType::Prefix, "/admin");
        assert!(hit(&prefix, "/admin") && hit(&prefix, "/admin/") && hit(&prefix, "/admin/x"));
        assert!(!hit(&prefix, "/administrator") && !hit(&prefix, "/"));
        assert!(hit(&prefix, "/public/../admin"), "dot segments cannot slip past a match");
        let exact = m(PathMatchType::Exact, "/admin");
        assert!(hit(&exact, "/admin") && !hit(&exact, "/admin/") && !hit(&exact, "/admin/x"));
        assert!(
            m(PathMatchType::Prefix, "/").is_any()
                && !prefix.is_any()
                && !m(PathMatchType::Exact, "/").is_any()
        );
        assert!(
            PathMatcher::compile(&PathMatch { kind: PathMatchType::Prefix, value: "admin".into() }).is_err()
        );
    }

    fn norm(p: &str) -> String {
        Segments::parse(p).to_path()
    }

    #[test]
    fn removes_dot_segments() {
        assert_eq!(norm("/a/../admin"), "/admin");
        assert_eq!(norm("/a/%2e%2e/admin"), "/admin");
        assert_eq!(norm("/a/%2E./b/./c"), "/b/c");
        assert_eq!(norm("/../../etc"), "/etc");
        assert_eq!(norm("//a///b/"), "/a/b/");
        assert_eq!(norm("/"), "/");
        assert_eq!(norm(""), "/");
        assert_eq!(norm("/a/.."), "/");
        assert_eq!(norm("/a/b/.."), "/a/");
    }

    #[test]
    fn normalized_rewrites_only_paths_that_need_it() {
        use super::normalized;
        assert_eq!(normalized("/api/users"), None);
        assert_eq!(normalized("/"), None);
        assert_eq!(normalized("/a/b/"), None, "a trailing slash is kept as is");
        assert_eq!(normalized("/.well-known/x"), None, "a dot that starts a name is no dot segment");
        assert_eq!(normalized("/a/%41"), None, "other percent-encodings pass unchanged");
        assert_eq!(normalized("/a/%2ex"), None, "an encoded dot that starts a name is no dot segment");
        assert_eq!(normalized("*"), None);
        assert_eq!(normalized("/public/../admin").as_deref(), Some("/admin"));
        assert_eq!(normalized("/public/%2E%2e/admin/x").as_deref(), Some("/admin/x"));
        assert_eq!(normalized("/a/./b").as_deref(), Some("/a/b"));
        assert_eq!(normalized("//a//b").as_deref(), Some("/a/b"));
        assert_eq!(normalized("/a/..").as_deref(), Some("/"));
    }

    #[test]
    fn deep_paths_spill_and_stay_correct() {
        let deep: String = (0..100).map(|i| format!("/s{i}")).collect();
        let s = Segments::parse(&deep);
        assert_eq!(s.len(), 100);
        assert_eq!(s.get(99), Some("s99"));
        let back = format!("{deep}/../x");
        let s = Segments::parse(&back);
        assert_eq!(s.len(), 100);
        assert_eq!(s.get(99), Some("x"));
    }
}

//! Topic name and topic filter rules (MQTT 5.0 §4.7), and `$share/` parsing (§4.8.2).

use crate::limits::TOPIC_LEVELS_MAX;

/// What is wrong with a topic name, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// Empty.
    Empty,
    /// Holds `+` or `#`.
    Wildcard,
    /// More than [`TOPIC_LEVELS_MAX`] levels.
    TooDeep,
}

/// Checks a topic name in one pass over its bytes: non-empty, no `+` or `#`
/// [MQTT-4.7.1-1], at most [`TOPIC_LEVELS_MAX`] levels.
pub fn check_name(t: &str) -> Result<(), NameError> {
    if t.is_empty() {
        return Err(NameError::Empty);
    }
    let mut slashes = 0;
    for b in t.bytes() {
        match b {
            b'+' | b'#' => return Err(NameError::Wildcard),
            b'/' => slashes += 1,
            _ => {}
        }
    }
    if slashes >= TOPIC_LEVELS_MAX {
        return Err(NameError::TooDeep);
    }
    Ok(())
}

/// A topic name: non-empty, no `+` or `#` [MQTT-4.7.1-1], at most [`TOPIC_LEVELS_MAX`] levels.
pub fn valid_name(t: &str) -> bool {
    check_name(t).is_ok()
}

/// A topic filter: non-empty; `#` only as the whole last level [MQTT-4.7.1-2]; `+` only as a
/// whole level [MQTT-4.7.1-3]; at most [`TOPIC_LEVELS_MAX`] levels.
pub fn valid_filter(f: &str) -> bool {
    if f.is_empty() || f.bytes().filter(|b| *b == b'/').count() >= TOPIC_LEVELS_MAX {
        return false;
    }
    let mut levels = f.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// A parsed `$share/{group}/{filter}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// Share name.
    pub group: &'a str,
    /// The topic filter after the share name.
    pub filter: &'a str,
}

/// Outcome of looking at a filter for the `$share/` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind<'a> {
    /// An ordinary filter.
    Plain(&'a str),
    /// A shared subscription.
    Shared(SharedFilter<'a>),
    /// `$share/` with a bad share name or filter [MQTT-4.8.2-1, 4.8.2-2].
    InvalidShared,
}

/// Classifies and validates `f` (the caller has already checked `valid_filter`).
pub fn classify(f: &str) -> FilterKind<'_> {
    let Some(rest) = f.strip_prefix("$share/") else {
        return FilterKind::Plain(f);
    };
    let Some((group, filter)) = rest.split_once('/') else {
        return FilterKind::InvalidShared;
    };
    if group.is_empty() || group.contains(['+', '#']) || !valid_filter(filter) {
        return FilterKind::InvalidShared;
    }
    FilterKind::Shared(SharedFilter { group, filter })
}

/// Whether `filter` matches `topic` under MQTT rules, including the rule that wildcards in the
/// first level never match topics starting with `$` [MQTT-4.7.2-1] and that `a/#` matches `a`.
/// This is the small reference matcher the router's trie is property-tested against.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        for ok in ["a", "#", "+", "a/+/b", "a/#", "+/+", "/", "//", "$SYS/#", "a/+"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "#/a", "##"] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }

    #[test]
    fn matching() {
        assert!(matches("a/#", "a"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("+/+", "/"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("a/+/c", "a//c"));
    }

    #[test]
    fn shared() {
        assert_eq!(classify("$share/g/a/#"), FilterKind::Shared(SharedFilter { group: "g", filter: "a/#" }));
        assert_eq!(classify("$share/g"), FilterKind::InvalidShared);
        assert_eq!(classify("$share//a"), FilterKind::InvalidShared);
        assert_eq!(classify("$share/g+/a"), FilterKind::InvalidShared);
        assert_eq!(classify("a/b"), FilterKind::Plain("a/b"));
    }
}

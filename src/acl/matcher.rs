//! Topic-filter algebra for ACL v2 (SPEC §3, MQTT semantics): does a pattern match a topic,
//! does it cover a subscription filter (set inclusion of the topics each can match), do two
//! filters overlap. Patterns and filters are slices of [`Level`]s; topics are `&str` split on
//! `/` as they are walked. Nothing here allocates.

/// One level of a bound pattern or a parsed filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level<'a> {
    /// A literal level (may be empty).
    Lit(&'a str),
    /// `+`.
    Plus,
    /// `#` (always last).
    Hash,
}

/// Anything that reads as a [`Level`] (borrowed levels, or a compiled policy's owned ones).
pub trait AsLevel {
    /// This level.
    fn level(&self) -> Level<'_>;
}

impl AsLevel for Level<'_> {
    fn level(&self) -> Level<'_> {
        *self
    }
}

/// Parses a valid filter's levels into `out` (cleared first).
pub fn levels_of<'a>(filter: &'a str, out: &mut Vec<Level<'a>>) {
    out.clear();
    out.extend(filter.split('/').map(|l| match l {
        "+" => Level::Plus,
        "#" => Level::Hash,
        l => Level::Lit(l),
    }));
}

fn wild_blocked(i: usize, lit: &str) -> bool {
    // [MQTT-4.7.2-1]: wildcards at the first level never match a topic starting with `$`.
    i == 0 && lit.starts_with('$')
}

/// Whether `pattern` matches the topic name `topic` (`a/#` matches `a`).
pub fn matches<P: AsLevel>(pattern: &[P], topic: &str) -> bool {
    let mut levels = topic.split('/');
    for (i, p) in pattern.iter().enumerate() {
        match p.level() {
            Level::Hash => {
                return !(i == 0 && topic.starts_with('$'));
            }
            Level::Plus => match levels.next() {
                Some(t) if !wild_blocked(i, t) => {}
                _ => return false,
            },
            Level::Lit(l) => match levels.next() {
                Some(t) if t == l => {}
                _ => return false,
            },
        }
    }
    levels.next().is_none()
}

/// Whether every topic `filter` can match is matched by `pattern`.
pub fn covers<P: AsLevel, F: AsLevel>(pattern: &[P], filter: &[F]) -> bool {
    let mut i = 0;
    loop {
        match (pattern.get(i).map(AsLevel::level), filter.get(i).map(AsLevel::level)) {
            (None, None) => return true,
            (None, Some(_)) => return false,
            (Some(Level::Hash), f) => {
                // `#` at the first level does not match `$` topics.
                return !(i == 0 && matches!(f, Some(Level::Lit(l)) if l.starts_with('$')));
            }
            // The filter stops here; the pattern must match the parent too: only `#` does.
            (Some(p), None) => return pattern.len() == i + 1 && p == Level::Hash,
            (Some(p), Some(Level::Hash)) => {
                // The filter matches every continuation from level i (and, at i > 0, the parent
                // with i levels). `+/#` covers that only at the first level, where a topic
                // always has a level to give `+`.
                return i == 0
                    && p == Level::Plus
                    && pattern.get(1).map(AsLevel::level) == Some(Level::Hash)
                    && pattern.len() == 2;
            }
            (Some(Level::Plus), Some(Level::Plus)) => {}
            (Some(Level::Plus), Some(Level::Lit(l))) => {
                if wild_blocked(i, l) {
                    return false;
                }
            }
            (Some(Level::Lit(_)), Some(Level::Plus)) => return false,
            (Some(Level::Lit(a)), Some(Level::Lit(b))) => {
                if a != b {
                    return false;
                }
            }
        }
        i += 1;
    }
}

/// Whether some topic is matched by both `a` and `b`.
pub fn overlaps<A: AsLevel, B: AsLevel>(a: &[A], b: &[B]) -> bool {
    let mut i = 0;
    loop {
        match (a.get(i).map(AsLevel::level), b.get(i).map(AsLevel::level)) {
            (None, None) => return true,
            (Some(Level::Hash), None) | (None, Some(Level::Hash)) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(Level::Hash), Some(x)) | (Some(x), Some(Level::Hash)) => {
                return !(i == 0 && matches!(x, Level::Lit(l) if l.starts_with('$')));
            }
            (Some(Level::Plus), Some(Level::Plus)) => {}
            (Some(Level::Plus), Some(Level::Lit(l))) | (Some(Level::Lit(l)), Some(Level::Plus)) => {
                if wild_blocked(i, l) {
                    return false;
                }
            }
            (Some(Level::Lit(x)), Some(Level::Lit(y))) => {
                if x != y {
                    return false;
                }
            }
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lv(f: &str) -> Vec<Level<'_>> {
        let mut v = Vec::new();
        levels_of(f, &mut v);
        v
    }

    /// Reference: a direct reading of MQTT matching, on level vectors.
    fn ref_match(p: &[&str], t: &[&str]) -> bool {
        fn go(p: &[&str], t: &[&str], first: bool) -> bool {
            match (p.first(), t.first()) {
                (Some(&"#"), _) => !(first && t.first().is_some_and(|l| l.starts_with('$'))),
                (None, None) => true,
                (None, _) | (Some(_), None) => false,
                (Some(&"+"), Some(l)) => !(first && l.starts_with('$')) && go(&p[1..], &t[1..], false),
                (Some(a), Some(b)) => a == b && go(&p[1..], &t[1..], false),
            }
        }
        // `a/#` matches `a`: a trailing `#` also matches zero levels.
        go(p, t, true)
            || (p.len() >= 2
                && p[p.len() - 1] == "#"
                && p.len() - 1 == t.len()
                && go(&p[..p.len() - 1], t, true))
    }

    const ALPHA: [&str; 4] = ["a", "b", "$s", ""];

    fn universe() -> Vec<Vec<&'static str>> {
        let mut out: Vec<Vec<&str>> = vec![];
        let mut frontier: Vec<Vec<&str>> = ALPHA.iter().map(|l| vec![*l]).collect();
        for _ in 0..4 {
            out.extend(frontier.iter().cloned());
            let mut next = vec![];
            for t in &frontier {
                for l in ALPHA {
                    let mut n = t.clone();
                    n.push(l);
                    next.push(n);
                }
            }
            frontier = next;
        }
        out
    }

    fn filter() -> impl Strategy<Value = String> {
        (prop::collection::vec(prop::sample::select(vec!["a", "b", "$s", "", "+"]), 0..3), any::<bool>())
            .prop_map(|(mut v, hash)| {
                if hash || v.is_empty() {
                    v.push("#");
                }
                v.join("/")
            })
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(ALPHA.to_vec()), 1..5).prop_map(|v| v.join("/"))
    }

    proptest! {
        #[test]
        fn matches_agrees_with_reference(p in filter(), t in topic()) {
            let ps: Vec<&str> = p.split('/').collect();
            let ts: Vec<&str> = t.split('/').collect();
            prop_assert_eq!(matches(&lv(&p), &t), ref_match(&ps, &ts), "{} vs {}", p, t);
        }

        #[test]
        fn covers_is_set_inclusion(p in filter(), f in filter()) {
            let ps: Vec<&str> = p.split('/').collect();
            let fs: Vec<&str> = f.split('/').collect();
            let want = universe().iter().all(|t| !ref_match(&fs, t) || ref_match(&ps, t));
            prop_assert_eq!(covers(&lv(&p), &lv(&f)), want, "{} covers {}", p, f);
        }

        #[test]
        fn overlaps_is_a_common_topic(a in filter(), b in filter()) {
            let as_: Vec<&str> = a.split('/').collect();
            let bs: Vec<&str> = b.split('/').collect();
            let want = universe().iter().any(|t| ref_match(&as_, t) && ref_match(&bs, t));
            prop_assert_eq!(overlaps(&lv(&a), &lv(&b)), want, "{} overlaps {}", a, b);
        }
    }

    #[test]
    fn spec_examples() {
        assert!(covers(&lv("agents/#"), &lv("agents/+/state")));
        assert!(!covers(&lv("agents/#"), &lv("#")));
        assert!(covers(&lv("+/#"), &lv("#")));
        assert!(matches(&lv("a/#"), "a"));
        assert!(covers(&lv("a/#"), &lv("a")));
        assert!(!matches(&lv("#"), "$SYS/x"));
        assert!(!matches(&lv("+/x"), "$SYS/x"));
        assert!(!covers(&lv("#"), &lv("$SYS/#")));
        assert!(overlaps(&lv("a/#"), &lv("a/secret/#")));
        assert!(!overlaps(&lv("a/b"), &lv("a/c")));
    }
}

//! The house rules, checked on the source (docs/architecture.md, "Layers and rules"):
//!
//! - the sans-IO modules do no I/O: no glommio, sockets, files, threads or clock reads;
//! - no import circle among the modules under `src/`, and at most [`UPWARD_IMPORTS_MAX`]
//!   imports from a module to one in a higher layer;
//! - no source file over [`FILE_LINES_MAX`] lines, no function over [`FN_LINES_MAX`].
//!
//! The limits are a ratchet: lower them as the code allows, never raise them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest source file, in lines.
const FILE_LINES_MAX: usize = 720;
/// Longest function, in lines (signature to closing brace).
const FN_LINES_MAX: usize = 112;
/// Imports allowed from a module to one in a higher layer of [`LAYERS`] (each one would be
/// named in docs/architecture.md with its reason; there are none).
const UPWARD_IMPORTS_MAX: usize = 0;

/// Modules that must not do I/O, as paths under `src/` (a directory means all of it).
const SANS_IO: &[&str] = &[
    "codec",
    "router",
    "acl",
    "broker",
    "quota.rs",
    "identity.rs",
    "limits.rs",
    "plane.rs",
    "audit.rs",
    "ratelog.rs",
    "auth/mod.rs",
    "auth/cache.rs",
    "auth/directory.rs",
    "auth/jwt.rs",
    "auth/principal.rs",
    "auth/secret.rs",
];

/// What sans-IO code must not name.
const FORBIDDEN: &[&str] = &[
    "glommio",
    "std::net::Tcp",
    "std::net::Udp",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "std::fs",
    "std::thread",
    "Instant::now",
    "SystemTime::now",
    "crate::clock",
    "crate::shard",
    "crate::control",
    "crate::store",
    "tokio",
];

/// The layers, lowest first: a module may import from its own layer and those below.
const LAYERS: &[&[&str]] = &[
    &["limits", "identity", "clock", "ratelog"],
    &["codec", "audit"],
    &["router", "acl", "quota"],
    &["auth", "plane"],
    &["broker"],
    &["transport", "store", "config"],
    &["control"],
    &["shard"],
    &["cli"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("src is readable") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(src()).expect("under src").to_string_lossy().replace('\\', "/")
}

/// The file's code without comments and without its trailing `#[cfg(test)] mod tests`.
fn code_of(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.trim() == "#[cfg(test)]" && lines.get(i + 1).is_some_and(|n| n.starts_with("mod tests")) {
            break;
        }
        let t = l.trim_start();
        if t.starts_with("//") {
            continue;
        }
        out.push(l.split(" // ").next().unwrap_or(l).to_string());
    }
    out
}

fn is_test_file(rel: &str) -> bool {
    rel.ends_with("/tests.rs") || rel.ends_with("/testing.rs")
}

#[test]
fn sans_io_modules_do_no_io() {
    let mut found = Vec::new();
    for f in rust_files(&src()) {
        let r = rel(&f);
        let covered = SANS_IO.iter().any(|m| r == *m || r.starts_with(&format!("{m}/")));
        if !covered || is_test_file(&r) {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("readable");
        for line in code_of(&text) {
            for bad in FORBIDDEN {
                if line.contains(bad) {
                    found.push(format!("src/{r}: `{bad}` in: {}", line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "I/O in sans-IO modules:\n{}", found.join("\n"));
}

/// Top-level module of a file (`broker/conn.rs` -> `broker`).
fn top(rel: &str) -> String {
    rel.split('/').next().unwrap_or(rel).trim_end_matches(".rs").to_string()
}

/// Which top-level modules each top-level module imports from (`crate::x`), with a file
/// that does it.
fn imports() -> BTreeMap<String, BTreeMap<String, String>> {
    let mut g: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for f in rust_files(&src()) {
        let r = rel(&f);
        if is_test_file(&r) || r == "lib.rs" || r == "main.rs" {
            continue;
        }
        let from = top(&r);
        let text = std::fs::read_to_string(&f).expect("readable");
        for line in code_of(&text) {
            let mut rest = line.as_str();
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let to: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !to.is_empty() && to != from {
                    g.entry(from.clone()).or_default().entry(to).or_insert_with(|| r.clone());
                }
            }
        }
    }
    g
}

#[test]
fn no_import_circles_and_few_upward_imports() {
    let g = imports();
    // A circle: some module reaches itself.
    for start in g.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((m, path)) = stack.pop() {
            for next in g.get(&m).into_iter().flat_map(|e| e.keys()) {
                if next == start {
                    let files: Vec<String> = path
                        .windows(2)
                        .map(|w| g[&w[0]][&w[1]].clone())
                        .chain([g[&m][next].clone()])
                        .collect();
                    panic!("import circle: {} -> {start} (files: {})", path.join(" -> "), files.join(", "));
                }
                if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    let layer = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
    let mut upward = Vec::new();
    for (from, tos) in &g {
        let lf = layer(from).unwrap_or_else(|| panic!("module `{from}` is in no layer of tests/tidy.rs"));
        for (to, file) in tos {
            let lt = layer(to).unwrap_or_else(|| panic!("module `{to}` is in no layer of tests/tidy.rs"));
            if lt > lf {
                upward.push(format!("{from} -> {to} (src/{file})"));
            }
        }
    }
    #[allow(clippy::absurd_extreme_comparisons)] // The ratchet is at 0 now; it may not stay.
    let within = upward.len() <= UPWARD_IMPORTS_MAX;
    assert!(
        within,
        "{} imports run from a lower layer to a higher one (at most {UPWARD_IMPORTS_MAX}):\n{}",
        upward.len(),
        upward.join("\n")
    );
}

/// Functions as (name, first line, length in lines), found by the rustfmt layout: a `fn` line
/// and the first closing brace at its indentation.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let indent = l.len() - t.len();
        let sig = t
            .trim_start_matches("pub ")
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("const ")
            .trim_start_matches("async ")
            .trim_start_matches("unsafe ");
        let Some(rest) = sig.strip_prefix("fn ") else { continue };
        if l.trim_end().ends_with(';') {
            continue;
        }
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let close = format!("{}}}", " ".repeat(indent));
        let end = (i..lines.len()).find(|&j| lines[j] == close || (j == i && l.trim_end().ends_with('}')));
        if let Some(end) = end {
            out.push((name, i + 1, end - i + 1));
        }
    }
    out
}

#[test]
fn files_and_functions_fit_on_a_screen() {
    let mut long = Vec::new();
    for f in rust_files(&src()) {
        let r = rel(&f);
        let text = std::fs::read_to_string(&f).expect("readable");
        let n = text.lines().count();
        if n > FILE_LINES_MAX {
            long.push(format!("src/{r}: {n} lines (at most {FILE_LINES_MAX})"));
        }
        for (name, at, len) in functions(&text) {
            if len > FN_LINES_MAX {
                long.push(format!("src/{r}:{at}: fn {name} is {len} lines (at most {FN_LINES_MAX})"));
            }
        }
    }
    assert!(long.is_empty(), "too long:\n{}", long.join("\n"));
}

#[test]
fn the_checks_see_what_they_check() {
    // The function finder finds a known long function and the import graph a known edge, so
    // a change in layout that blinds them fails here instead of passing silently.
    let text = std::fs::read_to_string(src().join("broker/publish.rs")).expect("readable");
    assert!(functions(&text).iter().any(|(n, _, len)| n == "handle_publish" && *len > 20));
    assert!(imports()["shard"].contains_key("broker"));
    assert!(code_of("a\n// b\n#[cfg(test)]\nmod tests {\nc\n}\n") == ["a"]);
}

//! The layering rule of `src/lib.rs`, checked on the source: engine ← server ← cli.
//!
//! * no module of `engine` names anything in `server` or `cli`, and none of `server` names `cli`;
//! * no import circles: the "uses" graph between modules (a module names an item of another,
//!   by a `use` or an inline `crate::`/`super::`/`self::` path) has no cycle. A child naming its
//!   own parent counts too: a parent that declares and calls its children must not be called
//!   back by them.
//!
//! Module paths come from file paths (`engine/mod.rs` is `engine`, `engine/scale.rs` is
//! `engine::scale`); `#[cfg(test)]` blocks and comments are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `use` trees and inline paths of one file's code, as absolute module-path segments.
fn referenced_paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let resolve = |segments: &[&str]| -> Option<Vec<String>> {
        let mut base: Vec<String> = match *segments.first()? {
            "crate" => Vec::new(),
            "self" | "super" => module.to_vec(),
            _ => return None, // another crate
        };
        let mut rest = &segments[1..];
        if segments[0] == "super" {
            base.pop();
            while rest.first() == Some(&"super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        base.extend(rest.iter().map(|s| s.to_string()));
        Some(base)
    };
    // use trees: `use a::{b, c::{d, e}};` → a::b, a::c::d, a::c::e
    fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
        let tree = tree.trim();
        match tree.find('{') {
            None => out.push(format!("{prefix}{}", tree.split(" as ").next().unwrap_or("").trim())),
            Some(open) => {
                let head = &tree[..open];
                let inner = &tree[open + 1..tree.rfind('}').expect("balanced use tree")];
                let (mut depth, mut start) = (0, 0);
                for (i, ch) in inner.char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            expand(&format!("{prefix}{head}"), &inner[start..i], out);
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                if !inner[start..].trim().is_empty() {
                    expand(&format!("{prefix}{head}"), &inner[start..], out);
                }
            }
        }
    }
    // `use` statements start a line (possibly `pub use`, `pub(crate) use`)
    let lines: Vec<&str> = code.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let t = t.strip_prefix("pub ").or_else(|| t.strip_prefix("pub(crate) ")).unwrap_or(t);
        let Some(tree) = t.strip_prefix("use ") else { continue };
        let mut statement = tree.to_string();
        for next in &lines[i + 1..] {
            if statement.contains(';') {
                break;
            }
            statement.push_str(next);
        }
        let Some(end) = statement.find(';') else { continue };
        let mut paths = Vec::new();
        expand("", &statement[..end], &mut paths);
        for p in paths {
            let segs: Vec<&str> = p.split("::").map(str::trim).filter(|s| !s.is_empty() && *s != "*").collect();
            out.extend(resolve(&segs));
        }
    }
    // inline paths: crate::a::b(…), super::x::Y
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let i = from + i;
            from = i + start.len();
            if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':') {
                continue;
            }
            let path: String =
                code[i..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            out.extend(resolve(&segs));
        }
    }
    out
}

/// The code of a file without comments and without its `#[cfg(test)]` part.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// Module path → the modules it names (never itself).
fn uses_graph(files: &BTreeMap<Vec<String>, String>) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules: BTreeSet<Vec<String>> = files.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, text) in files {
        let mut targets = BTreeSet::new();
        for path in referenced_paths(module, &code(text)) {
            // the longest prefix that is a module
            let target = (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p));
            if let Some(t) = target.filter(|t| t != module) {
                targets.insert(t);
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// One cycle of the graph, if there is one.
fn find_cycle(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit(
        n: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c: Vec<String> = stack[from..].iter().map(|s| s.join("::")).collect();
                    c.push(m.join("::"));
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn crate_files() -> BTreeMap<Vec<String>, String> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                walk(&path, &[prefix, &[name]].concat(), out);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                let module = match stem {
                    "main" => continue,
                    "lib" | "mod" => prefix.to_vec(),
                    s => [prefix, &[s.to_string()]].concat(),
                };
                out.insert(module, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &[], &mut files);
    files
}

#[test]
fn layers_depend_one_way() {
    let files = crate_files();
    assert!(files.len() > 30, "read {} modules", files.len());
    let graph = uses_graph(&files);
    let layer = |m: &Vec<String>| m.first().cloned().unwrap_or_default();
    let mut wrong = Vec::new();
    for (from, targets) in &graph {
        for to in targets {
            let allowed = match layer(from).as_str() {
                "engine" => !["server", "cli"].contains(&layer(to).as_str()),
                "server" => layer(to) != "cli",
                _ => true,
            };
            if !allowed {
                wrong.push(format!("{} → {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(wrong.is_empty(), "a layer names a layer above it (engine ← server ← cli):\n{}", wrong.join("\n"));
    // the graph is not empty: the engine is used by the server, the server by the cli
    let uses = |a: &str, b: &str| graph.iter().any(|(f, t)| layer(f) == a && t.iter().any(|m| layer(m) == b));
    assert!(uses("server", "engine") && uses("cli", "server") && uses("cli", "engine"));
}

#[test]
fn no_import_circles() {
    let graph = uses_graph(&crate_files());
    if let Some(cycle) = find_cycle(&graph) {
        panic!("modules that name each other in a circle: {}", cycle.join(" → "));
    }
}

#[test]
fn the_check_sees_circles_and_nested_use_trees() {
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let mut files = BTreeMap::new();
    files.insert(m("a"), "pub mod b;\nuse self::b::{c::{D, E as F}, G};\n".to_string());
    files.insert(m("a::b"), "pub fn f() { super::helper(); }\n".to_string());
    files.insert(m("a::b::c"), "// use crate::x;\n".to_string());
    files.insert(m("x"), "#[cfg(test)]\nuse crate::a;\n".to_string());
    let g = uses_graph(&files);
    assert_eq!(g[&m("a")], [m("a::b"), m("a::b::c")].into_iter().collect());
    assert!(g[&m("a::b::c")].is_empty() && g[&m("x")].is_empty(), "comments and tests are left out");
    let cycle = find_cycle(&g).expect("a → a::b → a");
    assert!(cycle.contains(&"a".to_string()) && cycle.contains(&"a::b".to_string()), "{cycle:?}");
    files.insert(m("a::b"), "pub fn f() {}\n".to_string());
    assert_eq!(find_cycle(&uses_graph(&files)), None);
}

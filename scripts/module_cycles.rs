//! Fails when the modules of a crate depend on each other in a cycle.
//!
//! `make lint` compiles this file with plain `rustc` (no dependency, about a second) and runs
//! it over `crates/*/src`. For each crate it reads every module file, takes the modules each
//! one names (`use crate::a::b`, `crate::a::f(..)`, `super::x`, `use child::..`) as edges, and
//! looks for a cycle. A module contains its children, so naming `a` from outside it reaches
//! `a::b` too (a child naming its own parent is not expanded). Test code (`#[cfg(test)]` and everything after it in a file) and
//! comments are skipped. Edges to the crate root are not counted: `lib.rs` re-exports the
//! crate's API and declares its modules, so it is the top of every crate by construction.
//!
//! Usage: `module_cycles DIR...` where each DIR is a crate's `src`; exit 1 on a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut failed = false;
    for dir in std::env::args().skip(1) {
        let modules = collect(Path::new(&dir));
        let graph = edges(&modules);
        match find_cycle(&graph) {
            Some(cycle) => {
                eprintln!("{dir}: module cycle: {}", cycle.join(" -> "));
                failed = true;
            }
            None => println!("{dir}: {} modules, no cycle", modules.len()),
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Module path (`a::b`, root is empty) → its source without comments and test code.
fn collect(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<PathBuf> = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap_or(&path).with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod")) {
                parts.pop();
            }
            if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
                parts.clear();
            }
            if parts.len() == 1 && path.parent() == Some(src) && is_bin_dir(&parts[0]) {
                continue;
            }
            let text = fs::read_to_string(&path).unwrap_or_default();
            out.insert(parts.join("::"), strip(&text));
        }
    }
    out
}

fn is_bin_dir(name: &str) -> bool {
    name == "bin"
}

/// The code of a file without comment lines and without its test module(s).
fn strip(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        let line = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        code.push_str(line);
        code.push('\n');
    }
    code
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The path segments at the start of `s` (`a::b::{..}` gives `a`, `b`).
fn segments(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        out.push(rest[..end].to_string());
        match rest[end..].strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    out
}

/// The longest known module that `base` + `path` names.
fn resolve(modules: &BTreeMap<String, String>, base: &[String], path: &[String]) -> Option<String> {
    let mut best = None;
    let mut cur: Vec<String> = base.to_vec();
    if modules.contains_key(&cur.join("::")) {
        best = Some(cur.join("::"));
    }
    for seg in path {
        cur.push(seg.clone());
        let key = cur.join("::");
        if modules.contains_key(&key) {
            best = Some(key);
        } else {
            break;
        }
    }
    best
}

/// Every path that follows `prefix` in `code`, braces expanded one level.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find(prefix) {
        let at = from + i;
        from = at + prefix.len();
        if at > 0 && code[..at].chars().next_back().is_some_and(|c| is_ident(c) || c == ':') {
            continue;
        }
        let rest = &code[from..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = 0;
            for (j, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => {
                        out.push(segments(inner[item_start..j].trim()));
                        item_start = j + 1;
                    }
                    _ => {}
                }
                if depth == 0 {
                    out.push(segments(inner[item_start..j].trim()));
                    break;
                }
            }
        } else {
            out.push(segments(rest));
        }
    }
    out
}

fn edges(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, code) in modules {
        let me: Vec<String> = if name.is_empty() { vec![] } else { name.split("::").map(String::from).collect() };
        let mut targets = BTreeSet::new();
        for path in paths_after(code, "crate::") {
            targets.extend(resolve(modules, &[], &path));
        }
        for path in paths_after(code, "super::") {
            let mut base = me.clone();
            base.pop();
            let mut path = path;
            while path.first().map(String::as_str) == Some("super") {
                base.pop();
                path.remove(0);
            }
            targets.extend(resolve(modules, &base, &path));
        }
        // `use child::..` and `use self::child::..`: a module's own children.
        for stmt in code.split(';') {
            let stmt = stmt.trim();
            let Some(u) = stmt.find("use ") else { continue };
            if !stmt[..u].trim().is_empty() && !stmt[..u].trim().starts_with("pub") {
                continue;
            }
            let path = stmt[u + 4..].trim();
            let path = path.strip_prefix("self::").unwrap_or(path);
            let segs = segments(path);
            if let Some(first) = segs.first() {
                let mut child = me.clone();
                child.push(first.clone());
                if modules.contains_key(&child.join("::")) {
                    targets.extend(resolve(modules, &me, &segs));
                }
            }
        }
        // A module contains its children: depending on `a` from outside it reaches `a::b` too
        // (`a::b` using its own ancestor `a` is not expanded).
        let inside = |m: &str| name == m || name.starts_with(&format!("{m}::"));
        let reached: Vec<String> = targets
            .iter()
            .filter(|t| !t.is_empty() && !inside(t))
            .flat_map(|t| modules.keys().filter(move |k| k.starts_with(&format!("{t}::"))).cloned())
            .collect();
        targets.extend(reached);
        targets.remove(name);
        targets.remove("");
        graph.insert(name.clone(), targets);
    }
    graph
}

/// A cycle as module names, first repeated last; `None` when the graph has none.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // 0 unvisited, 1 on the stack, 2 done.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    for start in graph.keys() {
        if state.get(start.as_str()).copied().unwrap_or(0) != 0 {
            continue;
        }
        let mut stack: Vec<(&str, Vec<&str>)> =
            vec![(start.as_str(), graph[start].iter().map(String::as_str).collect())];
        state.insert(start, 1);
        while let Some((node, next)) = stack.last_mut() {
            let node = *node;
            match next.pop() {
                Some(n) => match state.get(n).copied().unwrap_or(0) {
                    0 => {
                        state.insert(n, 1);
                        let outs = graph.get(n).map(|s| s.iter().map(String::as_str).collect()).unwrap_or_default();
                        stack.push((n, outs));
                    }
                    1 => {
                        let from = stack.iter().position(|(m, _)| *m == n).unwrap_or(0);
                        let mut cycle: Vec<String> = stack[from..].iter().map(|(m, _)| m.to_string()).collect();
                        cycle.push(n.to_string());
                        return Some(cycle);
                    }
                    _ => {}
                },
                None => {
                    state.insert(node, 2);
                    stack.pop();
                }
            }
        }
    }
    None
}

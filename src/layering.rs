//! The map in `lib.rs` holds in the code: at every level of the module
//! tree, no module depends, even through others, on a sibling that depends
//! on it (`store/sqlite/ops.rs` may not need `store/sqlite/tx.rs` if
//! `tx.rs` needs `ops.rs`, nor `config` need `bench` if `bench` needs
//! `config`).
//!
//! The scan reads paths as written (`crate::a::b`, `super::x`, `self::y`,
//! `use` groups in braces) in non-test code; a module depends on a sibling
//! when a file inside it names something inside the other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every source file's module path (`src/store/mod.rs` → `store`), and its text.
fn sources() -> Vec<(Module, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut pending = vec![src.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ reads").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).expect("under src/");
            let mut module: Module = relative
                .iter()
                .map(|part| part.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            if module.last().is_some_and(|last| last == "mod") {
                module.pop();
            }
            if matches!(module.as_slice(), [only] if only == "lib" || only == "main" || only == "layering")
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a source file");
            let code = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or_default()
                .to_owned();
            found.push((module, code));
        }
    }
    found
}

fn identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The paths `text` names after `base` (what follows `crate::`, say): a
/// chain of identifiers, or a `{…}` group of such paths, recursively.
fn paths_after(base: &Module, text: &str, out: &mut Vec<Module>) {
    let mut path = base.clone();
    let mut rest = text;
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut start = 0;
            for (at, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' | ',' if depth == 1 => {
                        let item = group[start..at].trim();
                        if !item.is_empty() && item != "self" {
                            paths_after(&path, item, out);
                        }
                        start = at + 1;
                        if c == '}' {
                            break;
                        }
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            out.push(path);
            return;
        }
        let name = identifier(rest);
        if name.is_empty() {
            break;
        }
        path.push(name.to_owned());
        rest = &rest[name.len()..];
        match rest.strip_prefix("::") {
            Some(after) => rest = after,
            None => break,
        }
    }
    out.push(path);
}

/// The modules `code` names, as absolute paths (not yet cut to modules).
fn named(module: &Module, code: &str) -> Vec<Module> {
    let mut out = Vec::new();
    // `super::` in `a/b.rs` and in `a/b/mod.rs` alike names `a`.
    let parent: Module = module[..module.len().saturating_sub(1)].to_vec();
    for (at, _) in code.match_indices("crate::") {
        paths_after(&Vec::new(), &code[at + "crate::".len()..], &mut out);
    }
    for (at, _) in code.match_indices("super::") {
        let before = code[..at].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue; // `super::super::` is read from its first `super`
        }
        let mut base = parent.clone();
        let mut rest = &code[at + "super::".len()..];
        while let Some(after) = rest.strip_prefix("super::") {
            base.pop();
            rest = after;
        }
        paths_after(&base, rest, &mut out);
    }
    for (at, _) in code.match_indices("self::") {
        let before = code[..at].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        paths_after(module, &code[at + "self::".len()..], &mut out);
    }
    out
}

/// For each module with children: child → the siblings it depends on.
fn sibling_edges() -> BTreeMap<Module, BTreeMap<String, BTreeSet<String>>> {
    let sources = sources();
    let modules: BTreeSet<Module> = sources.iter().map(|(m, _)| m.clone()).collect();
    let mut edges: BTreeMap<Module, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (module, code) in &sources {
        for path in named(module, code) {
            // The longest prefix of `path` that is a module.
            let Some(target) = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|prefix| modules.contains(prefix))
            else {
                continue;
            };
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common < module.len() && common < target.len() {
                edges
                    .entry(module[..common].to_vec())
                    .or_default()
                    .entry(module[common].clone())
                    .or_default()
                    .insert(target[common].clone());
            }
        }
    }
    edges
}

/// Whether `to` is reachable from `from`.
fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut pending = vec![from.to_owned()];
    while let Some(module) = pending.pop() {
        for next in graph.get(&module).into_iter().flatten() {
            if next == to {
                return true;
            }
            if seen.insert(next.clone()) {
                pending.push(next.clone());
            }
        }
    }
    false
}

#[test]
fn no_module_depends_on_a_sibling_that_depends_on_it() {
    let edges = sibling_edges();
    let top = &edges[&Vec::new()];
    assert!(top.len() > 10, "{top:?}");
    assert!(top["engine"].contains("store"), "the scan sees `crate::…`");
    let sqlite = &edges[&vec!["store".to_owned(), "sqlite".to_owned()]];
    assert!(sqlite["tx"].contains("ops"), "the scan sees `super::{{…}}`");
    let mut cycles = Vec::new();
    for (parent, graph) in &edges {
        for (module, named) in graph {
            for next in named {
                if reaches(graph, next, module) {
                    cycles.push(format!(
                        "in {}: {module} -> {next} -> … -> {module}",
                        if parent.is_empty() {
                            "crate".to_owned()
                        } else {
                            parent.join("::")
                        }
                    ));
                }
            }
        }
    }
    assert!(cycles.is_empty(), "{cycles:#?}");
}

//! The import layering of the library: a top-level module (the first path component under
//! `src/`) may only use `crate::` modules at its own layer or below. Keeping the arrows pointing
//! down is what lets a lower stage (the answer extractor, frames) be reused by every stage above
//! it without cycles. A new top-level module fails this test until it is placed in `LAYERS`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Lowest first; layer numbers in messages count from 1, as in the crate doc of `src/lib.rs`
/// (keep the two in step).
const LAYERS: &[&[&str]] = &[
    &["error", "rng", "memory"],
    &["answer", "paths"],
    &["journal", "provenance"],
    &["frame", "track"],
    &["cot"],
    &["data"],
    &["kernels"],
    &["model"],
    &["teacher"],
    &["train"],
    &["eval"],
    &["results"],
    &["lab"],
    &["experiment", "bench"],
    &["script", "notebook"],
    // The binary: main.rs and the clap definitions it declares (`mod cli;`).
    &["main", "cli", "process"],
];

/// Modules on one layer do not use each other, except these (user, used).
const SAME_LAYER_ALLOWED: &[(&str, &str)] = &[("notebook", "script")];

/// Items at the crate root that are not modules: where they are defined.
const ROOT_ITEMS: &[(&str, &str)] = &[("Error", "error"), ("Result", "error"), ("usage", "error"), ("choices", "error")];

/// `lib.rs` declares every module and re-exports from them; it is the root, not a layer.
const ROOT_FILE: &str = "lib";

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module)).map(|i| i + 1)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source with comments and string/char literals blanked out (newlines kept, so byte
/// offsets still give line numbers): doc links and message text are not imports.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = src[i..].find('\n').map_or(b.len(), |j| i + j);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let (mut depth, mut j) = (1, i + 2);
                while j < b.len() && depth > 0 {
                    if b[j..].starts_with(b"/*") {
                        depth += 1;
                        j += 2;
                    } else if b[j..].starts_with(b"*/") {
                        depth -= 1;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                blank(&mut out, i, j);
                i = j;
            }
            b'r' if (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) => {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + 1 + hashes) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let close = format!("\"{}", "#".repeat(hashes));
                let body = i + 2 + hashes;
                let end = src[body..].find(&close).map_or(b.len(), |j| body + j + close.len());
                blank(&mut out, i, end);
                i = end;
            }
            b'"' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                let end = (j + 1).min(b.len());
                blank(&mut out, i, end);
                i = end;
            }
            // A char literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            b'\'' => {
                let end = if b.get(i + 1) == Some(&b'\\') {
                    src[i + 2..].find('\'').map(|j| i + 2 + j + 1)
                } else {
                    let c = src[i + 1..].chars().next();
                    c.and_then(|c| (b.get(i + 1 + c.len_utf8()) == Some(&b'\'')).then(|| i + 2 + c.len_utf8()))
                };
                match end {
                    Some(end) => {
                        blank(&mut out, i, end);
                        i = end;
                    }
                    None => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    String::from_utf8(out).expect("blanking keeps UTF-8 only where whole characters are replaced")
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// Every `crate::<name>` in `code` as (byte offset, name), `crate::{a::x, b}` giving each of
/// `a` and `b`.
fn crate_refs(code: &str) -> Vec<(usize, String)> {
    let mut refs = Vec::new();
    let mut from = 0;
    while let Some(j) = code[from..].find("crate::") {
        let at = from + j;
        from = at + "crate::".len();
        // `$crate::` (macro bodies) and `foo_crate::` are not this crate's module paths.
        if code[..at].ends_with(|c: char| c == '$' || c == '_' || c.is_alphanumeric()) {
            continue;
        }
        let rest = code[from..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let group_at = code.len() - group.len();
            let (mut depth, mut item_start) = (1, 0);
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' | ',' if depth == 1 => {
                        let raw = &group[item_start..k];
                        let item = raw.trim_start();
                        let name = ident_at(item);
                        if !name.is_empty() && name != "self" {
                            refs.push((group_at + item_start + (raw.len() - item.len()), name.to_string()));
                        }
                        item_start = k + 1;
                        if c == '}' {
                            break;
                        }
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                refs.push((at, name.to_string()));
            }
        }
    }
    refs
}

#[test]
fn imports_only_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();

    // Every top-level module must be placed.
    let mut modules = Vec::new();
    for entry in fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if (path.is_dir() || path.extension().is_some_and(|e| e == "rs")) && name != ROOT_FILE {
            modules.push(name);
        }
    }
    modules.sort();
    modules.dedup();
    for m in &modules {
        if layer_of(m).is_none() {
            problems.push(format!("src/{m}: top-level module `{m}` is not in LAYERS in tests/architecture.rs; place it on a layer"));
        }
    }

    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
        let module = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        if module == ROOT_FILE {
            continue;
        }
        let Some(own) = layer_of(&module) else { continue };
        let text = fs::read_to_string(file).unwrap();
        let code = code_only(&text);
        *checked.entry(module.clone()).or_default() += 1;
        for (at, name) in crate_refs(&code) {
            let line = code[..at].matches('\n').count() + 1;
            let shown = format!("src/{}:{line}", rel.display());
            let target = ROOT_ITEMS.iter().find(|(item, _)| *item == name).map_or(name.as_str(), |(_, m)| m);
            let Some(theirs) = layer_of(target) else {
                problems.push(format!("{shown}: {module} uses crate::{name}, which is neither a module in LAYERS nor in ROOT_ITEMS"));
                continue;
            };
            if target == module {
                continue;
            }
            if theirs > own {
                problems.push(format!("{shown}: {module} uses {target} (layer {theirs} above {own})"));
            } else if theirs == own && !SAME_LAYER_ALLOWED.contains(&(module.as_str(), target)) {
                problems.push(format!("{shown}: {module} uses {target} (same layer {own}; not in SAME_LAYER_ALLOWED)"));
            }
        }
    }
    assert!(checked.len() >= 10, "found only {checked:?} under {}: is this the crate root?", src.display());
    assert!(problems.is_empty(), "{} layering violation(s):\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn the_reference_scanner_sees_groups_and_ignores_comments_and_strings() {
    let code = code_only(
        "use crate::{data::{A, B}, eval::x, self};\n// crate::results\nlet s = \"crate::model\";\nlet c = '\"'; crate::teacher::f();\nmacro_rules! m { () => { $crate::error::E } }\n",
    );
    let names: Vec<(usize, String)> = crate_refs(&code).into_iter().map(|(at, n)| (code[..at].matches('\n').count() + 1, n)).collect();
    let want = [(1, "data"), (1, "eval"), (4, "teacher")];
    assert_eq!(names, want.map(|(l, n)| (l, n.to_string())));
}

/// The modules named in backticks (or rustdoc links) in `text`, in order.
fn module_names(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(|m| m.to_string()).collect()
}

/// The layer table in docs/architecture.md and the crate doc of src/lib.rs say what `LAYERS`
/// says: one table, checked, not three copies that drift.
#[test]
fn the_documented_layer_tables_match_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let rows: Vec<Vec<String>> = doc
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() > 3 && cells[1].parse::<usize>().is_ok()).then(|| module_names(cells[2]))
        })
        .collect();
    let want: Vec<Vec<String>> = LAYERS.iter().map(|l| l.iter().map(|m| m.to_string()).collect()).collect();
    assert_eq!(rows, want, "docs/architecture.md's layer table differs from LAYERS");
    // lib.rs: numbered items `//! N. [`a`] ...; [`b`]: ...` (continuation lines included) for every
    // library layer (the binary's layer is the closing sentence, not an item).
    let lib = fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let mut items: Vec<String> = Vec::new();
    for line in lib.lines().filter_map(|l| l.strip_prefix("//!")) {
        let t = line.trim_start();
        let numbered = t.split_once(". ").is_some_and(|(n, _)| n.parse::<usize>().is_ok());
        if numbered {
            items.push(t.split_once(". ").unwrap().1.to_string());
        } else if !t.is_empty() && line.starts_with("    ") && !items.is_empty() {
            items.last_mut().unwrap().push_str(t);
        } else if t.is_empty() && !items.is_empty() {
            break;
        }
    }
    let linked: Vec<Vec<String>> =
        items.iter().map(|i| i.split("[`").skip(1).filter_map(|m| m.split_once("`]").map(|(n, _)| n.to_string())).collect()).collect();
    assert_eq!(linked, want[..want.len() - 1].to_vec(), "src/lib.rs's crate doc differs from LAYERS");
}

/// The module paths (`teacher::batch`) a file's code names through `crate::` or `super::`, each
/// resolved to the longest module path that exists; `crate::a::{b::x, c}` names `a::b` and `a::c`.
fn file_refs(code: &str, this: &[String], modules: &std::collections::BTreeSet<Vec<String>>) -> std::collections::BTreeSet<Vec<String>> {
    let mut out = std::collections::BTreeSet::new();
    let resolve = |mut p: Vec<String>| {
        while !p.is_empty() && !modules.contains(&p) {
            p.pop();
        }
        p
    };
    for (prefix, base) in [("crate::", Vec::new()), ("super::", this[..this.len().saturating_sub(1)].to_vec())] {
        let mut from = 0;
        while let Some(j) = code[from..].find(prefix) {
            let at = from + j;
            from = at + prefix.len();
            if code[..at].ends_with(|c: char| c == '$' || c == '_' || c == ':' || c.is_alphanumeric()) {
                continue;
            }
            let path: String = code[from..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            let mut head: Vec<String> = base.clone();
            head.extend(path.split("::").filter(|s| !s.is_empty()).map(str::to_string));
            let rest = &code[from + path.len()..];
            match rest.strip_prefix('{') {
                Some(group) => {
                    let inner: String = group.chars().take_while(|c| *c != '}').collect();
                    for item in inner.split(',') {
                        let mut p = head.clone();
                        p.extend(item.trim().split("::").map(|s| ident_at(s.trim()).to_string()).filter(|s| !s.is_empty() && s != "self"));
                        out.insert(resolve(p));
                    }
                }
                None => {
                    out.insert(resolve(head));
                }
            }
        }
    }
    out.retain(|p| !p.is_empty() && p.as_slice() != this && !this.starts_with(p));
    out
}

/// No two files import each other, directly or round a loop (the house rule: a type lives with
/// what it belongs to), except the model families, which the transformer dispatches to and which
/// build on its types.
#[test]
fn no_import_circle_between_files_outside_the_model_families() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let module_of = |p: &Path| -> Vec<String> {
        let rel = p.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().to_string()).collect();
        if parts.last().is_some_and(|l| l == "mod") {
            parts.pop();
        }
        parts
    };
    let modules: std::collections::BTreeSet<Vec<String>> = files.iter().map(|p| module_of(p)).collect();
    let mut edges: BTreeMap<Vec<String>, std::collections::BTreeSet<Vec<String>>> = BTreeMap::new();
    for f in &files {
        let text = fs::read_to_string(f).unwrap();
        // Unit tests may reach anywhere in their module's neighbourhood.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        let m = module_of(f);
        edges.insert(m.clone(), file_refs(&code_only(text), &m, &modules));
    }
    // Every cycle shows up as a file that reaches itself.
    let mut circles = Vec::new();
    for start in edges.keys() {
        let (mut seen, mut todo) = (std::collections::BTreeSet::new(), edges[start].iter().cloned().collect::<Vec<_>>());
        while let Some(m) = todo.pop() {
            if seen.insert(m.clone()) {
                todo.extend(edges.get(&m).into_iter().flatten().cloned());
            }
        }
        if seen.contains(start) && !(start.len() >= 2 && start[0] == "model" && ["family", "config", "transformer"].contains(&start[1].as_str())) {
            circles.push(start.join("::"));
        }
    }
    assert!(circles.is_empty(), "files in an import circle (each reaches itself through its imports): {}", circles.join(", "));
}

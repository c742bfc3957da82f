//! The code's layout, checked: no import circle among the files of `src/`
//! (each file's arrows point down), and SQL only under `src/warehouse/`.
//! Reads the sources as text; a file is a node, a path to an item of
//! another file (`crate::…`, `super::…`, a child module's name) an arrow.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file of the library (not the binary's `main.rs`).
fn library_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("src/main.rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    files.sort();
    files
}

/// The module path of a file: `src/api/mod.rs` is `["api"]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and without its unit tests.
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("read");
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string (a URL) is kept: it is not a comment.
            Some(at) if l[..at].matches('"').count() % 2 == 0 => &l[..at],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The identifier segments of a path that starts at `text[0]`: `a::b::C`.
fn segments(text: &str) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut rest = text;
    let mut used = 0;
    loop {
        let len = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if len == 0 {
            break;
        }
        out.push(rest[..len].to_owned());
        used += len;
        rest = &rest[len..];
        match rest.strip_prefix("::") {
            Some(r) if r.starts_with(is_ident) => {
                used += 2;
                rest = r;
            }
            _ => break,
        }
    }
    (out, used)
}

/// The byte ranges of inline `mod NAME { … }` blocks, where `super` means
/// the file's own module.
fn inline_modules(code: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("mod ").map(|i| i + from) {
        from = at + 4;
        // `mod $name {` in a macro is an inline module too.
        let start = from + usize::from(code[from..].starts_with('$'));
        let (name, used) = segments(&code[start..]);
        let rest = code[start + used..].trim_start();
        if name.len() != 1 || !rest.starts_with('{') {
            continue;
        }
        let open = code.len() - rest.len();
        let mut depth = 0usize;
        for (i, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        out.push(open..open + i);
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Every path a file names, from the crate root: `crate::`, `super::`,
/// `self::`, a child module's name, and the items of `{…}` groups.
fn paths_named(module: &[String], code: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let inline = inline_modules(code);
    let mut found = Vec::new();
    let chars: Vec<(usize, char)> = code.char_indices().collect();
    for (i, &(at, c)) in chars.iter().enumerate() {
        let before = i.checked_sub(1).map(|j| chars[j].1);
        if !is_ident(c) || before.is_some_and(|b| is_ident(b) || b == ':') {
            continue;
        }
        let (segs, used) = segments(&code[at..]);
        let Some(first) = segs.first() else { continue };
        let mut base: Vec<String> = match first.as_str() {
            "crate" => Vec::new(),
            "self" => module.to_vec(),
            "super" if inline.iter().any(|r| r.contains(&at)) => module.to_vec(),
            "super" => module[..module.len().saturating_sub(1)].to_vec(),
            name if children.contains(name) && segs.len() > 1 => module.to_vec(),
            _ => continue,
        };
        let mut rest = &segs[usize::from(first == "crate" || first == "self" || first == "super")..];
        while rest.first().is_some_and(|s| s == "super") {
            base.pop();
            rest = &rest[1..];
        }
        base.extend(rest.iter().cloned());
        // `prefix::{a, b::c}`
        let after = &code[at + used..];
        if let Some(group) = after.strip_prefix("::{") {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let (item_segs, _) = segments(item.trim());
                if item_segs.first().is_some_and(|s| s != "self") {
                    let mut p = base.clone();
                    p.extend(item_segs);
                    found.push(p);
                }
            }
        }
        found.push(base);
    }
    found
}

/// The file of the longest module prefix of `path`.
fn resolve<'a>(path: &[String], modules: &'a BTreeMap<Vec<String>, PathBuf>) -> Option<&'a PathBuf> {
    (0..=path.len()).rev().find_map(|n| modules.get(&path[..n]))
}

#[test]
fn no_file_of_src_is_part_of_an_import_circle() {
    let files = library_files();
    let modules: BTreeMap<Vec<String>, PathBuf> = files.iter().map(|f| (module_of(f), f.clone())).collect();
    let mut arrows: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for file in &files {
        let module = module_of(file);
        let children: BTreeSet<String> = modules
            .keys()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(&module))
            .filter_map(|m| m.last().cloned())
            .collect();
        let code = code_of(file);
        let to = arrows.entry(file.clone()).or_default();
        for path in paths_named(&module, &code, &children) {
            if let Some(target) = resolve(&path, &modules) {
                if target != file && !module.is_empty() {
                    to.insert(target.clone());
                }
            }
        }
    }
    // Depth-first search for a back edge; report the circle it closes.
    fn visit(
        file: &PathBuf,
        arrows: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        done: &mut BTreeSet<PathBuf>,
        stack: &mut Vec<PathBuf>,
        circles: &mut Vec<String>,
    ) {
        if done.contains(file) {
            return;
        }
        if let Some(at) = stack.iter().position(|f| f == file) {
            let names: Vec<String> = stack[at..]
                .iter()
                .chain(std::iter::once(file))
                .map(|f| f.strip_prefix(src()).unwrap_or(f).display().to_string())
                .collect();
            circles.push(names.join(" -> "));
            return;
        }
        stack.push(file.clone());
        for next in arrows.get(file).into_iter().flatten() {
            visit(next, arrows, done, stack, circles);
        }
        stack.pop();
        done.insert(file.clone());
    }
    let (mut done, mut circles) = (BTreeSet::new(), Vec::new());
    for file in arrows.keys() {
        visit(file, &arrows, &mut done, &mut Vec::new(), &mut circles);
    }
    assert!(
        circles.is_empty(),
        "import circles among src/ files:\n{}",
        circles.join("\n")
    );
    // The surfaces sit on the frame and know nothing of each other.
    let api = src().join("api");
    for surface in ["citizens.rs", "admin.rs", "auditor.rs"] {
        let to = &arrows[&api.join(surface)];
        for other in ["citizens.rs", "admin.rs", "auditor.rs", "mod.rs"] {
            assert!(
                !to.contains(&api.join(other)),
                "api/{surface} imports api/{other}"
            );
        }
    }
}

#[test]
fn sql_is_written_only_under_src_warehouse() {
    const STATEMENTS: [&str; 6] = ["SELECT ", "INSERT ", "UPDATE ", "DELETE ", "LISTEN ", "COPY "];
    let warehouse = src().join("warehouse");
    let mut found = Vec::new();
    for file in library_files()
        .iter()
        .chain(std::iter::once(&src().join("main.rs")))
    {
        if file.starts_with(&warehouse) {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read");
        // The contents of each string literal.
        for (n, literal) in text.split('"').enumerate().filter(|(n, _)| n % 2 == 1) {
            if STATEMENTS
                .iter()
                .any(|s| literal.trim_start().starts_with(s) || literal.contains(&format!("\n{s}")))
            {
                found.push(format!("{}: literal {n}: {literal:.40}", file.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "SQL outside src/warehouse/:\n{}",
        found.join("\n")
    );
}

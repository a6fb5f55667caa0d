//! Every relative link of README.md and docs/**/*.md points at a file of the
//! repository, and every `docs/*.md` that the sources cite exists.
//!
//! Links are found by a CommonMark parser (`pulldown-cmark`), so links in
//! code blocks and code spans are not links; `path#anchor` is checked for
//! `path`; web links (`scheme://`, `mailto:`) and same-file anchors are left
//! alone. A failure names the file, the line and the link.

use pulldown_cmark::{Event, Options, Parser, Tag};
use std::path::{Component, Path, PathBuf};
use tern_tests::workspace_root;

/// `dir` and its subfolders' files whose name ends in one of `exts`, sorted.
fn files_under(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') {
                files_under(&p, exts, out);
            }
        } else if exts.iter().any(|e| name.ends_with(e)) {
            out.push(p);
        }
    }
}

/// The markdown files whose links are checked.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    files_under(&root.join("docs"), &[".md"], &mut files);
    files
}

/// `(line, destination)` of every link and image in `text`.
fn links(text: &str) -> Vec<(usize, String)> {
    Parser::new_ext(text, Options::all())
        .into_offset_iter()
        .filter_map(|(event, range)| match event {
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                let line = text[..range.start].matches('\n').count() + 1;
                Some((line, dest_url.into_string()))
            }
            _ => None,
        })
        .collect()
}

/// `path` with `.` and `..` folded away, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Why the link `dest` of `file` is broken, or `None` when it is fine.
fn broken(root: &Path, file: &Path, dest: &str) -> Option<String> {
    if dest.is_empty() {
        return Some("empty link".into());
    }
    if dest.starts_with('#') || dest.contains("://") || dest.starts_with("mailto:") {
        return None;
    }
    let path = dest.split(['#', '?']).next().unwrap_or_default();
    if path.starts_with('/') {
        return Some("absolute path: links must be relative to the file".into());
    }
    let target = normalize(&file.parent().unwrap().join(path));
    if !target.starts_with(root) {
        return Some(format!("{} is outside the repository", target.display()));
    }
    if !target.exists() {
        return Some(format!("{} does not exist", target.display()));
    }
    None
}

#[test]
fn relative_links_in_readme_and_docs_resolve() {
    let root = normalize(&workspace_root());
    let mut bad = Vec::new();
    let mut checked = 0;
    for file in markdown_files(&root) {
        let text = std::fs::read_to_string(&file).unwrap();
        let rel = file.strip_prefix(&root).unwrap().display().to_string();
        for (line, dest) in links(&text) {
            checked += 1;
            if let Some(why) = broken(&root, &file, &dest) {
                bad.push(format!("{rel}:{line}: ({dest}): {why}"));
            }
        }
    }
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
    // README.md and docs/ link to each other; finding none means the parser
    // or the walk is broken, not that the docs are fine.
    assert!(checked > 10, "only {checked} links found");
}

/// `docs/….md` paths named in `text`, with their line numbers.
fn cited_docs(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("docs/") {
            // `docs/` must start a path, not end a longer one (`crate-docs/`).
            let before = rest[..at].chars().next_back();
            let tail = &rest[at..];
            let len = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || "_-./".contains(c)))
                .unwrap_or(tail.len());
            let cited = tail[..len].trim_end_matches('.');
            if cited.ends_with(".md")
                && !before.is_some_and(|c| c.is_ascii_alphanumeric() || "_-/.".contains(c))
            {
                out.push((i + 1, cited.to_owned()));
            }
            rest = &tail[len.max(5)..];
        }
    }
    out
}

#[test]
fn docs_cited_by_the_sources_exist() {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in [
        "crates",
        "tools",
        "tests/src",
        "tests/tests",
        "tests/fixtures",
        "tests/interop",
        "xtask",
        "docs",
    ] {
        files_under(&root.join(dir), &[".rs", ".md", ".py"], &mut files);
    }
    files.push(root.join("README.md"));
    let mut bad = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let rel = file.strip_prefix(&root).unwrap().display().to_string();
        for (line, cited) in cited_docs(&text) {
            checked += 1;
            if !root.join(&cited).is_file() {
                bad.push(format!("{rel}:{line}: {cited} does not exist"));
            }
        }
    }
    assert!(bad.is_empty(), "cited docs missing:\n{}", bad.join("\n"));
    assert!(checked > 10, "only {checked} citations found");
}

#[test]
fn the_checks_catch_what_they_are_for() {
    let root = normalize(&workspace_root());
    let readme = root.join("README.md");
    // Spelled in two pieces so that the citation check does not see it here.
    let missing = concat!("docs", "/missing.md");
    let text = format!(
        "See [a](docs/architecture.md#the-model), [b]({missing}), \
         ![c](../outside.png), [d](/abs.md), [e](https://example.org/x.md), \
         [f](#local).\n\n```\n[g](not/a/link.md)\n```\nand `[h](code/span.md)`.\n"
    );
    let found = links(&text);
    let dests: Vec<&str> = found.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(
        dests,
        [
            "docs/architecture.md#the-model",
            missing,
            "../outside.png",
            "/abs.md",
            "https://example.org/x.md",
            "#local"
        ]
    );
    let verdicts: Vec<bool> = dests
        .iter()
        .map(|d| broken(&root, &readme, d).is_some())
        .collect();
    assert_eq!(verdicts, [false, true, true, true, false, false]);
    assert_eq!(
        cited_docs("a (see docs/formats.md), `docs/gguf.md`.\nno: my-docs/x.md docs/dir/"),
        [
            (1, "docs/formats.md".to_owned()),
            (1, "docs/gguf.md".to_owned())
        ]
    );
}

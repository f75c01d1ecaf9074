//! The layering of `src/lib.rs`'s `# Layout`, checked on the source: which module may
//! import which. A domain module that reaches for an adapter (or an adapter that calls
//! back into the domain) fails here, naming the file, the line and the rule.
//!
//! Every `crate::<module>` path in non-test code counts (`use` lines and inline paths),
//! and so does `super::<module>` where it leaves the current top-level module. Test
//! modules (from `#[cfg(test)] mod` on) may use anything.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layer of each top-level module of the library.
fn layer(module: &str) -> Option<Layer> {
    Some(match module {
        "error" | "model" => Layer::Model,
        "config" => Layer::Config,
        "ports" => Layer::Ports,
        "ingest" | "drain" | "health" | "dsn" | "sender" | "journal" | "retention" | "replay"
        | "export" | "summary" | "publish" | "users" | "mailbox" | "outbound" | "submission"
        | "continuity" | "manage" | "status" | "primary_config" => Layer::Domain,
        // Counters and histograms, and a paced stream; import nothing of ours, so any
        // layer may.
        "metrics" | "paced" => Layer::Ports,
        "backend" | "smtp" | "dns" => Layer::Adapter,
        "serve" | "cli" | "lambda" | "doctor" | "web" | "imap" | "pop3" => Layer::Entry,
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    Model,
    Config,
    Ports,
    Domain,
    Adapter,
    Entry,
}

/// Whether a module of layer `from` may import one of layer `to`.
fn allowed(from: Layer, to: Layer) -> bool {
    use Layer::*;
    match from {
        // The model and the errors are plain data: they import only each other.
        Model => to == Model,
        Config => matches!(to, Model | Config),
        Ports => matches!(to, Model | Config | Ports),
        // The domain: written against the ports, never an adapter or an entry point.
        Domain => matches!(to, Model | Config | Ports | Domain),
        // Adapters implement ports; they never call into the domain.
        Adapter => matches!(to, Model | Config | Ports | Adapter),
        // Entry points are wiring: anything.
        Entry => true,
    }
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`src/backend/aws/s3.rs` -> `backend`).
fn owner(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// Modules named by `crate::` paths in `line` (a `use crate::{a, b}` group names each).
fn imports(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

#[test]
fn modules_import_only_what_their_layer_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut seen = BTreeSet::new();
    for file in &files {
        let Some(module) = owner(&src, file) else {
            continue;
        };
        if matches!(module.as_str(), "lib" | "main") {
            continue;
        }
        let from = layer(&module).unwrap_or_else(|| {
            panic!(
                "{}: module `{module}` has no layer: add it to tests/layout.rs and to the \
                 `# Layout` of src/lib.rs",
                file.display()
            )
        });
        seen.insert(module.clone());
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            let code = line.trim_start();
            // The test module, at the end of a file, may use anything.
            if code.starts_with("#[cfg(test)]")
                && lines
                    .get(n + 1)
                    .is_some_and(|next| next.trim_start().starts_with("mod "))
            {
                break;
            }
            if code.starts_with("//") {
                continue;
            }
            for target in imports(code) {
                if target == module {
                    continue;
                }
                let Some(to) = layer(&target) else {
                    continue; // a macro or an item of lib.rs
                };
                if !allowed(from, to) {
                    violations.push(format!(
                        "{}:{}: {module} ({from:?}) imports {target} ({to:?}): `{}`",
                        file.strip_prefix(&src).unwrap().display(),
                        n + 1,
                        code.trim()
                    ));
                }
            }
        }
    }
    assert!(
        seen.len() >= 15,
        "read too few modules ({seen:?}): is src/ where this test looks?"
    );
    assert!(
        violations.is_empty(),
        "layering broken (see the `# Layout` of src/lib.rs):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_inline_paths() {
    assert_eq!(
        imports("use crate::{backend::Storage, model::Record};"),
        ["backend", "model"]
    );
    assert_eq!(
        imports("let x = crate::journal::is_report(head);"),
        ["journal"]
    );
    assert!(!allowed(Layer::Domain, Layer::Adapter));
    assert!(!allowed(Layer::Adapter, Layer::Domain));
    assert!(allowed(Layer::Entry, Layer::Adapter));
}

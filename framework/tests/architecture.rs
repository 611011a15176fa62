//! The module floors of `trellis`: a module uses only modules on lower
//! floors, so there are no import circles. ARCHITECTURE.md shows the same
//! table; change both together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules by floor, lowest first.
const FLOORS: &[&[&str]] = &[
    &["error", "protocol", "descriptor", "context", "duration", "listen", "secret"],
    &["registry", "telemetry", "metrics"],
    &["transport", "gateway", "admin"],
    &["client", "server"],
    &["codegen", "config", "testing"],
    &["app", "fuzzing"],
];

fn floor(module: &str) -> Option<usize> {
    FLOORS.iter().position(|floor| floor.contains(&module))
}

/// The top-level module a source file belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative.components().next().expect("a component").as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_owned()
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Which top-level modules each module names through `crate::`, outside comments.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let from = module_of(&src, &file);
        if from == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read");
        for line in text.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let preceded_by_ident =
                    line[..at].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
                let name: String =
                    line[at + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !preceded_by_ident && !name.is_empty() && name != from {
                    graph.entry(from.clone()).or_default().insert(name);
                }
            }
        }
        graph.entry(from).or_default();
    }
    graph
}

#[test]
fn every_module_uses_only_lower_floors() {
    let mut wrong = Vec::new();
    for (from, tos) in imports() {
        let Some(own) = floor(&from) else {
            wrong.push(format!("module `{from}` has no floor: add it to FLOORS and ARCHITECTURE.md"));
            continue;
        };
        for to in tos {
            match floor(&to) {
                // Re-exports at the crate root (`crate::Status`, ...) are not modules.
                None if to.chars().next().is_some_and(char::is_uppercase) => {}
                None => wrong.push(format!("`{from}` uses `crate::{to}`, which has no floor")),
                Some(theirs) if theirs >= own => {
                    wrong.push(format!("`{from}` (floor {own}) uses `{to}` (floor {theirs})"))
                }
                Some(_) => {}
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

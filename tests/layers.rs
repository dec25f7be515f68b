//! The layers import downwards only: commands over upkeep over the ingest
//! path and the table catalog over the job spec. A module that reaches up
//! (the catalog calling a command, the trigger loop calling upkeep) is the
//! start of an import circle, and this test names the line.

use std::fs;
use std::path::{Path, PathBuf};

/// Per layer (a folder under `src/`), the layers it may not import from.
const FORBIDDEN: [(&str, &[&str]); 4] = [
    ("config", &["table::tier", "ingest", "upkeep", "cmd"]),
    ("table", &["upkeep", "cmd"]),
    ("ingest", &["upkeep", "cmd"]),
    ("upkeep", &["cmd"]),
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Each `crate::<layer>` a file names, with its line number, outside comments.
fn upward_references(file: &Path, forbidden: &[&str]) -> Vec<String> {
    let text = fs::read_to_string(file).unwrap();
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        for layer in forbidden {
            if code.contains(&format!("crate::{layer}")) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn no_layer_imports_from_a_layer_above_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (layer, forbidden) in FORBIDDEN {
        let mut files = Vec::new();
        sources(&root.join(layer), &mut files);
        assert!(!files.is_empty(), "no sources under src/{layer}");
        for file in files {
            violations.extend(upward_references(&file, forbidden));
        }
    }
    assert!(
        violations.is_empty(),
        "imports from a layer above:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_check_finds_an_upward_import() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.rs");
    fs::write(
        &file,
        "// crate::cmd in a comment is fine\nuse crate::cmd::query::run;\n",
    )
    .unwrap();
    let found = upward_references(&file, &["cmd"]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].ends_with(":2: use crate::cmd::query::run;"));
}

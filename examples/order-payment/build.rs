//! Compiles every `.proto` under `proto/` (`trellis add proto` puts new ones
//! there, so nothing here changes when you add one).

use std::path::{Path, PathBuf};

fn main() {
    let mut protos = Vec::new();
    find_protos(Path::new("proto"), &mut protos);
    protos.sort();
    trellis_build::compile(&protos, &["proto"]);
}

fn find_protos(dir: &Path, protos: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display())).path();
        if path.is_dir() {
            find_protos(&path, protos);
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            protos.push(path);
        }
    }
}

//! `.trellis/manifest.toml`: what `trellis new` and `trellis add` wrote
//! (each file's path and content hash), so that a rerun or `trellis upgrade`
//! updates only the files nobody has changed since.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// Where the manifest lives in a service crate.
pub(crate) const PATH: &str = ".trellis/manifest.toml";

/// What a crate was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    /// The Trellis version the files were rendered from (and Cargo.toml pins).
    pub(crate) trellis_version: String,
    /// What `trellis new` was given.
    pub(crate) service: ServiceRecord,
    /// Every file written, in the order written.
    #[serde(default, rename = "file")]
    pub(crate) files: Vec<FileRecord>,
}

/// The inputs of `trellis new`, from which every template variable follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceRecord {
    pub(crate) name: String,
    pub(crate) package: String,
    pub(crate) description: String,
    pub(crate) port: u16,
    /// The Trellis checkout the crate depends on by path.
    pub(crate) trellis_root: PathBuf,
    /// Whether Cargo.toml has a `[workspace]` table of its own.
    pub(crate) standalone: bool,
}

/// One file written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileRecord {
    /// Relative to the crate, with `/`.
    pub(crate) path: String,
    /// The template it was rendered from; none for a copied file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) template: Option<String>,
    /// For `trellis add proto`: the proto's name and package.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) vars: BTreeMap<String, String>,
    /// `sha256:HEX` of the content written.
    pub(crate) hash: String,
}

impl Manifest {
    /// Reads the manifest of the crate at `dir`; `None` when it has none.
    pub(crate) fn read(dir: &Path) -> Result<Option<Manifest>, Error> {
        let path = dir.join(PATH);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        toml::from_str(&text).map(Some).map_err(|e| {
            Error::usage(format!(
                "{} is damaged: {e}; restore it from version control (trellis upgrade needs it)",
                path.display()
            ))
        })
    }

    /// Writes the manifest into the crate at `dir`.
    pub(crate) fn write(&self, dir: &Path) -> Result<(), Error> {
        let path = dir.join(PATH);
        let body =
            toml::to_string(self).map_err(|e| Error::msg(format!("cannot encode the manifest: {e}")))?;
        let text = format!(
            "# What `trellis new` and `trellis add` wrote, with each file's hash when written.\n\
             # `trellis upgrade` updates only the files whose hash still matches. Keep it in\n\
             # version control; do not edit it.\n\n{body}"
        );
        write_file(&path, &text)
    }

    /// The record of `path`.
    pub(crate) fn file(&self, path: &str) -> Option<&FileRecord> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Records `record`, replacing the record of the same path.
    pub(crate) fn record(&mut self, record: FileRecord) {
        match self.files.iter_mut().find(|f| f.path == record.path) {
            Some(old) => *old = record,
            None => self.files.push(record),
        }
    }
}

/// `sha256:HEX` of `content`.
pub(crate) fn hash(content: &str) -> String {
    let digest = Sha256::digest(content.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A file to write: where, what, and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub(crate) path: String,
    pub(crate) content: String,
    pub(crate) template: Option<String>,
    pub(crate) vars: BTreeMap<String, String>,
}

/// What [`apply`] did (or would do, on a dry run).
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) created: Vec<String>,
    pub(crate) updated: Vec<String>,
    pub(crate) unchanged: Vec<String>,
    /// Files changed since they were written, which differ from the template:
    /// left alone, with the difference.
    pub(crate) conflicts: Vec<(String, String)>,
}

/// Writes `plan` into `dir`, never overwriting what someone changed:
///
/// - a file that does not exist is written;
/// - a file whose content still has the recorded hash is updated;
/// - a file that already has the planned content is only recorded;
/// - any other file is left alone, and its difference from the planned
///   content is returned.
pub(crate) fn apply(
    dir: &Path,
    manifest: &mut Manifest,
    plan: Vec<Planned>,
    dry_run: bool,
) -> Result<Outcome, Error> {
    let mut outcome = Outcome::default();
    for planned in plan {
        let path = dir.join(&planned.path);
        let current = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let recorded = manifest.file(&planned.path).map(|f| f.hash.clone());
        let record = FileRecord {
            path: planned.path.clone(),
            template: planned.template.clone(),
            vars: planned.vars.clone(),
            hash: hash(&planned.content),
        };
        match current {
            None => {
                if !dry_run {
                    write_file(&path, &planned.content)?;
                }
                outcome.created.push(planned.path);
            }
            Some(current) if current == planned.content => outcome.unchanged.push(planned.path),
            Some(current) if recorded.as_deref() == Some(hash(&current).as_str()) => {
                if !dry_run {
                    write_file(&path, &planned.content)?;
                }
                outcome.updated.push(planned.path);
            }
            Some(current) => {
                let diff = similar::TextDiff::from_lines(&current, &planned.content)
                    .unified_diff()
                    .context_radius(3)
                    .header(&format!("{} (yours)", planned.path), &format!("{} (template)", planned.path))
                    .to_string();
                outcome.conflicts.push((planned.path, diff));
                continue;
            }
        }
        manifest.record(record);
    }
    Ok(outcome)
}

/// Writes `content` to `path`, creating its folder, through a temporary
/// file so a reader never sees half a file.
pub(crate) fn write_file(path: &Path, content: &str) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let tmp = path.with_extension("trellis-tmp");
    std::fs::write(&tmp, content).map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            trellis_version: "0.1.0".to_owned(),
            service: ServiceRecord {
                name: "greeter".to_owned(),
                package: "greeter.v1".to_owned(),
                description: "Greets".to_owned(),
                port: 50051,
                trellis_root: PathBuf::from("/trellis"),
                standalone: true,
            },
            files: Vec::new(),
        }
    }

    fn plan(path: &str, content: &str) -> Vec<Planned> {
        vec![Planned {
            path: path.to_owned(),
            content: content.to_owned(),
            template: None,
            vars: BTreeMap::new(),
        }]
    }

    #[test]
    fn untouched_files_are_updated_and_edited_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manifest();
        let out = apply(dir.path(), &mut m, plan("a.txt", "one\n"), false).unwrap();
        assert_eq!(out.created, ["a.txt"]);
        m.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap().unwrap(), m);

        let out = apply(dir.path(), &mut m, plan("a.txt", "two\n"), false).unwrap();
        assert_eq!(out.updated, ["a.txt"]);
        assert_eq!(std::fs::read_to_string(dir.path().join("a.txt")).unwrap(), "two\n");

        std::fs::write(dir.path().join("a.txt"), "mine\n").unwrap();
        let out = apply(dir.path(), &mut m, plan("a.txt", "three\n"), false).unwrap();
        assert_eq!(out.conflicts.len(), 1);
        assert!(out.conflicts[0].1.contains("-mine\n+three\n"), "{}", out.conflicts[0].1);
        assert_eq!(std::fs::read_to_string(dir.path().join("a.txt")).unwrap(), "mine\n");
        assert_eq!(m.file("a.txt").unwrap().hash, hash("two\n"), "the record still names what was written");

        let out = apply(dir.path(), &mut m, plan("a.txt", "mine\n"), true).unwrap();
        assert_eq!(out.unchanged, ["a.txt"]);
    }
}

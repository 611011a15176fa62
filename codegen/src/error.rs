//! Build errors that point at the offending `.proto` line.

use std::fmt;
use std::path::{Path, PathBuf};

use miette::Diagnostic;

/// Why a proto compilation failed.
///
/// `Display` prints one `file:line:column: message` line per problem, the
/// form editors and terminals turn into links, followed by any hint.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
}

#[derive(Debug)]
enum ErrorKind {
    /// The protos did not parse or did not type-check.
    Proto { location: Option<Location>, message: String, help: Option<String> },
    /// Writing the generated code failed.
    Io { path: PathBuf, source: std::io::Error },
    /// A setting of the builder is invalid.
    Config(String),
}

#[derive(Debug)]
struct Location {
    file: String,
    line: usize,
    column: usize,
}

impl Error {
    pub(crate) fn proto(err: protox::Error, includes: &[PathBuf]) -> Self {
        let file = err.file().map(|name| display_path(name, includes));
        let position = err.labels().and_then(|mut labels| labels.next()).and_then(|label| {
            let source = err.source_code()?;
            let contents = source.read_span(label.inner(), 0, 0).ok()?;
            Some((contents.line() + 1, contents.column() + 1))
        });
        let location = file.map(|file| {
            let (line, column) = position.unwrap_or((1, 1));
            Location { file, line, column }
        });
        let help = err.help().map(|help| help.to_string());
        let help = help.or_else(|| {
            err.is_file_not_found().then(|| {
                format!(
                    "the include paths are {}; add the folder that holds the file to `includes`",
                    includes.iter().map(|p| format!("`{}`", p.display())).collect::<Vec<_>>().join(", ")
                )
            })
        });
        Error { kind: ErrorKind::Proto { location, message: err.to_string(), help } }
    }

    /// A problem found in the compiled protos, at `position` (1-based line and
    /// column) of the proto named `name`, when known.
    pub(crate) fn at(
        name: &str,
        position: Option<(usize, usize)>,
        message: String,
        includes: &[PathBuf],
    ) -> Self {
        let (line, column) = position.unwrap_or((1, 1));
        let location = Location { file: display_path(name, includes), line, column };
        Error { kind: ErrorKind::Proto { location: Some(location), message, help: None } }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error { kind: ErrorKind::Io { path: path.into(), source } }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Config(message.into()) }
    }

    /// The file the error is in, as a path the user can open, when known.
    pub fn file(&self) -> Option<&str> {
        match &self.kind {
            ErrorKind::Proto { location: Some(location), .. } => Some(&location.file),
            _ => None,
        }
    }

    /// The 1-based line of the error, when known.
    pub fn line(&self) -> Option<usize> {
        match &self.kind {
            ErrorKind::Proto { location: Some(location), .. } => Some(location.line),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Proto { location, message, help } => {
                if let Some(Location { file, line, column }) = location {
                    write!(f, "{file}:{line}:{column}: ")?;
                }
                write!(f, "{message}")?;
                if let Some(help) = help {
                    write!(f, "\n  help: {help}")?;
                }
                Ok(())
            }
            ErrorKind::Io { path, source } => {
                write!(f, "cannot write generated code to `{}`: {source}", path.display())
            }
            ErrorKind::Config(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Turns a proto name relative to an include path (`order/v1/a.proto`) into
/// the path of the file on disk when it can be found there.
fn display_path(name: &str, includes: &[PathBuf]) -> String {
    includes
        .iter()
        .map(|include| include.join(name))
        .find(|candidate| candidate.is_file())
        .map(|path| path_string(&path))
        .unwrap_or_else(|| name.to_owned())
}

fn path_string(path: &Path) -> String {
    path.strip_prefix(std::env::current_dir().unwrap_or_default()).unwrap_or(path).display().to_string()
}

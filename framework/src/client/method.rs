//! Settings looked up by method path, as every layer keeps its own.

use std::collections::HashMap;

/// A value per method path (`/pkg.Service/Method`), and one for paths the
/// service's descriptor does not know.
#[derive(Debug)]
pub(crate) struct PerMethod<T> {
    by_path: HashMap<&'static str, T>,
    unknown: T,
}

impl<T> PerMethod<T> {
    pub(crate) fn new(by_path: impl IntoIterator<Item = (&'static str, T)>, unknown: T) -> Self {
        PerMethod { by_path: by_path.into_iter().collect(), unknown }
    }

    /// Every known path and its value.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'static str, &T)> {
        self.by_path.iter().map(|(path, value)| (*path, value))
    }

    /// The value for `path`.
    pub(crate) fn get(&self, path: &str) -> &T {
        self.by_path.get(path).unwrap_or(&self.unknown)
    }
}

//! Settings looked up by method path on every call, as each layer of both
//! sides keeps its own.
//!
//! The paths are a service's own, known when the table is made, so the
//! table is a sorted slice searched by halving: a few byte comparisons of
//! the path, where a `HashMap`'s SipHash would hash all of it first.

/// A value per method path (`/pkg.Service/Method`), and one for paths the
/// table does not know.
#[derive(Debug)]
pub(crate) struct PerMethod<T> {
    sorted: Box<[(&'static str, T)]>,
    unknown: T,
}

impl<T> PerMethod<T> {
    /// The table of `by_path`; of two entries with one path, the first is kept.
    pub(crate) fn new(by_path: impl IntoIterator<Item = (&'static str, T)>, unknown: T) -> Self {
        let mut sorted: Vec<_> = by_path.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        sorted.dedup_by(|later, first| later.0 == first.0);
        PerMethod { sorted: sorted.into_boxed_slice(), unknown }
    }

    /// Every known path and its value, by path.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'static str, &T)> {
        self.sorted.iter().map(|(path, value)| (*path, value))
    }

    /// The value for `path`.
    pub(crate) fn get(&self, path: &str) -> &T {
        match self.sorted.binary_search_by(|(p, _)| (*p).cmp(path)) {
            Ok(i) => &self.sorted[i].1,
            Err(_) => &self.unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_path_it_holds_and_no_other() {
        let paths = PerMethod::new(
            ["/b.S/M", "/a.S/M", "/a.S/N", "/c.T/Watch", "/a.S/M"].into_iter().zip(0..),
            usize::MAX,
        );
        assert_eq!(paths.get("/a.S/M"), &1, "the first of two entries for one path");
        assert_eq!(paths.get("/a.S/N"), &2);
        assert_eq!(paths.get("/b.S/M"), &0);
        assert_eq!(paths.get("/c.T/Watch"), &3);
        for other in ["", "/", "/a.S/", "/a.S/MM", "/z", "/a.S/m"] {
            assert_eq!(paths.get(other), &usize::MAX, "{other:?}");
        }
        let set = PerMethod::new([("/x/Y", true)], false);
        assert!(*set.get("/x/Y") && !*set.get("/x/Z"));
        assert!(!*PerMethod::new([], false).get("/x/Y"));
    }
}

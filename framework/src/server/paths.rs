//! Per-method tables looked up by a call's path on every call.
//!
//! The paths are the services' own, known when the server starts, so the
//! table is a sorted slice searched by halving: a few byte comparisons of
//! the path, where a `HashMap`'s SipHash would hash all of it first.

/// `V` for each of a fixed set of method paths.
#[derive(Debug)]
pub(crate) struct Paths<V> {
    sorted: Box<[(&'static str, V)]>,
}

impl<V> Paths<V> {
    /// The value of `path`, if it is in the table.
    pub(crate) fn get(&self, path: &str) -> Option<&V> {
        self.sorted.binary_search_by(|(p, _)| (*p).cmp(path)).ok().map(|i| &self.sorted[i].1)
    }

    /// Whether `path` is in the table.
    pub(crate) fn contains(&self, path: &str) -> bool {
        self.get(path).is_some()
    }
}

impl<V> FromIterator<(&'static str, V)> for Paths<V> {
    /// The table of `entries`; of two entries with one path, the first is kept.
    fn from_iter<I: IntoIterator<Item = (&'static str, V)>>(entries: I) -> Self {
        let mut sorted: Vec<_> = entries.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        sorted.dedup_by(|later, first| later.0 == first.0);
        Paths { sorted: sorted.into_boxed_slice() }
    }
}

impl FromIterator<&'static str> for Paths<()> {
    fn from_iter<I: IntoIterator<Item = &'static str>>(paths: I) -> Self {
        paths.into_iter().map(|p| (p, ())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_path_it_holds_and_no_other() {
        let paths: Paths<usize> =
            ["/b.S/M", "/a.S/M", "/a.S/N", "/c.T/Watch", "/a.S/M"].into_iter().zip(0..).collect();
        assert_eq!(paths.get("/a.S/M"), Some(&1), "the first of two entries for one path");
        assert_eq!(paths.get("/a.S/N"), Some(&2));
        assert_eq!(paths.get("/b.S/M"), Some(&0));
        assert_eq!(paths.get("/c.T/Watch"), Some(&3));
        for other in ["", "/", "/a.S/", "/a.S/MM", "/z", "/a.S/m"] {
            assert_eq!(paths.get(other), None, "{other:?}");
        }
        let set: Paths<()> = ["/x/Y"].into_iter().collect();
        assert!(set.contains("/x/Y") && !set.contains("/x/Z"));
        assert!(!std::iter::empty::<&'static str>().collect::<Paths<()>>().contains("/x/Y"));
    }
}

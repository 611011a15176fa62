//! The REST routes of the added services, and matching a request to one.

use percent_encoding::percent_decode_str;
use prost_reflect::{DescriptorPool, MessageDescriptor};

use crate::descriptor::{HttpRule, MethodDescriptor, PathSegment, PathTemplate, ServiceDescriptor};
use crate::error::Error;

/// One route: an HTTP method and path template, and the gRPC method it calls.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) http_method: &'static str,
    pub(crate) rule: &'static HttpRule,
    pub(crate) method: &'static MethodDescriptor,
    pub(crate) input: MessageDescriptor,
    pub(crate) output: MessageDescriptor,
    /// Literal segments, for preferring `/v1/items/all` over `/v1/items/{id}`.
    literals: usize,
}

/// A request matched to a route: the route and the path variables' values.
#[derive(Debug)]
pub(crate) struct Matched<'a> {
    pub(crate) route: &'a Route,
    pub(crate) variables: Vec<(&'static [&'static str], String)>,
}

/// What matching a request found.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    Route(Matched<'a>),
    /// The path is known, for other HTTP methods (these).
    WrongMethod(Vec<&'static str>),
    NotFound,
}

/// Every route of every service that has one.
#[derive(Debug, Clone)]
pub(crate) struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// The routes of `services`, with their messages from `pool`.
    pub(crate) fn new(services: &[&'static ServiceDescriptor], pool: &DescriptorPool) -> Result<Self, Error> {
        let mut routes = Vec::new();
        for service in services {
            let Some(reflected) = pool.get_service_by_name(service.name()) else { continue };
            for method in service.methods() {
                let Some(rule) = method.http_rule() else { continue };
                let Some(reflected) = reflected.methods().find(|m| m.name() == method.name()) else {
                    return Err(Error::Config(format!(
                        "REST: the descriptors of `{}` have no method `{}`; rebuild the crate so that \
                         trellis-build regenerates them",
                        service.name(),
                        method.name()
                    )));
                };
                for rule in std::iter::once(rule).chain(rule.additional_bindings()) {
                    routes.push(Route {
                        http_method: rule.method().as_str(),
                        rule,
                        method,
                        input: reflected.input(),
                        output: reflected.output(),
                        literals: literals(rule.path().segments()),
                    });
                }
            }
        }
        Ok(Routes { routes })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route for `method` and `path`; among several, the one with the
    /// most literal segments, then the first declared.
    pub(crate) fn find(&self, method: &str, path: &str) -> Lookup<'_> {
        let mut best: Option<Matched<'_>> = None;
        let mut other_methods = Vec::new();
        for route in &self.routes {
            let Some(variables) = match_path(route.rule.path(), path) else { continue };
            if !route.http_method.eq_ignore_ascii_case(method) {
                if !other_methods.contains(&route.http_method) {
                    other_methods.push(route.http_method);
                }
                continue;
            }
            if best.as_ref().is_none_or(|b| route.literals > b.route.literals) {
                best = Some(Matched { route, variables });
            }
        }
        match best {
            Some(matched) => Lookup::Route(matched),
            None if !other_methods.is_empty() => Lookup::WrongMethod(other_methods),
            None => Lookup::NotFound,
        }
    }
}

fn literals(segments: &[PathSegment]) -> usize {
    segments
        .iter()
        .map(|segment| match segment {
            PathSegment::Literal(_) => 1,
            PathSegment::Variable(variable) => literals(variable.segments()),
            PathSegment::Wildcard | PathSegment::DoubleWildcard => 0,
        })
        .sum()
}

/// Matches `path` against `template`; returns each variable's field path and
/// its percent-decoded value.
pub(crate) fn match_path(
    template: &PathTemplate,
    path: &str,
) -> Option<Vec<(&'static [&'static str], String)>> {
    let mut rest = path.strip_prefix('/')?;
    if let Some(verb) = template.verb() {
        rest = rest.strip_suffix(verb)?.strip_suffix(':')?;
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut variables = Vec::new();
    let used = match_segments(template.segments(), &parts, &mut variables)?;
    (used == parts.len()).then_some(variables)
}

/// Matches `segments` at the start of `parts`; returns how many parts they took.
fn match_segments(
    segments: &[PathSegment],
    parts: &[&str],
    variables: &mut Vec<(&'static [&'static str], String)>,
) -> Option<usize> {
    let mut at = 0;
    for segment in segments {
        match segment {
            PathSegment::Literal(text) => {
                if parts.get(at)? != text {
                    return None;
                }
                at += 1;
            }
            PathSegment::Wildcard => {
                if parts.get(at)?.is_empty() {
                    return None;
                }
                at += 1;
            }
            PathSegment::DoubleWildcard => at = parts.len(),
            PathSegment::Variable(variable) => {
                let taken =
                    match_segments(variable.segments(), &parts[at.min(parts.len())..], &mut Vec::new())?;
                let value: Vec<String> = parts[at..at + taken]
                    .iter()
                    .map(|part| percent_decode_str(part).decode_utf8_lossy().into_owned())
                    .collect();
                variables.push((variable.field_path(), value.join("/")));
                at += taken;
            }
        }
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::PathVariable;

    const BOOK: PathTemplate = PathTemplate::new(
        "/v1/{name=shelves/*}/books/{id}",
        &[
            PathSegment::Literal("v1"),
            PathSegment::Variable(PathVariable::new(
                &["name"],
                &[PathSegment::Literal("shelves"), PathSegment::Wildcard],
            )),
            PathSegment::Literal("books"),
            PathSegment::Variable(PathVariable::new(&["id"], &[PathSegment::Wildcard])),
        ],
        None,
    );
    const FILE: PathTemplate = PathTemplate::new(
        "/v1/files/{path=**}:read",
        &[
            PathSegment::Literal("v1"),
            PathSegment::Literal("files"),
            PathSegment::Variable(PathVariable::new(&["path"], &[PathSegment::DoubleWildcard])),
        ],
        Some("read"),
    );

    #[test]
    fn variables_bind_what_their_pattern_matches() {
        let vars = match_path(&BOOK, "/v1/shelves/s%201/books/42").expect("matches");
        assert_eq!(vars, [(&["name"][..], "shelves/s 1".to_owned()), (&["id"][..], "42".to_owned())]);
        assert_eq!(match_path(&BOOK, "/v1/racks/s1/books/42"), None);
        assert_eq!(match_path(&BOOK, "/v1/shelves/s1/books/42/x"), None);
        assert_eq!(match_path(&BOOK, "/v1/shelves/s1/books/"), None);
    }

    #[test]
    fn double_wildcards_take_the_rest_and_verbs_must_match() {
        let vars = match_path(&FILE, "/v1/files/a/b/c.txt:read").expect("matches");
        assert_eq!(vars, [(&["path"][..], "a/b/c.txt".to_owned())]);
        assert_eq!(match_path(&FILE, "/v1/files/a/b:write"), None);
        assert_eq!(match_path(&FILE, "/v1/files/a/b"), None);
    }
}

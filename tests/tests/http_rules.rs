//! The `google.api.http` rules of a proto land, checked and parsed, in the
//! generated method descriptors and in a constant per method.

use trellis::codegen::{HttpMethod, HttpRule, PathSegment, PathVariable};
use trellis_tests::proto::trellis::test::rest::v1::{
    LIBRARY_CREATE_BOOK_HTTP_RULE, LIBRARY_DESCRIPTOR, LIBRARY_GET_BOOK_HTTP_RULE,
};

fn rule(method: &str) -> &'static HttpRule {
    let path = format!("/trellis.test.rest.v1.Library/{method}");
    let descriptor = LIBRARY_DESCRIPTOR.method_by_path(&path).expect("method");
    descriptor.http_rule().unwrap_or_else(|| panic!("{method} has no rule"))
}

fn var(field_path: &'static [&'static str], segments: &'static [PathSegment]) -> PathSegment {
    PathSegment::Variable(PathVariable::new(field_path, segments))
}

#[test]
fn path_variables_with_patterns_and_additional_bindings() {
    let get = rule("GetBook");
    assert_eq!(*get, LIBRARY_GET_BOOK_HTTP_RULE);
    assert_eq!(get.method(), HttpMethod::Get);
    assert_eq!(get.path().text(), "/v1/{name=shelves/*}/books/{id}");
    assert_eq!(
        get.path().segments(),
        [
            PathSegment::Literal("v1"),
            var(&["name"], &[PathSegment::Literal("shelves"), PathSegment::Wildcard]),
            PathSegment::Literal("books"),
            var(&["id"], &[PathSegment::Wildcard]),
        ]
    );
    assert_eq!((get.path().verb(), get.body(), get.response_body()), (None, None, None));

    let bindings: Vec<(&str, &str)> =
        get.additional_bindings().iter().map(|b| (b.method().as_str(), b.path().text())).collect();
    assert_eq!(bindings, [("GET", "/v1/books/{id}"), ("HEAD", "/v1/books/{id}")]);
    assert_eq!(get.additional_bindings()[1].method(), HttpMethod::Custom("HEAD"));
    assert!(get.additional_bindings().iter().all(|b| b.additional_bindings().is_empty()));
}

#[test]
fn bodies_and_response_bodies() {
    let create = rule("CreateBook");
    assert_eq!(*create, LIBRARY_CREATE_BOOK_HTTP_RULE);
    assert_eq!((create.method(), create.body()), (HttpMethod::Post, Some("book")));

    let update = rule("UpdateBook");
    assert_eq!(
        (update.method(), update.body(), update.response_body()),
        (HttpMethod::Patch, Some("*"), Some("title"))
    );
    assert_eq!(update.path().segments()[2], var(&["book", "id"], &[PathSegment::Wildcard]));
}

#[test]
fn double_wildcards_and_verbs() {
    let read = rule("ReadFile");
    assert_eq!(read.path().segments()[2], var(&["path"], &[PathSegment::DoubleWildcard]));

    let archive = rule("ArchiveBook");
    assert_eq!(archive.path().verb(), Some("archive"));
    assert_eq!(
        archive.path().segments(),
        [PathSegment::Literal("v1"), PathSegment::Literal("books"), var(&["id"], &[PathSegment::Wildcard])]
    );

    assert_eq!(rule("DeleteBook").method().as_str(), "DELETE");
}

#[test]
fn a_method_without_the_option_has_no_rule() {
    let audit = LIBRARY_DESCRIPTOR.method_by_path("/trellis.test.rest.v1.Library/Audit").expect("method");
    assert_eq!(audit.http_rule(), None);
    // The other facts about a routed method are as before.
    let get = LIBRARY_DESCRIPTOR.method_by_path("/trellis.test.rest.v1.Library/GetBook").expect("method");
    assert_eq!(get.idempotency(), trellis::Idempotency::NoSideEffects);
}

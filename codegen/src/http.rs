//! The `google.api.http` option of `google/api/annotations.proto`: read from
//! the compiled protos, checked, and turned into `HttpRule` tokens.
//!
//! The checks follow the `HttpRule` documentation in `google/api/http.proto`:
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```

use std::collections::HashMap;
use std::path::PathBuf;

use proc_macro2::TokenStream;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, MethodDescriptor};
use quote::quote;

use crate::Error;
use crate::policy::option_position;

/// The extension's full name and field number in `MethodOptions`.
const EXTENSION: &str = "google.api.http";
const EXTENSION_NUMBER: i32 = 72_295_728;

/// Field numbers of `HttpRule`, for pointing errors at the offending line.
const SELECTOR: i32 = 1;
const BODY: i32 = 7;
const CUSTOM: i32 = 8;
const ADDITIONAL_BINDINGS: i32 = 11;
const RESPONSE_BODY: i32 = 12;
/// The pattern fields, with the HTTP method each stands for.
const PATTERNS: &[(&str, i32, &str)] = &[
    ("get", 2, "GET"),
    ("put", 3, "PUT"),
    ("post", 4, "POST"),
    ("delete", 5, "DELETE"),
    ("patch", 6, "PATCH"),
];

/// The checked rule of one method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    method: Method,
    path: Template,
    body: Option<String>,
    response_body: Option<String>,
    additional_bindings: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Put,
    Post,
    Delete,
    Patch,
    Custom(String),
}

impl Method {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Custom(kind) => kind,
        }
    }
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    pub(crate) text: String,
    pub(crate) segments: Vec<Segment>,
    pub(crate) verb: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    Wildcard,
    DoubleWildcard,
    /// `{a.b=segments}`; `{a}` is `{a=*}`.
    Variable {
        field_path: Vec<String>,
        segments: Vec<Segment>,
    },
}

impl Rule {
    pub(crate) fn method(&self) -> &Method {
        &self.method
    }

    pub(crate) fn path(&self) -> &Template {
        &self.path
    }

    pub(crate) fn body(&self) -> Option<&str> {
        self.body.as_deref()
    }

    pub(crate) fn response_body(&self) -> Option<&str> {
        self.response_body.as_deref()
    }

    pub(crate) fn additional_bindings(&self) -> &[Rule] {
        &self.additional_bindings
    }
}

/// A problem with a rule: the field path under `google.api.http` it is
/// about, and what is wrong and what to do.
type Problem = (Vec<i32>, String);

/// Reads and checks the rule of every method that sets `google.api.http`,
/// keyed by the method's full name (`pkg.Service.Method`).
///
/// # Errors
///
/// The first rule that is malformed, names fields the request or response
/// lacks, or routes the same requests as another rule, located in its file.
pub(crate) fn read(pool: &DescriptorPool, includes: &[PathBuf]) -> Result<HashMap<String, Rule>, Error> {
    let mut rules = HashMap::new();
    let Some(extension) = pool.get_extension_by_name(EXTENSION) else {
        return Ok(rules);
    };
    // Every route seen so far: its shape, its text, and whose it is.
    let mut routes: HashMap<String, (String, String)> = HashMap::new();
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&extension) {
                continue;
            }
            let Some(option) = options.get_extension(&extension).as_message().cloned() else {
                continue;
            };
            let fail = |(path, message): Problem| {
                let position = option_position(&method, EXTENSION_NUMBER, &path);
                let message = format!("method {}: {message}", method.full_name());
                Error::at(method.parent_file().name(), position, message, includes)
            };
            let rule = check_rule(&method, &option, &[]).map_err(fail)?;
            let bindings = std::iter::once((vec![], &rule)).chain(
                rule.additional_bindings
                    .iter()
                    .enumerate()
                    .map(|(i, binding)| (vec![ADDITIONAL_BINDINGS, index(i)], binding)),
            );
            for (path, binding) in bindings {
                let route = format!("{} {}", binding.method.as_str(), binding.path.text);
                let owner = method.full_name().to_owned();
                if let Some((other, other_owner)) = routes.get(&shape(binding)) {
                    let whose = if *other_owner == owner {
                        "another binding of this method".to_owned()
                    } else {
                        format!("method {other_owner}")
                    };
                    return Err(fail((
                        path,
                        format!(
                            "route `{route}` matches the same requests as `{other}` of {whose}; \
                             change the path or the HTTP method of one of them"
                        ),
                    )));
                }
                routes.insert(shape(binding), (route, owner));
            }
            rules.insert(method.full_name().to_owned(), rule);
        }
    }
    Ok(rules)
}

fn index(i: usize) -> i32 {
    i32::try_from(i).unwrap_or(i32::MAX)
}

/// What a route matches, with the names of its variables left out:
/// `GET /v1/{id}` and `GET /v1/{name}` have the same shape.
fn shape(rule: &Rule) -> String {
    fn push(out: &mut String, segments: &[Segment]) {
        for segment in segments {
            match segment {
                Segment::Literal(text) => {
                    out.push('/');
                    out.push_str(text);
                }
                Segment::Wildcard => out.push_str("/*"),
                Segment::DoubleWildcard => out.push_str("/**"),
                Segment::Variable { segments, .. } => push(out, segments),
            }
        }
    }
    let mut out = format!("{} ", rule.method.as_str());
    push(&mut out, &rule.path.segments);
    if let Some(verb) = &rule.path.verb {
        out.push(':');
        out.push_str(verb);
    }
    out
}

/// Checks one rule; `at` is its field path under the option (empty for the
/// rule itself, `[11, i]` for an additional binding).
fn check_rule(method: &MethodDescriptor, rule: &DynamicMessage, at: &[i32]) -> Result<Rule, Problem> {
    let here = |field: i32| [at, &[field]].concat();
    if string(rule, "selector").is_some() {
        return Err((
            here(SELECTOR),
            "`selector` is for rules in a service config file, not in a method's option, which \
             applies to its own method; remove it"
                .to_owned(),
        ));
    }

    let mut patterns = PATTERNS.iter().filter(|(name, _, _)| rule.has_field_by_name(name));
    let (method_kind, text, number) = match patterns.next() {
        Some((name, number, _)) => {
            let method_kind = match *name {
                "get" => Method::Get,
                "put" => Method::Put,
                "post" => Method::Post,
                "delete" => Method::Delete,
                _ => Method::Patch,
            };
            (method_kind, string(rule, name).unwrap_or_default(), vec![*number])
        }
        None if rule.has_field_by_name("custom") => {
            let custom = rule.get_field_by_name("custom").and_then(|v| v.as_message().cloned());
            let kind = custom.as_ref().and_then(|c| string(c, "kind")).unwrap_or_default();
            if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphabetic()) {
                return Err((
                    here(CUSTOM),
                    format!(
                        "custom `kind: \"{kind}\"` is not an HTTP method; write one in letters, like \
                         `custom: {{ kind: \"HEAD\" path: \"/v1/things\" }}`"
                    ),
                ));
            }
            let path = custom.as_ref().and_then(|c| string(c, "path")).unwrap_or_default();
            (Method::Custom(kind.to_ascii_uppercase()), path, vec![CUSTOM])
        }
        None => {
            return Err((
                at.to_vec(),
                "the `google.api.http` rule has no HTTP method; set one of `get`, `put`, `post`, \
                 `delete`, `patch` or `custom` to a path, like `get: \"/v1/things/{id}\"`"
                    .to_owned(),
            ));
        }
    };
    let path_at = [at, &number].concat();
    let path = parse_template(&text).map_err(|problem| (path_at.clone(), problem))?;

    let input = method.input();
    let mut bound: Vec<String> = Vec::new();
    for field_path in variables(&path.segments) {
        check_path_field(&input, field_path).map_err(|problem| (path_at.clone(), problem))?;
        bound.push(field_path.join("."));
    }

    let body = string(rule, "body");
    if let Some(body) = &body {
        let body_at = here(BODY);
        if matches!(method_kind, Method::Get | Method::Delete)
            || matches!(&method_kind, Method::Custom(kind) if kind == "GET" || kind == "DELETE")
        {
            return Err((
                body_at,
                format!(
                    "a {} request has no body, so `body: \"{body}\"` cannot be bound; remove it (the \
                     request fields not in the path are read from the query string), or use POST, PUT \
                     or PATCH",
                    method_kind.as_str()
                ),
            ));
        }
        if body != "*" {
            check_top_level(&input, body, "body", "the request")
                .map_err(|problem| (body_at.clone(), problem))?;
            if bound.iter().any(|b| b == body || b.starts_with(&format!("{body}."))) {
                return Err((
                    body_at,
                    format!(
                        "`body: \"{body}\"` is also bound by the path `{text}`; a field comes from one \
                         place, so bind it in the path or in the body, not both"
                    ),
                ));
            }
        }
    }

    let response_body = string(rule, "response_body");
    if let Some(response_body) = &response_body {
        check_top_level(&method.output(), response_body, "response_body", "the response")
            .map_err(|problem| (here(RESPONSE_BODY), problem))?;
    }

    let mut additional_bindings = Vec::new();
    let list = rule.get_field_by_name("additional_bindings");
    let list = list.as_ref().and_then(|list| list.as_list()).unwrap_or_default();
    if !at.is_empty() && !list.is_empty() {
        return Err((
            here(ADDITIONAL_BINDINGS),
            "an additional binding has `additional_bindings` of its own, which are not allowed; \
             list every binding at the top level of the rule"
                .to_owned(),
        ));
    }
    for (i, binding) in list.iter().enumerate() {
        let Some(binding) = binding.as_message() else { continue };
        let binding_at = [at, &[ADDITIONAL_BINDINGS, index(i)]].concat();
        additional_bindings.push(check_rule(method, binding, &binding_at)?);
    }

    Ok(Rule { method: method_kind, path, body, response_body, additional_bindings })
}

/// The field paths of the variables of `segments`, in order.
fn variables(segments: &[Segment]) -> impl Iterator<Item = &[String]> {
    segments.iter().filter_map(|segment| match segment {
        Segment::Variable { field_path, .. } => Some(field_path.as_slice()),
        _ => None,
    })
}

/// A path variable names a singular field of a scalar or enum type, through
/// singular message fields.
fn check_path_field(input: &MessageDescriptor, field_path: &[String]) -> Result<(), String> {
    let variable = field_path.join(".");
    let mut message = input.clone();
    for (depth, name) in field_path.iter().enumerate() {
        let Some(field) = message.get_field_by_name(name) else {
            let fields: Vec<String> = message.fields().map(|f| format!("`{}`", f.name())).collect();
            let fields = if fields.is_empty() { "it has none".to_owned() } else { fields.join(", ") };
            return Err(format!(
                "path variable `{{{variable}}}` names no field of `{}`: it has no `{name}`; name one of its \
                 fields: {fields}",
                message.full_name()
            ));
        };
        let last = depth + 1 == field_path.len();
        if field.is_list() || field.is_map() {
            return Err(format!(
                "path variable `{{{variable}}}` is a {} field of `{}`; a path segment binds one value, \
                 so name a singular scalar field (a repeated field can be a query parameter)",
                crate::policy::type_name(&field),
                message.full_name()
            ));
        }
        match field.kind() {
            Kind::Message(inner) if last => {
                let example = inner.fields().next().map(|f| format!(", like `{{{variable}.{}}}`", f.name()));
                return Err(format!(
                    "path variable `{{{variable}}}` is a message `{}` field; a path segment binds one value, \
                     so name one of its scalar fields{}",
                    inner.full_name(),
                    example.unwrap_or_default()
                ));
            }
            Kind::Message(inner) => message = inner,
            _ if last => {}
            _ => {
                return Err(format!(
                    "path variable `{{{variable}}}`: `{name}` is a {} field of `{}`, not a message, so it \
                     has no field `{}`",
                    crate::policy::type_name(&field),
                    message.full_name(),
                    field_path[depth + 1]
                ));
            }
        }
    }
    Ok(())
}

/// `body` and `response_body` name a top-level field.
fn check_top_level(message: &MessageDescriptor, name: &str, what: &str, whose: &str) -> Result<(), String> {
    if name.contains('.') {
        return Err(format!(
            "`{what}: \"{name}\"` is not a top-level field; name a field of {whose} `{}` itself{}",
            message.full_name(),
            if what == "body" { ", or `*` for all the fields the path does not bind" } else { "" }
        ));
    }
    if message.get_field_by_name(name).is_none() {
        let fields: Vec<String> = message.fields().map(|f| format!("`{}`", f.name())).collect();
        let fields = if fields.is_empty() { "it has none".to_owned() } else { fields.join(", ") };
        return Err(format!(
            "`{what}: \"{name}\"` names no field of {whose} `{}`; name one of its fields: {fields}{}",
            message.full_name(),
            if what == "body" { ", or `*`" } else { "" }
        ));
    }
    Ok(())
}

/// Parses a path template, or says what is wrong with it and how to fix it.
pub(crate) fn parse_template(text: &str) -> Result<Template, String> {
    let bad = |problem: String| Err(format!("path `{text}` {problem}"));
    let Some(rest) = text.strip_prefix('/') else {
        return bad(format!("does not start with `/`; write it as `/{text}`"));
    };
    // The verb is what follows a `:` outside braces and after the last `/`.
    let mut depth = 0;
    let mut verb_at = None;
    for (i, c) in rest.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ':' if depth == 0 => verb_at = Some(i),
            '/' if depth == 0 => verb_at = None,
            _ => {}
        }
    }
    let (body, verb) = match verb_at {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    if let Some(verb) = verb {
        if verb.is_empty() {
            return bad(
                "ends with `:` and no verb; write a verb after it, like `:cancel`, or remove the `:`".into(),
            );
        }
        if let Some(c) = verb.chars().find(|c| !is_literal_char(*c)) {
            return bad(format!(
                "has the verb `:{verb}` with `{c}` in it; a verb is plain text, like `:cancel`"
            ));
        }
    }

    let segments = split_segments(body).map_err(|problem| format!("path `{text}` {problem}"))?;
    let mut out = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for segment in &segments {
        let parsed = if let Some(inner) = segment.strip_prefix('{') {
            let Some(inner) = inner.strip_suffix('}') else {
                return bad(format!(
                    "has the segment `{segment}`; a variable is a whole segment, `{{field}}` or `{{field=pattern}}`"
                ));
            };
            let (field, pattern) = match inner.split_once('=') {
                Some((field, pattern)) => (field, Some(pattern)),
                None => (inner, None),
            };
            let field_path: Vec<String> = field.split('.').map(str::to_owned).collect();
            if field_path.iter().any(|name| !is_ident(name)) {
                return bad(format!(
                    "has the variable `{segment}`, whose field path `{field}` is not proto field names \
                     joined by `.`; write one like `{{order_id}}` or `{{address.city}}`"
                ));
            }
            if seen.contains(&field.to_owned()) {
                return bad(format!("binds `{field}` twice; bind each field once"));
            }
            seen.push(field.to_owned());
            let segments = match pattern {
                None => vec![Segment::Wildcard],
                Some(pattern) => {
                    let parts = pattern.split('/').collect::<Vec<_>>();
                    let mut segments = Vec::new();
                    for part in parts {
                        if part.contains(['{', '}']) {
                            return bad(format!(
                                "has the variable `{segment}` with a variable inside; the pattern of a \
                                 variable is literals, `*` and `**`"
                            ));
                        }
                        segments
                            .push(parse_plain(part).map_err(|problem| format!("path `{text}` {problem}"))?);
                    }
                    segments
                }
            };
            Segment::Variable { field_path, segments }
        } else if segment.contains(['{', '}']) {
            return bad(format!(
                "has the segment `{segment}`; a variable is a whole segment, `{{field}}` or `{{field=pattern}}`"
            ));
        } else {
            parse_plain(segment).map_err(|problem| format!("path `{text}` {problem}"))?
        };
        out.push(parsed);
    }

    // `**` matches the rest of the path: nothing may follow it.
    let flat = flatten(&out);
    if let Some(at) = flat.iter().position(|s| **s == Segment::DoubleWildcard)
        && at + 1 != flat.len()
    {
        return bad(
            "has `**` before its last segment; `**` matches the rest of the path, so it must come last \
             (before any `:verb`)"
                .into(),
        );
    }
    Ok(Template { text: text.to_owned(), segments: out, verb: verb.map(str::to_owned) })
}

/// The segments with each variable's pattern put in its place.
fn flatten(segments: &[Segment]) -> Vec<&Segment> {
    segments
        .iter()
        .flat_map(|segment| match segment {
            Segment::Variable { segments, .. } => segments.iter().collect(),
            other => vec![other],
        })
        .collect()
}

/// Splits the part after the leading `/` at the slashes outside braces.
fn split_segments(body: &str) -> Result<Vec<&str>, String> {
    let mut segments = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in body.char_indices() {
        match c {
            '{' if depth > 0 => return Err("has a `{` inside a variable; variables do not nest".into()),
            '{' => depth = 1,
            '}' if depth == 0 => return Err("has a `}` that closes no variable; remove it".into()),
            '}' => depth = 0,
            '/' if depth == 0 => {
                segments.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err("has a `{` that is never closed; end the variable with `}`".into());
    }
    segments.push(&body[start..]);
    if segments.iter().any(|s| s.is_empty()) {
        return Err(if body.is_empty() {
            "has no segments; write at least one, like `/v1/things`".into()
        } else {
            "has an empty segment (`//`, or a `/` at the end); remove the extra `/`".into()
        });
    }
    Ok(segments)
}

/// A segment that is not a variable: `*`, `**` or a literal.
fn parse_plain(segment: &str) -> Result<Segment, String> {
    match segment {
        "" => Err("has an empty segment in a variable's pattern; remove the extra `/`".into()),
        "*" => Ok(Segment::Wildcard),
        "**" => Ok(Segment::DoubleWildcard),
        _ if segment.contains('*') => Err(format!(
            "has the segment `{segment}`; a wildcard is a whole segment, `*` for one segment or `**` for the rest"
        )),
        _ => match segment.chars().find(|c| !is_literal_char(*c)) {
            Some(c) => Err(format!(
                "has `{c}` in the segment `{segment}`; a literal segment is letters, digits and `-._~%!$&'()+,;@`"
            )),
            None => Ok(Segment::Literal(segment.to_owned())),
        },
    }
}

fn is_literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~%!$&'()+,;@".contains(c)
}

fn is_ident(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A set, non-empty string field.
fn string(message: &DynamicMessage, name: &str) -> Option<String> {
    let value = message.get_field_by_name(name)?;
    value.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// The `HttpRule` expression of a checked rule.
pub(crate) fn tokens(codegen: &syn::Path, rule: &Rule) -> TokenStream {
    let method = match &rule.method {
        Method::Get => quote!(Get),
        Method::Put => quote!(Put),
        Method::Post => quote!(Post),
        Method::Delete => quote!(Delete),
        Method::Patch => quote!(Patch),
        Method::Custom(kind) => quote!(Custom(#kind)),
    };
    let text = &rule.path.text;
    let segments = segments_tokens(codegen, &rule.path.segments);
    let verb = match &rule.path.verb {
        Some(verb) => quote!(::core::option::Option::Some(#verb)),
        None => quote!(::core::option::Option::None),
    };
    let mut out = quote! {
        #codegen::HttpRule::new(
            #codegen::HttpMethod::#method,
            #codegen::PathTemplate::new(#text, &[#(#segments),*], #verb),
        )
    };
    if let Some(body) = &rule.body {
        out.extend(quote!(.with_body(#body)));
    }
    if let Some(response_body) = &rule.response_body {
        out.extend(quote!(.with_response_body(#response_body)));
    }
    if !rule.additional_bindings.is_empty() {
        let bindings = rule.additional_bindings.iter().map(|binding| tokens(codegen, binding));
        out.extend(quote!(.with_additional_bindings(&[#(#bindings),*])));
    }
    out
}

fn segments_tokens(codegen: &syn::Path, segments: &[Segment]) -> Vec<TokenStream> {
    segments
        .iter()
        .map(|segment| match segment {
            Segment::Literal(text) => quote!(#codegen::PathSegment::Literal(#text)),
            Segment::Wildcard => quote!(#codegen::PathSegment::Wildcard),
            Segment::DoubleWildcard => quote!(#codegen::PathSegment::DoubleWildcard),
            Segment::Variable { field_path, segments } => {
                let inner = segments_tokens(codegen, segments);
                quote! {
                    #codegen::PathSegment::Variable(#codegen::PathVariable::new(
                        &[#(#field_path),*],
                        &[#(#inner),*],
                    ))
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(text: &str) -> Segment {
        Segment::Literal(text.to_owned())
    }

    fn var(path: &[&str], segments: Vec<Segment>) -> Segment {
        Segment::Variable { field_path: path.iter().map(|s| (*s).to_owned()).collect(), segments }
    }

    #[test]
    fn templates_parse_into_segments() {
        let template = parse_template("/v1/{name=shelves/*}/books/{id}").expect("parses");
        assert_eq!(
            template.segments,
            [
                lit("v1"),
                var(&["name"], vec![lit("shelves"), Segment::Wildcard]),
                lit("books"),
                var(&["id"], vec![Segment::Wildcard])
            ]
        );
        assert_eq!(template.verb, None);

        let template = parse_template("/v1/{address.city}/*/**:watch").expect("parses");
        assert_eq!(
            template.segments,
            [
                lit("v1"),
                var(&["address", "city"], vec![Segment::Wildcard]),
                Segment::Wildcard,
                Segment::DoubleWildcard
            ]
        );
        assert_eq!(template.verb.as_deref(), Some("watch"));

        let template = parse_template("/v1/{name=files/**}:get").expect("parses");
        assert_eq!(template.segments[1], var(&["name"], vec![lit("files"), Segment::DoubleWildcard]));
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        for (text, expected) in [
            ("v1/things", "does not start with `/`; write it as `/v1/things`"),
            ("/", "has no segments"),
            ("/v1//things", "has an empty segment"),
            ("/v1/things/", "has an empty segment"),
            ("/v1/**/things", "has `**` before its last segment"),
            ("/v1/{name=**}/things", "has `**` before its last segment"),
            ("/v1/th*ngs", "a wildcard is a whole segment"),
            ("/v1/***", "a wildcard is a whole segment"),
            ("/v1/things:", "ends with `:` and no verb"),
            ("/v1/things:a:b", "has `:` in the segment `things:a`"),
            ("/v1/{id}:a/b", "has the segment `{id}:a`"),
            ("/v1/things:a*", "has the verb `:a*` with `*` in it"),
            ("/v1/{id", "has a `{` that is never closed"),
            ("/v1/id}", "has a `}` that closes no variable"),
            ("/v1/{a={b}}", "variables do not nest"),
            ("/v1/x{id}", "a variable is a whole segment"),
            ("/v1/{}", "is not proto field names joined by `.`"),
            ("/v1/{order-id}", "is not proto field names joined by `.`"),
            ("/v1/{id}/{id}", "binds `id` twice"),
            ("/v1/{name=shelves//x}", "empty segment in a variable's pattern"),
            ("/v1/a b", "has ` ` in the segment `a b`"),
        ] {
            let problem = parse_template(text).expect_err(text);
            assert!(problem.starts_with(&format!("path `{text}` ")), "{problem}");
            assert!(problem.contains(expected), "{text}: {problem}");
        }
    }

    #[test]
    fn variable_names_do_not_change_the_shape() {
        let rule = |path: &str| Rule {
            method: Method::Get,
            path: parse_template(path).expect("parses"),
            body: None,
            response_body: None,
            additional_bindings: vec![],
        };
        assert_eq!(shape(&rule("/v1/{id}")), shape(&rule("/v1/{name}")));
        assert_eq!(shape(&rule("/v1/{id}")), shape(&rule("/v1/*")));
        assert_eq!(shape(&rule("/v1/{name=a/*}")), shape(&rule("/v1/a/{id}")));
        assert_ne!(shape(&rule("/v1/{id}")), shape(&rule("/v1/{id}:cancel")));
        assert_ne!(shape(&rule("/v1/{id}")), shape(&rule("/v1/items")));
    }
}

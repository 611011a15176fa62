//! Which names `trellis new` and `trellis add` accept, and the names derived
//! from them (crate, module, proto package, service, Kubernetes objects).

use heck::{ToKebabCase, ToSnakeCase, ToUpperCamelCase};

use crate::error::Error;

/// Rust keywords (every edition) and names a crate or module cannot take.
const RESERVED: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "box",
    "do",
    "final",
    "macro",
    "override",
    "priv",
    "try",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "union",
    // Crates every service links, and names cargo refuses.
    "std",
    "core",
    "alloc",
    "proc_macro",
    "test",
    "build",
    "trellis",
    "trellis_build",
    "tokio",
    "serde",
    "proto",
    // The package prefix of gRPC's own services (health, reflection).
    "grpc",
];

/// The longest crate name accepted; Kubernetes names are at most 63 characters.
const MAX_NAME: usize = 40;

/// Checks a crate name: lowercase letters, digits, `-` and `_`, starting
/// with a letter, no doubled or trailing separator, not reserved.
pub(crate) fn check_crate_name(name: &str) -> Result<(), Error> {
    let allowed = "use lowercase ASCII letters, digits, `-` and `_`, starting with a letter, \
                   such as `greeter` or `order-billing`";
    let suggestion = || {
        let kebab = name.to_kebab_case();
        if !kebab.is_empty() && kebab != name && check_crate_name(&kebab).is_ok() {
            format!(" (perhaps `{kebab}`)")
        } else {
            String::new()
        }
    };
    if name.is_empty() {
        return Err(Error::usage(format!("the name is empty: {allowed}")));
    }
    if name.len() > MAX_NAME {
        return Err(Error::usage(format!(
            "`{name}` is {} characters long; use at most {MAX_NAME}, as Kubernetes objects are named after it",
            name.len()
        )));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(Error::usage(format!(
            "`{name}` does not start with a lowercase letter: {allowed}{}",
            suggestion()
        )));
    }
    if let Some(bad) =
        name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(Error::usage(format!("`{name}` contains `{bad}`: {allowed}{}", suggestion())));
    }
    if name.ends_with(['-', '_'])
        || name.contains("--")
        || name.contains("__")
        || name.contains("-_")
        || name.contains("_-")
    {
        return Err(Error::usage(format!(
            "`{name}` has a trailing or doubled separator: {allowed}{}",
            suggestion()
        )));
    }
    let snake = name.replace('-', "_");
    if RESERVED.contains(&snake.as_str()) {
        return Err(Error::usage(format!(
            "`{name}` is a Rust keyword or a reserved crate name, which cannot name a crate and its proto package; \
             choose another, such as `{name}-service`"
        )));
    }
    Ok(())
}

/// Checks a proto package: dot-separated lowercase identifiers, the last a
/// version such as `v1` or `v2beta1`.
pub(crate) fn check_package(package: &str) -> Result<(), Error> {
    let example = "such as `greeter.v1` or `acme.billing.v2beta1`";
    let segments: Vec<&str> = package.split('.').collect();
    if segments.len() < 2 {
        return Err(Error::usage(format!(
            "proto package `{package}` has no version: end it with `.v1` (or `.v2`, `.v1beta1`), {example}"
        )));
    }
    for segment in &segments {
        let ok = segment.starts_with(|c: char| c.is_ascii_lowercase())
            && segment.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !segment.ends_with('_');
        if !ok {
            return Err(Error::usage(format!(
                "proto package `{package}`: `{segment}` is not a lowercase identifier (letters, digits, `_`, \
                 starting with a letter); use {example}"
            )));
        }
        if RESERVED.contains(segment) {
            return Err(Error::usage(format!(
                "proto package `{package}`: `{segment}` is a Rust keyword or reserved name, which cannot be a \
                 module; choose another, {example}"
            )));
        }
    }
    let version = segments[segments.len() - 1];
    if !is_version(version) {
        return Err(Error::usage(format!(
            "proto package `{package}` does not end in a version: `{version}` should be like `v1`, `v2` or \
             `v1beta1`, {example}"
        )));
    }
    Ok(())
}

fn is_version(segment: &str) -> bool {
    let Some(rest) = segment.strip_prefix('v') else { return false };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 || rest.starts_with('0') {
        return false;
    }
    let tail = &rest[digits..];
    tail.is_empty()
        || ["alpha", "beta"]
            .iter()
            .any(|stage| tail.strip_prefix(stage).is_some_and(|n| n.chars().all(|c| c.is_ascii_digit())))
}

/// The names a service is known by, derived from its crate name (or a
/// proto's name) and package.
#[derive(Debug, Clone)]
pub(crate) struct ServiceNames {
    /// `order_billing.v1`.
    pub(crate) package: String,
    /// `OrderBilling`.
    pub(crate) service: String,
}

impl ServiceNames {
    /// The names for `base` (a checked crate or proto name) in `package`
    /// (default: `BASE_SNAKE.v1`).
    pub(crate) fn new(base: &str, package: Option<&str>) -> Result<Self, Error> {
        let package = match package {
            Some(package) => package.to_owned(),
            None => format!("{}.v1", base.to_snake_case()),
        };
        check_package(&package)?;
        let service = base.to_upper_camel_case();
        let names = ServiceNames { package, service };
        let dns = names.dns_service();
        if dns.len() > 63 {
            return Err(Error::usage(format!(
                "the service `{}` would need the Kubernetes Service name `{dns}`, longer than 63 characters; \
                 choose a shorter name or --package",
                names.full_service()
            )));
        }
        Ok(names)
    }

    /// `order_billing.v1.OrderBilling`.
    pub(crate) fn full_service(&self) -> String {
        format!("{}.{}", self.package, self.service)
    }

    /// `order_billing/v1`.
    pub(crate) fn package_path(&self) -> String {
        self.package.replace('.', "/")
    }

    /// `order_billing::v1`.
    pub(crate) fn package_mod(&self) -> String {
        self.package.replace('.', "::")
    }

    /// The module tonic names the server after: `order_billing`.
    pub(crate) fn service_snake(&self) -> String {
        naive_snake_case(&self.service)
    }

    /// The Kubernetes headless Service `dns://{service}` looks up:
    /// `order-billing-v1-orderbilling`.
    pub(crate) fn dns_service(&self) -> String {
        self.full_service().to_lowercase().replace(['.', '_'], "-")
    }
}

/// tonic's rule for the server module of a service (`FooBar` -> `foo_bar`).
fn naive_snake_case(name: &str) -> String {
    let mut out = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c.to_ascii_lowercase());
        if chars.peek().is_some_and(|next| next.is_ascii_uppercase()) {
            out.push('_');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for name in ["greeter", "order-billing", "svc2", "a_b", "x"] {
            check_crate_name(name).unwrap();
        }
    }

    #[test]
    fn bad_names_say_what_is_allowed() {
        for (name, says) in [
            ("", "empty"),
            ("Greeter", "perhaps `greeter`"),
            ("2fast", "start with a lowercase letter"),
            ("my service", "contains ` `"),
            ("my.service", "contains `.`"),
            ("café", "contains `é`"),
            ("trailing-", "trailing or doubled"),
            ("a--b", "trailing or doubled"),
            ("type", "Rust keyword"),
            ("trellis", "reserved"),
            ("grpc", "reserved"),
        ] {
            let err = check_crate_name(name).unwrap_err().to_string();
            assert!(err.contains(says), "{name:?}: {err}");
        }
        assert!(check_crate_name(&"a".repeat(41)).unwrap_err().to_string().contains("at most 40"));
    }

    #[test]
    fn packages_need_a_version() {
        for package in ["greeter.v1", "acme.billing.v2beta1", "a.v10", "a.v1alpha"] {
            check_package(package).unwrap();
        }
        for (package, says) in [
            ("greeter", "has no version"),
            ("greeter.one", "does not end in a version"),
            ("greeter.v0", "does not end in a version"),
            ("Greeter.v1", "not a lowercase identifier"),
            ("greeter..v1", "not a lowercase identifier"),
            ("type.v1", "Rust keyword"),
        ] {
            let err = check_package(package).unwrap_err().to_string();
            assert!(err.contains(says), "{package:?}: {err}");
        }
    }

    #[test]
    fn derived_names() {
        let names = ServiceNames::new("order-billing", None).unwrap();
        assert_eq!(names.full_service(), "order_billing.v1.OrderBilling");
        assert_eq!(names.package_path(), "order_billing/v1");
        assert_eq!(names.package_mod(), "order_billing::v1");
        assert_eq!(names.service_snake(), "order_billing");
        assert_eq!(names.dns_service(), "order-billing-v1-orderbilling");
    }
}

//! The Rust names of a service's methods, chosen so that every valid proto
//! compiles.
//!
//! prost names a method after its proto name in `snake_case`, with Rust
//! keywords made raw (`r#type`) or given a trailing `_` (`self_`). That name
//! becomes a method of the generated client and of the server trait, next to
//! the items tonic and Trellis define there. When it is one of those, or when
//! two methods of a service end up with the same name, the generated code does
//! not compile; so such a method gets `_rpc` appended, as many times as it
//! takes to be unique. The proto name, and so the wire path, never changes.

use std::collections::HashSet;

use prost_build::Service;

/// The suffix that resolves a collision.
pub(crate) const SUFFIX: &str = "_rpc";

/// Every name the generated client, server trait and service struct define or
/// keep for themselves (the crate docs list the same set).
pub(crate) const RESERVED: &[&str] = &[
    // tonic's client, `FooClient<T>`.
    "new",
    "with_origin",
    "with_interceptor",
    "send_compressed",
    "accept_compressed",
    "max_decoding_message_size",
    "max_encoding_message_size",
    // tonic's client over its own transport.
    "connect",
    // Trellis's client constructor.
    "discover",
    // tonic's service struct, `FooServer<T>`, beyond the names above.
    "from_arc",
    // `tower::Service`, which `FooServer<T>` implements.
    "poll_ready",
    "call",
    // `Clone` and `Debug`, which the client and the service struct implement,
    // and which a handler type usually derives next to the server trait.
    "clone",
    "clone_from",
    "fmt",
    // The accessors of a service wrapper (`get_ref`, `get_mut`, `into_inner`),
    // kept free so that adding them never renames a method.
    "get_ref",
    "get_mut",
    "into_inner",
];

/// Gives each method of `service` its collision-free Rust name, in place.
///
/// Returns whether any method was renamed.
pub(crate) fn resolve(service: &mut Service) -> bool {
    let names: Vec<String> = service.methods.iter().map(|m| m.name.clone()).collect();
    let resolved = resolve_names(&names);
    let renamed = resolved != names;
    for (method, name) in service.methods.iter_mut().zip(resolved) {
        method.name = name;
    }
    renamed
}

/// The collision-free names for methods named `names`, in proto order: a name
/// that is reserved, or that an earlier method already has, gets [`SUFFIX`]
/// until it is neither reserved nor the name of any other method.
pub(crate) fn resolve_names(names: &[String]) -> Vec<String> {
    let mut taken: HashSet<String> = HashSet::new();
    // First the names that stay as they are, so a renamed method never takes
    // the name a later method has by right (`New` and `NewRpc`).
    let keeps: Vec<bool> =
        names.iter().map(|name| !RESERVED.contains(&unraw(name)) && taken.insert(name.clone())).collect();
    names
        .iter()
        .zip(keeps)
        .map(|(name, keep)| {
            if keep {
                return name.clone();
            }
            let mut candidate = format!("{}{SUFFIX}", unraw(name));
            while RESERVED.contains(&candidate.as_str()) || taken.contains(&candidate) {
                candidate.push_str(SUFFIX);
            }
            taken.insert(candidate.clone());
            candidate
        })
        .collect()
}

/// `name` without the `r#` of a raw identifier.
fn unraw(name: &str) -> &str {
    name.strip_prefix("r#").unwrap_or(name)
}

/// tonic names the server's per-method handler struct `{ProtoName}Svc` and
/// declares it inside `call`, where it shadows the server trait when the
/// service is named so (service `GetSvc`, method `Get`). This renames the
/// struct to `{ProtoName}Svc_` in that case, which no service trait can be
/// named (prost never ends a type name with `_` but for `Self_`).
pub(crate) fn unshadow_server_trait(service: &Service, code: &str) -> String {
    let mut code = code.to_owned();
    for method in &service.methods {
        let svc = format!("{}Svc", method.proto_name);
        if svc != service.name {
            continue;
        }
        for (from, to) in [
            (format!("struct {svc}<"), format!("struct {svc}_<")),
            (format!("for {svc}<T>"), format!("for {svc}_<T>")),
            (format!("= {svc}(inner)"), format!("= {svc}_(inner)")),
        ] {
            code = code.replace(&from, &to);
        }
    }
    code
}

/// tonic names a server-streaming method's response type `{ProtoName}Stream`,
/// which is not UpperCamelCase when the proto name is not (`getItem`,
/// `GET_ITEM`); the generated modules allow that, as they allow the rest of
/// what tonic's output does not follow.
pub(crate) fn allow_proto_cased_types(code: &str) -> String {
    code.replace("#![allow(", "#![allow(\n        non_camel_case_types,")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(names: &[&str]) -> Vec<String> {
        resolve_names(&names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn plain_names_are_kept() {
        assert_eq!(resolve(&["pay", "get_payment", "r#type"]), ["pay", "get_payment", "r#type"]);
    }

    #[test]
    fn reserved_names_get_the_suffix() {
        for name in RESERVED {
            assert_eq!(resolve(&[name]), [format!("{name}_rpc")]);
        }
    }

    #[test]
    fn a_renamed_method_never_takes_a_later_methods_name() {
        assert_eq!(resolve(&["new", "new_rpc"]), ["new_rpc_rpc", "new_rpc"]);
        assert_eq!(resolve(&["new_rpc", "new"]), ["new_rpc", "new_rpc_rpc"]);
    }

    #[test]
    fn duplicates_after_snake_casing_are_told_apart_in_proto_order() {
        // `GetItem` and `getItem`; `Type` and `type`; `Self` and `Self_`.
        assert_eq!(resolve(&["get_item", "get_item"]), ["get_item", "get_item_rpc"]);
        assert_eq!(resolve(&["r#type", "r#type"]), ["r#type", "type_rpc"]);
        assert_eq!(resolve(&["self_", "self_", "self__rpc"]), ["self_", "self__rpc_rpc", "self__rpc"]);
    }
}

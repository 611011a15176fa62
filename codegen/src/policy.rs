//! The `(trellis.method)` option of `trellis/options.proto`: read from the
//! compiled protos, checked, and turned into `MethodPolicy` tokens.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use proc_macro2::{Literal, TokenStream};
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MethodDescriptor};
use prost_types::method_options::IdempotencyLevel;
use quote::quote;

use crate::Error;

/// The name under which protos import the options.
pub(crate) const OPTIONS_PROTO: &str = "trellis/options.proto";

/// The extension's full name and field number in `MethodOptions`.
const EXTENSION: &str = "trellis.method";
const EXTENSION_NUMBER: i32 = 50551;

/// Field numbers, for pointing errors at the offending line.
const METHOD_OPTIONS: i32 = 4;
const TIMEOUT: i32 = 1;
const MAX_ATTEMPTS: i32 = 2;
const HEDGE: i32 = 3;
const HASH_KEY: i32 = 4;
const HEDGE_DELAY: i32 = 1;
const HEDGE_MAX_ATTEMPTS: i32 = 2;

/// The most attempts a retry policy may allow.
const MAX_RETRY_ATTEMPTS: u32 = 10;

/// The policy of one method, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    timeout: Option<Duration>,
    /// 0 leaves the default.
    max_attempts: u32,
    hedge: Option<Hedge>,
    hash_key: Option<HashKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Hedge {
    delay: Duration,
    /// 0 leaves the default.
    max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HashKey {
    name: String,
    number: u32,
    kind: HashKeyKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashKeyKind {
    Bytes,
    Varint { zigzag: bool },
    Fixed32,
    Fixed64,
}

/// Reads the policy of every method that sets `(trellis.method)`, keyed by
/// the method's full name (`pkg.Service.Method`).
///
/// # Errors
///
/// The first option that is out of range or unsafe, located in its file.
pub(crate) fn read(pool: &DescriptorPool, includes: &[PathBuf]) -> Result<HashMap<String, Policy>, Error> {
    let mut policies = HashMap::new();
    let Some(extension) = pool.get_extension_by_name(EXTENSION) else {
        return Ok(policies);
    };
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&extension) {
                continue;
            }
            if let Some(option) = options.get_extension(&extension).as_message() {
                let policy = check(&method, option).map_err(|(path, message)| {
                    let position = option_position(&method, EXTENSION_NUMBER, &path);
                    let message = format!("method {}: {message}", method.full_name());
                    Error::at(method.parent_file().name(), position, message, includes)
                })?;
                policies.insert(method.full_name().to_owned(), policy);
            }
        }
    }
    Ok(policies)
}

/// A problem with an option: the field path under `(trellis.method)` it is
/// about, and what to do.
type Problem = (Vec<i32>, String);

fn check(method: &MethodDescriptor, option: &DynamicMessage) -> Result<Policy, Problem> {
    let timeout = string(option, "timeout")
        .map(|text| {
            duration(&text).ok_or_else(|| {
                let message = format!(
                    "`timeout: \"{text}\"` is not a positive duration; write one like \"2s\" or \"250ms\""
                );
                (vec![TIMEOUT], message)
            })
        })
        .transpose()?;

    let max_attempts = uint(option, "max_attempts");
    if max_attempts > MAX_RETRY_ATTEMPTS {
        return Err((
            vec![MAX_ATTEMPTS],
            format!(
                "`max_attempts: {max_attempts}` is more than {MAX_RETRY_ATTEMPTS}; retries multiply the load on a \
                 struggling service, so set at most {MAX_RETRY_ATTEMPTS} (1 turns retries off)"
            ),
        ));
    }

    let hedge = match option.get_field_by_name("hedge") {
        Some(hedge) if option.has_field_by_name("hedge") => {
            hedge.as_message().map(|hedge| check_hedge(method, hedge)).transpose()?
        }
        _ => None,
    };

    let hash_key = string(option, "hash_key").map(|name| check_hash_key(method, &name)).transpose()?;

    Ok(Policy { timeout, max_attempts, hedge, hash_key })
}

fn check_hedge(method: &MethodDescriptor, hedge: &DynamicMessage) -> Result<Hedge, Problem> {
    let idempotency = method.method_descriptor_proto().options.as_ref().map(|o| o.idempotency_level());
    if !matches!(idempotency, Some(IdempotencyLevel::NoSideEffects | IdempotencyLevel::Idempotent)) {
        return Err((
            vec![HEDGE],
            "hedging sends a call twice; mark the method `option idempotency_level = IDEMPOTENT;` \
             (or NO_SIDE_EFFECTS), or remove the hedge"
                .to_owned(),
        ));
    }
    let delay = match string(hedge, "delay") {
        Some(text) => duration(&text).ok_or_else(|| {
            (
                vec![HEDGE, HEDGE_DELAY],
                format!("hedge `delay: \"{text}\"` is not a positive duration; write one like \"50ms\""),
            )
        })?,
        None => {
            return Err((
                vec![HEDGE],
                "the hedge has no `delay`; add how long to wait before sending another attempt, \
                 like `delay: \"50ms\"`"
                    .to_owned(),
            ));
        }
    };
    let max_attempts = uint(hedge, "max_attempts");
    if !matches!(max_attempts, 0 | 2..=4) {
        return Err((
            vec![HEDGE, HEDGE_MAX_ATTEMPTS],
            format!(
                "hedge `max_attempts: {max_attempts}` is out of range; set 2 to 4 attempts in flight, \
                 the first included (or leave it out for 2)"
            ),
        ));
    }
    Ok(Hedge { delay, max_attempts })
}

fn check_hash_key(method: &MethodDescriptor, name: &str) -> Result<HashKey, Problem> {
    let problem = |message: String| (vec![HASH_KEY], message);
    if method.is_client_streaming() {
        return Err(problem(format!(
            "`hash_key: \"{name}\"` on a client-streaming method, which has no single request to route by; \
             remove the hash_key"
        )));
    }
    let input = method.input();
    let Some(field) = input.get_field_by_name(name) else {
        let fields: Vec<String> = input.fields().map(|f| format!("`{}`", f.name())).collect();
        let fields = if fields.is_empty() { "it has none".to_owned() } else { fields.join(", ") };
        return Err(problem(format!(
            "`hash_key: \"{name}\"` names no field of the request `{}`; name one of its top-level \
             string, bytes or integer fields: {fields}",
            input.full_name()
        )));
    };
    let kind = match field.kind() {
        _ if field.is_list() || field.is_map() => None,
        Kind::String | Kind::Bytes => Some(HashKeyKind::Bytes),
        Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 => {
            Some(HashKeyKind::Varint { zigzag: false })
        }
        Kind::Sint32 | Kind::Sint64 => Some(HashKeyKind::Varint { zigzag: true }),
        Kind::Fixed32 | Kind::Sfixed32 => Some(HashKeyKind::Fixed32),
        Kind::Fixed64 | Kind::Sfixed64 => Some(HashKeyKind::Fixed64),
        Kind::Double | Kind::Float | Kind::Bool | Kind::Message(_) | Kind::Enum(_) => None,
    };
    let Some(kind) = kind else {
        return Err(problem(format!(
            "`hash_key: \"{name}\"` is a {} field of `{}`; name a singular string, bytes or integer field",
            type_name(&field),
            input.full_name()
        )));
    };
    Ok(HashKey { name: name.to_owned(), number: field.number(), kind })
}

pub(crate) fn type_name(field: &prost_reflect::FieldDescriptor) -> String {
    let kind = match field.kind() {
        Kind::Message(message) if field.is_map() => {
            let key = message.map_entry_key_field().kind();
            let value = message.map_entry_value_field().kind();
            return format!("map<{}, {}>", kind_name(&key), kind_name(&value));
        }
        kind => kind_name(&kind),
    };
    if field.is_list() { format!("repeated {kind}") } else { kind }
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(message) => format!("message `{}`", message.full_name()),
        Kind::Enum(enumeration) => format!("enum `{}`", enumeration.full_name()),
        scalar => format!("{scalar:?}").to_lowercase(),
    }
}

/// A set, non-empty string field.
fn string(message: &DynamicMessage, name: &str) -> Option<String> {
    let value = message.get_field_by_name(name)?;
    value.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

fn uint(message: &DynamicMessage, name: &str) -> u32 {
    message.get_field_by_name(name).and_then(|v| v.as_u32()).unwrap_or(0)
}

/// A humantime duration of more than zero.
fn duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim()).ok().filter(|d| !d.is_zero())
}

/// The 1-based line and column of the most precise source location known for
/// `field_path` under the method's option numbered `extension` (falling back
/// to the option, then to the method).
pub(crate) fn option_position(
    method: &MethodDescriptor,
    extension: i32,
    field_path: &[i32],
) -> Option<(usize, usize)> {
    let file = method.parent_file();
    let locations = &file.file_descriptor_proto().source_code_info.as_ref()?.location;
    let mut path = method.path().to_vec();
    path.extend([METHOD_OPTIONS, extension]);
    path.extend(field_path);
    let method_len = method.path().len();
    (method_len..=path.len()).rev().find_map(|len| {
        let location = locations.iter().find(|l| l.path == path[..len])?;
        let line = usize::try_from(*location.span.first()?).ok()?;
        let column = usize::try_from(*location.span.get(1)?).ok()?;
        Some((line + 1, column + 1))
    })
}

/// `.with_policy(...)` for a method's descriptor.
pub(crate) fn tokens(codegen: &syn::Path, policy: &Policy) -> TokenStream {
    let mut tokens = quote!(#codegen::MethodPolicy::DEFAULT);
    if let Some(timeout) = policy.timeout {
        let timeout = duration_tokens(timeout);
        tokens.extend(quote!(.with_timeout(#timeout)));
    }
    if policy.max_attempts != 0 {
        let max_attempts = Literal::u32_unsuffixed(policy.max_attempts);
        tokens.extend(quote!(.with_max_attempts(#max_attempts)));
    }
    if let Some(hedge) = &policy.hedge {
        let delay = duration_tokens(hedge.delay);
        let max_attempts =
            Literal::u32_unsuffixed(if hedge.max_attempts == 0 { 2 } else { hedge.max_attempts });
        tokens.extend(quote!(.with_hedge(#codegen::HedgePolicy::new(#delay, #max_attempts))));
    }
    if let Some(key) = &policy.hash_key {
        let name = &key.name;
        let number = Literal::u32_unsuffixed(key.number);
        let kind = match key.kind {
            HashKeyKind::Bytes => quote!(Bytes),
            HashKeyKind::Varint { zigzag } => quote!(Varint { zigzag: #zigzag }),
            HashKeyKind::Fixed32 => quote!(Fixed32),
            HashKeyKind::Fixed64 => quote!(Fixed64),
        };
        tokens.extend(quote! {
            .with_hash_key(#codegen::HashKeyField::new(#name, #number, #codegen::HashKeyKind::#kind))
        });
    }
    quote!(.with_policy(#tokens))
}

fn duration_tokens(duration: Duration) -> TokenStream {
    let millis = u64::try_from(duration.as_millis())
        .ok()
        .filter(|_| duration.subsec_nanos().is_multiple_of(1_000_000));
    match millis {
        Some(millis) => {
            let millis = Literal::u64_unsuffixed(millis);
            quote!(::core::time::Duration::from_millis(#millis))
        }
        None => {
            let secs = Literal::u64_unsuffixed(duration.as_secs());
            let nanos = Literal::u32_unsuffixed(duration.subsec_nanos());
            quote!(::core::time::Duration::new(#secs, #nanos))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codegen() -> syn::Path {
        syn::parse_str("::trellis::codegen").expect("path")
    }

    #[test]
    fn durations_print_as_millis_when_whole() {
        let tokens = duration_tokens(Duration::from_millis(2500)).to_string();
        assert_eq!(tokens, ":: core :: time :: Duration :: from_millis (2500)");
        let tokens = duration_tokens(Duration::new(1, 500)).to_string();
        assert_eq!(tokens, ":: core :: time :: Duration :: new (1 , 500)");
        let tokens = duration_tokens(Duration::MAX).to_string();
        assert!(tokens.contains("Duration :: new (18446744073709551615 , 999999999)"), "{tokens}");
    }

    #[test]
    fn only_set_fields_are_generated() {
        let policy = Policy { timeout: None, max_attempts: 0, hedge: None, hash_key: None };
        let text = tokens(&codegen(), &policy).to_string();
        assert_eq!(text, ". with_policy (:: trellis :: codegen :: MethodPolicy :: DEFAULT)");

        let policy = Policy {
            timeout: Some(Duration::from_secs(2)),
            max_attempts: 4,
            hedge: Some(Hedge { delay: Duration::from_millis(50), max_attempts: 0 }),
            hash_key: Some(HashKey {
                name: "id".to_owned(),
                number: 7,
                kind: HashKeyKind::Varint { zigzag: true },
            }),
        };
        let text = tokens(&codegen(), &policy).to_string();
        for expected in [
            ". with_timeout (:: core :: time :: Duration :: from_millis (2000))",
            ". with_max_attempts (4)",
            "HedgePolicy :: new (:: core :: time :: Duration :: from_millis (50) , 2)",
            "HashKeyField :: new (\"id\" , 7 , :: trellis :: codegen :: HashKeyKind :: Varint { zigzag : true })",
        ] {
            assert!(text.contains(expected), "{expected} missing from {text}");
        }
    }

    #[test]
    fn durations_must_be_positive_humantime() {
        assert_eq!(duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(duration("1m 30s"), Some(Duration::from_secs(90)));
        assert_eq!(duration("0s"), None);
        assert_eq!(duration("soon"), None);
        assert_eq!(duration("-1s"), None);
    }
}

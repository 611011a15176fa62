//! JSON to a gRPC request, and a gRPC response back to JSON, through
//! `prost-reflect`'s proto3 JSON mapping.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderMap;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor,
    SerializeOptions,
};
use serde_json::{Map, Value};
use tonic::Code;

use super::route::Matched;
use crate::protocol::{GRPC_MESSAGE, GRPC_STATUS};

/// Why a request could not be transcoded: an `INVALID_ARGUMENT` with this
/// message.
pub(crate) type Invalid = String;

/// The request message of `matched`, from its path variables, query string
/// and JSON body.
pub(crate) fn request_message(
    matched: &Matched<'_>,
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, Invalid> {
    let route = matched.route;
    let input = &route.input;
    let body_rule = route.rule.body();

    let mut root = match body_rule {
        Some(_) if body.iter().all(u8::is_ascii_whitespace) => Map::new(),
        Some("*") => match parse_json(body)? {
            Value::Object(map) => map,
            other => {
                return Err(format!(
                    "the body must be a JSON object for `{}`, not {}",
                    input.full_name(),
                    kind_of(&other)
                ));
            }
        },
        Some(field) => {
            let mut map = Map::new();
            map.insert(field.to_owned(), parse_json(body)?);
            map
        }
        None if body.iter().all(u8::is_ascii_whitespace) => Map::new(),
        None => {
            return Err(format!(
                "{} {} takes no body; send the fields of `{}` in the path and query string",
                route.http_method,
                route.rule.path().text(),
                input.full_name()
            ));
        }
    };

    for (field_path, value) in &matched.variables {
        let names: Vec<&str> = field_path.to_vec();
        set(&mut root, input, &names, value, false).map_err(|problem| {
            format!("path variable `{{{}}}` = `{value}`: {problem}", field_path.join("."))
        })?;
    }

    if let Some(query) = query.filter(|q| !q.is_empty()) {
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if body_rule == Some("*") {
                return Err(format!(
                    "query parameter `{key}`: every field of `{}` travels in the body of this route; move it there",
                    input.full_name()
                ));
            }
            let names: Vec<&str> = key.split('.').collect();
            if matched.variables.iter().any(|(path, _)| path.join(".") == key) {
                return Err(format!("query parameter `{key}` is bound by the path already; remove it"));
            }
            if body_rule.is_some_and(|b| names.first() == Some(&b)) {
                return Err(format!("query parameter `{key}` is part of the body; send it there"));
            }
            set(&mut root, input, &names, &value, true)
                .map_err(|problem| format!("query parameter `{key}`: {problem}"))?;
        }
    }

    // The path to the field at fault goes in the message.
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(Value::Object(root), &mut track);
    DynamicMessage::deserialize_with_options(input.clone(), deserializer, &DeserializeOptions::new()).map_err(
        |e| match track.path().to_string().as_str() {
            "." | "" => format!("the request does not fit `{}`: {e}", input.full_name()),
            path => format!("field `{path}` of `{}`: {e}", input.full_name()),
        },
    )
}

fn parse_json(body: &[u8]) -> Result<Value, Invalid> {
    serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Sets the field at `names` (proto or JSON names) under `root` to `text`,
/// converted to the JSON its type takes; `repeatable` lets a repeated field
/// collect one value per occurrence (query parameters).
fn set(
    root: &mut Map<String, Value>,
    message: &MessageDescriptor,
    names: &[&str],
    text: &str,
    repeatable: bool,
) -> Result<(), String> {
    let Some((name, rest)) = names.split_first() else {
        return Err("empty field path".to_owned());
    };
    let field = find_field(message, name)
        .ok_or_else(|| format!("`{}` has no field `{name}`", message.full_name()))?;
    let key = field.name().to_owned();
    // The body may name the field in lowerCamelCase; one key per field.
    if field.json_name() != key
        && let Some(value) = root.remove(field.json_name())
    {
        root.insert(key.clone(), value);
    }
    if !rest.is_empty() {
        let Kind::Message(inner) = field.kind() else {
            return Err(format!("`{name}` is not a message, so it has no field `{}`", rest.join(".")));
        };
        if field.is_list() || field.is_map() {
            return Err(format!("`{name}` is repeated; only a singular message's fields can be set here"));
        }
        let entry = root.entry(key).or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(map) = entry else {
            return Err(format!("`{name}` is set twice, once as a value and once by its fields"));
        };
        return set(map, &inner, rest, text, repeatable);
    }
    if field.is_map() || matches!(field.kind(), Kind::Message(_)) {
        return Err(format!(
            "`{name}` is a message or map field; set its scalar fields one by one, like `{name}.field`"
        ));
    }
    let value = scalar(&field, text)?;
    if field.is_list() {
        if !repeatable {
            return Err(format!("`{name}` is repeated"));
        }
        match root.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
            Value::Array(values) => values.push(value),
            _ => return Err(format!("`{name}` is set twice")),
        }
    } else {
        root.insert(key, value);
    }
    Ok(())
}

fn find_field(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message.get_field_by_name(name).or_else(|| message.get_field_by_json_name(name))
}

/// A path or query value as the JSON the field's type takes: the JSON mapping
/// accepts integers, floats and enum numbers as strings.
fn scalar(field: &FieldDescriptor, text: &str) -> Result<Value, String> {
    match field.kind() {
        Kind::Bool => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("`{text}` is not a boolean for `{}`; write true or false", field.name())),
        },
        Kind::Enum(_) => match text.parse::<i64>() {
            Ok(number) => Ok(Value::from(number)),
            Err(_) => Ok(Value::String(text.to_owned())),
        },
        kind @ (Kind::Int32 | Kind::Sint32 | Kind::Sfixed32) => {
            integer(field, &kind, text, text.parse::<i32>().is_ok())
        }
        kind @ (Kind::Int64 | Kind::Sint64 | Kind::Sfixed64) => {
            integer(field, &kind, text, text.parse::<i64>().is_ok())
        }
        kind @ (Kind::Uint32 | Kind::Fixed32) => integer(field, &kind, text, text.parse::<u32>().is_ok()),
        kind @ (Kind::Uint64 | Kind::Fixed64) => integer(field, &kind, text, text.parse::<u64>().is_ok()),
        Kind::Double | Kind::Float
            if text.parse::<f64>().is_err() && !["NaN", "Infinity", "-Infinity"].contains(&text) =>
        {
            Err(format!("`{text}` is not a number for the {:?} field `{}`", field.kind(), field.name()))
        }
        _ => Ok(Value::String(text.to_owned())),
    }
}

fn integer(field: &FieldDescriptor, kind: &Kind, text: &str, fits: bool) -> Result<Value, String> {
    if fits {
        Ok(Value::String(text.to_owned()))
    } else {
        let kind = format!("{kind:?}").to_lowercase();
        Err(format!("`{text}` is not an {kind} for the field `{}`", field.name()))
    }
}

/// `message` encoded as one gRPC message frame.
pub(crate) fn grpc_frame(message: &DynamicMessage) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message.encode_raw(&mut buf);
    buf.freeze()
}

/// Takes the next complete gRPC message frame off the front of `buf`.
pub(crate) fn next_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err(
            "the service sent a compressed message, which the REST gateway does not decode".to_owned()
        );
    }
    let len = usize::try_from(u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]])).unwrap_or(usize::MAX);
    if buf.len() < 5 + len {
        return Ok(None);
    }
    buf.advance(5);
    Ok(Some(buf.split_to(len).freeze()))
}

/// A response message as JSON, or its `response_body` field.
pub(crate) fn response_json(
    output: &MessageDescriptor,
    response_body: Option<&str>,
    bytes: Bytes,
) -> Result<Value, String> {
    let message = DynamicMessage::decode(output.clone(), bytes)
        .map_err(|e| format!("the service's response does not decode as `{}`: {e}", output.full_name()))?;
    let options = SerializeOptions::new().skip_default_fields(response_body.is_none());
    let json = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| format!("the response does not map to JSON: {e}"))?;
    match response_body {
        None => Ok(json),
        Some(name) => {
            let key = output.get_field_by_name(name).map(|f| f.json_name().to_owned()).unwrap_or_default();
            Ok(json.get(&key).cloned().unwrap_or(Value::Null))
        }
    }
}

/// A failed call as the REST client sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failed {
    pub(crate) code: Code,
    pub(crate) message: String,
    /// `google.rpc.Status.details`, each as JSON (see [`details`]).
    pub(crate) details: Vec<Value>,
}

/// The gRPC status in `headers` (trailers, or the headers of a trailers-only
/// response), if there is one, with the details of `grpc-status-details-bin`
/// in JSON through the messages `pool` knows.
pub(crate) fn status_of(headers: &HeaderMap, pool: &DescriptorPool) -> Option<Failed> {
    let code = headers.get(&GRPC_STATUS)?.to_str().ok()?.parse::<i32>().ok()?;
    let message = headers
        .get(&GRPC_MESSAGE)
        .and_then(|v| v.to_str().ok())
        .map(|m| percent_encoding::percent_decode_str(m).decode_utf8_lossy().into_owned())
        .unwrap_or_default();
    let details =
        headers.get("grpc-status-details-bin").map(|v| details(v.as_bytes(), pool)).unwrap_or_default();
    Some(Failed { code: Code::from_i32(code), message, details })
}

/// `google.rpc.Status`, as `grpc-status-details-bin` carries it.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// The details of a `grpc-status-details-bin` value (base64 of a
/// `google.rpc.Status`), as grpc-gateway renders them: each `Any` in the
/// proto3 JSON form, `{"@type": URL, ...fields}`, when `pool` knows its
/// message (the service's protos import it, as `google/rpc/error_details.proto`
/// can be); otherwise `{"@type": URL, "value": BASE64}`. A value that does not
/// decode gives no details: the code and message still say what failed.
pub(crate) fn details(value: &[u8], pool: &DescriptorPool) -> Vec<Value> {
    use base64::Engine as _;
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let Ok(bytes) = engine.decode(value) else { return Vec::new() };
    let Ok(status) = <RpcStatus as prost::Message>::decode(bytes.as_slice()) else { return Vec::new() };
    status
        .details
        .into_iter()
        .map(|any| {
            let name = any.type_url.rsplit('/').next().unwrap_or_default();
            let known = pool.get_message_by_name(name).and_then(|descriptor| {
                let message = DynamicMessage::decode(descriptor, any.value.as_slice()).ok()?;
                message.serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new()).ok()
            });
            match known {
                Some(Value::Object(fields)) => {
                    let mut object = serde_json::Map::with_capacity(fields.len() + 1);
                    object.insert("@type".to_owned(), Value::String(any.type_url));
                    object.extend(fields);
                    Value::Object(object)
                }
                _ => serde_json::json!({
                    "@type": any.type_url,
                    "value": base64::engine::general_purpose::STANDARD.encode(&any.value),
                }),
            }
        })
        .collect()
}

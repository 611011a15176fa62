//! An OpenAPI 3 document per service with REST routes, from its checked
//! `google.api.http` rules and its messages under the proto3 JSON mapping.

use std::collections::{BTreeMap, HashMap};

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};
use serde_json::{Map, Value, json};

use crate::http::{Rule, Segment};

/// The document of every service that has a route, keyed by its full name.
pub(crate) fn documents(pool: &DescriptorPool, rules: &HashMap<String, Rule>) -> HashMap<String, String> {
    let mut documents = HashMap::new();
    for service in pool.services() {
        let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        let mut schemas = Schemas::default();
        for method in service.methods() {
            let Some(rule) = rules.get(method.full_name()) else { continue };
            for (index, binding) in std::iter::once(rule).chain(rule.additional_bindings()).enumerate() {
                let (path, mut operation) = operation(&method, binding, &mut schemas);
                // Each operation has an id of its own: the additional bindings are numbered.
                if index > 0 {
                    let id = format!("{}_{}_{index}", service.name(), method.name());
                    operation["operationId"] = Value::String(id);
                }
                paths.entry(path).or_default().insert(binding.method().as_str().to_lowercase(), operation);
            }
        }
        if paths.is_empty() {
            continue;
        }
        schemas.schemas.insert(
            "trellis.Error".to_owned(),
            json!({
                "type": "object",
                "description": "A failed call: its gRPC status code and message.",
                "properties": {
                    "code": { "type": "integer", "format": "int32" },
                    "message": { "type": "string" },
                    "details": { "type": "array", "items": { "type": "object" } },
                },
            }),
        );
        let document = json!({
            "openapi": "3.0.3",
            "info": { "title": service.full_name(), "version": service.package_name() },
            "tags": [{ "name": service.full_name(), "description": "The gRPC service that serves these routes." }],
            "paths": paths,
            "components": { "schemas": schemas.schemas },
        });
        documents.insert(service.full_name().to_owned(), document.to_string());
    }
    documents
}

/// The OpenAPI path of a binding (`{name=shelves/*}` becomes `{name}`) and
/// its operation.
fn operation(method: &MethodDescriptor, rule: &Rule, schemas: &mut Schemas) -> (String, Value) {
    let input = method.input();
    let mut path = String::new();
    let mut parameters = Vec::new();
    let mut bound: Vec<String> = Vec::new();
    for segment in &rule.path().segments {
        path.push('/');
        match segment {
            Segment::Literal(text) => path.push_str(text),
            Segment::Wildcard => path.push('*'),
            Segment::DoubleWildcard => path.push_str("**"),
            Segment::Variable { field_path, segments } => {
                let name = field_path.join(".");
                path.push_str(&format!("{{{name}}}"));
                let mut schema = field_path_schema(&input, field_path, schemas);
                if segments.as_slice() != [Segment::Wildcard] {
                    schema["pattern"] = Value::String(pattern(segments));
                }
                parameters.push(json!({ "name": name, "in": "path", "required": true, "schema": schema }));
                bound.push(name);
            }
        }
    }
    if let Some(verb) = &rule.path().verb {
        path.push(':');
        path.push_str(verb);
    }

    let body = rule.body();
    if body.is_none() {
        for field in input.fields() {
            if bound.iter().any(|b| b == field.name())
                || matches!(field.kind(), Kind::Message(_))
                || field.is_map()
            {
                continue;
            }
            parameters.push(json!({
                "name": field.json_name(),
                "in": "query",
                "required": false,
                "schema": field_schema(&field, schemas),
            }));
        }
    }

    let mut operation = json!({
        "operationId": format!("{}_{}", method.parent_service().name(), method.name()),
        // The service that serves the route, so a proxy can route it (`trellis nginx`).
        "tags": [method.parent_service().full_name()],
        "parameters": parameters,
    });
    operation["summary"] = Value::String(method.name().to_owned());
    if let Some(body) = body {
        let schema = match body {
            "*" => schemas.message(&input),
            field => input.get_field_by_name(field).map(|f| field_schema(&f, schemas)).unwrap_or(json!({})),
        };
        operation["requestBody"] =
            json!({ "required": true, "content": { "application/json": { "schema": schema } } });
    }
    let output = method.output();
    let response = match rule.response_body() {
        Some(field) => {
            output.get_field_by_name(field).map(|f| field_schema(&f, schemas)).unwrap_or(json!({}))
        }
        None => schemas.message(&output),
    };
    let content = if method.is_server_streaming() {
        let line = json!({
            "type": "object",
            "properties": { "result": response, "error": { "$ref": "#/components/schemas/trellis.Error" } },
        });
        json!({ "application/x-ndjson": { "schema": line }, "text/event-stream": { "schema": { "type": "string" } } })
    } else {
        json!({ "application/json": { "schema": response } })
    };
    operation["responses"] = json!({
        "200": { "description": "OK", "content": content },
        "default": {
            "description": "An error, with the HTTP status of its gRPC code",
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/trellis.Error" } } },
        },
    });
    (path, operation)
}

/// A regular expression for what a variable's pattern matches.
fn pattern(segments: &[Segment]) -> String {
    let parts: Vec<String> = segments
        .iter()
        .map(|segment| match segment {
            Segment::Literal(text) => regex_escape(text),
            Segment::Wildcard => "[^/]+".to_owned(),
            Segment::DoubleWildcard => ".*".to_owned(),
            Segment::Variable { .. } => String::new(),
        })
        .collect();
    format!("^{}$", parts.join("/"))
}

fn regex_escape(text: &str) -> String {
    text.chars().flat_map(|c| if "\\.+*?()|[]{}^$".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}

fn field_path_schema(message: &MessageDescriptor, field_path: &[String], schemas: &mut Schemas) -> Value {
    let mut message = message.clone();
    for (i, name) in field_path.iter().enumerate() {
        let Some(field) = message.get_field_by_name(name) else { break };
        if i + 1 == field_path.len() {
            return field_schema(&field, schemas);
        }
        match field.kind() {
            Kind::Message(inner) => message = inner,
            _ => break,
        }
    }
    json!({ "type": "string" })
}

/// The schemas of the messages the operations use, by full name.
#[derive(Default)]
struct Schemas {
    schemas: BTreeMap<String, Value>,
}

impl Schemas {
    /// A `$ref` to `message`, adding its schema (and those it uses), or the
    /// inline schema of a well-known type.
    fn message(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known(message) {
            return schema;
        }
        let name = message.full_name().to_owned();
        if !self.schemas.contains_key(&name) {
            // Placed first, so that a recursive message refers to itself.
            self.schemas.insert(name.clone(), json!({}));
            let mut properties = Map::new();
            for field in message.fields() {
                properties.insert(field.json_name().to_owned(), field_schema(&field, self));
            }
            self.schemas.insert(name.clone(), json!({ "type": "object", "properties": properties }));
        }
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }
}

fn field_schema(field: &FieldDescriptor, schemas: &mut Schemas) -> Value {
    if field.is_map()
        && let Kind::Message(entry) = field.kind()
    {
        let value = field_schema(&entry.map_entry_value_field(), schemas);
        return json!({ "type": "object", "additionalProperties": value });
    }
    let item = kind_schema(&field.kind(), schemas);
    if field.is_list() { json!({ "type": "array", "items": item }) } else { item }
}

fn kind_schema(kind: &Kind, schemas: &mut Schemas) -> Value {
    match kind {
        Kind::Double => json!({ "type": "number", "format": "double" }),
        Kind::Float => json!({ "type": "number", "format": "float" }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({ "type": "integer", "format": "int32" }),
        Kind::Uint32 | Kind::Fixed32 => json!({ "type": "integer", "format": "int64", "minimum": 0 }),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({ "type": "string", "format": "int64" }),
        Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64" }),
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::String => json!({ "type": "string" }),
        Kind::Bytes => json!({ "type": "string", "format": "byte" }),
        Kind::Enum(enumeration) => {
            let values: Vec<String> = enumeration.values().map(|v| v.name().to_owned()).collect();
            json!({ "type": "string", "enum": values })
        }
        Kind::Message(message) => schemas.message(message),
    }
}

/// The JSON form of a well-known type, as the mapping gives it.
fn well_known(message: &MessageDescriptor) -> Option<Value> {
    Some(match message.full_name() {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => json!({ "type": "string", "example": "1.5s" }),
        "google.protobuf.FieldMask" => json!({ "type": "string" }),
        "google.protobuf.Empty" => json!({ "type": "object" }),
        "google.protobuf.Struct" => json!({ "type": "object", "additionalProperties": {} }),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({ "type": "array", "items": {} }),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": { "@type": { "type": "string" } },
            "additionalProperties": {},
        }),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => json!({ "type": "number" }),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => json!({ "type": "integer" }),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({ "type": "string", "format": "int64" })
        }
        "google.protobuf.BoolValue" => json!({ "type": "boolean" }),
        "google.protobuf.StringValue" => json!({ "type": "string" }),
        "google.protobuf.BytesValue" => json!({ "type": "string", "format": "byte" }),
        _ => return None,
    })
}

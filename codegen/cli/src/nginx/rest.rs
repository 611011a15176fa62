//! The REST routes of a service, read from the OpenAPI document its
//! instances serve at `/openapi.json` (each operation is tagged with the
//! gRPC service that serves it), as Nginx regex locations.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How long one instance has to send its OpenAPI document.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The most an OpenAPI document may hold.
const MAX_DOCUMENT: usize = 16 * 1024 * 1024;

/// Where the gateway serves its OpenAPI document.
const OPENAPI_PATH: &str = "/openapi.json";

/// One REST path of a service: the PCRE an Nginx `location ~` matches, and
/// what it serves, for the comment above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RestRoute {
    pub(crate) regex: String,
    pub(crate) methods: Vec<String>,
    pub(crate) path: String,
}

/// The REST routes `service` has, from the first of `endpoints` that
/// answers. An instance without REST routes (no `/openapi.json`) gives none.
pub(crate) async fn fetch(service: &str, endpoints: &[String]) -> Result<Vec<RestRoute>, String> {
    let mut problems = Vec::new();
    for endpoint in endpoints {
        match get(endpoint).await {
            Ok(None) => return Ok(Vec::new()),
            Ok(Some(body)) => {
                let document: Value = serde_json::from_slice(&body)
                    .map_err(|e| format!("{endpoint}{OPENAPI_PATH} is not JSON: {e}"))?;
                return routes_of(&document, service).map_err(|e| format!("{endpoint}{OPENAPI_PATH}: {e}"));
            }
            Err(problem) => problems.push(problem),
        }
    }
    Err(problems.join("; "))
}

/// `GET /openapi.json` from `endpoint`: `None` when it has none (404).
async fn get(endpoint: &str) -> Result<Option<Bytes>, String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(endpoint)
            .await
            .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {endpoint} failed: {e}"))?;
        let connection = tokio::spawn(connection);
        let request = Request::get(OPENAPI_PATH)
            .header(http::header::HOST, endpoint)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot build GET {OPENAPI_PATH}: {e}"))?;
        let response =
            sender.send_request(request).await.map_err(|e| format!("GET {endpoint}{OPENAPI_PATH}: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|e| format!("GET {endpoint}{OPENAPI_PATH}: reading the answer: {e}"))?
            .to_bytes();
        connection.abort();
        match status {
            StatusCode::OK => Ok(Some(body)),
            StatusCode::NOT_FOUND => Ok(None),
            other => Err(format!("GET {endpoint}{OPENAPI_PATH} answered {other}")),
        }
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("{endpoint} sent no OpenAPI document within {FETCH_TIMEOUT:?}")))
}

/// The routes of the operations tagged `service` in an OpenAPI document.
pub(crate) fn routes_of(document: &Value, service: &str) -> Result<Vec<RestRoute>, String> {
    let Some(paths) = document["paths"].as_object() else {
        return Err("the document has no `paths` object".to_owned());
    };
    let mut routes = Vec::new();
    for (path, operations) in paths {
        let Some(operations) = operations.as_object() else { continue };
        let mut methods = Vec::new();
        let mut parameters = Vec::new();
        for (method, operation) in operations {
            let tagged = operation["tags"].as_array().is_some_and(|tags| tags.iter().any(|t| t == service));
            if !tagged {
                continue;
            }
            methods.push(method.to_uppercase());
            parameters.extend(operation["parameters"].as_array().into_iter().flatten().cloned());
        }
        if methods.is_empty() {
            continue;
        }
        routes.push(RestRoute { regex: regex(path, &parameters)?, methods, path: path.clone() });
    }
    Ok(routes)
}

/// The anchored PCRE of an OpenAPI path: `{var}` as its parameter's
/// `pattern` (the template's segments) or one segment, `*` one segment,
/// `**` any rest.
fn regex(path: &str, parameters: &[Value]) -> Result<String, String> {
    let pattern_of = |name: &str| {
        parameters
            .iter()
            .find(|p| p["in"] == "path" && p["name"] == name)
            .and_then(|p| p["schema"]["pattern"].as_str())
            .map(|p| p.trim_start_matches('^').trim_end_matches('$').to_owned())
    };
    if !path.starts_with('/') || path.contains(['"', '\\', ' ', ';', '\'']) {
        return Err(format!("the path `{path}` cannot be an Nginx location"));
    }
    let mut out = String::from("^");
    for segment in path[1..].split('/') {
        out.push('/');
        match segment {
            "*" => out.push_str("[^/]+"),
            "**" => out.push_str(".*"),
            _ => {
                let mut rest = segment;
                while let Some(open) = rest.find('{') {
                    out.push_str(&escape(&rest[..open]));
                    let Some(close) = rest[open..].find('}') else {
                        return Err(format!("the path `{path}` has a `{{` without its `}}`"));
                    };
                    let name = &rest[open + 1..open + close];
                    out.push_str(&pattern_of(name).unwrap_or_else(|| "[^/]+".to_owned()));
                    rest = &rest[open + close + 1..];
                }
                out.push_str(&escape(rest));
            }
        }
    }
    out.push('$');
    Ok(out)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_become_anchored_regexes() {
        let name =
            serde_json::json!([{ "name": "name", "in": "path", "schema": { "pattern": "^shelves/[^/]+$" } }]);
        assert_eq!(
            regex("/v1/{name}/books/{id}", name.as_array().unwrap()).unwrap(),
            "^/v1/shelves/[^/]+/books/[^/]+$"
        );
        assert_eq!(regex("/v1/books/{id}:archive", &[]).unwrap(), "^/v1/books/[^/]+:archive$");
        assert_eq!(regex("/v1/files/**", &[]).unwrap(), "^/v1/files/.*$");
        assert_eq!(regex("/v1/*/x.json", &[]).unwrap(), "^/v1/[^/]+/x\\.json$");
        assert!(regex("/v1/{open", &[]).is_err());
        assert!(regex("/v1/a\"b", &[]).is_err());
    }

    #[test]
    fn only_the_services_own_operations_are_its_routes() {
        let document = serde_json::json!({ "paths": {
            "/v1/payments": { "post": { "tags": ["a.v1.A"] } },
            "/v1/payments/{orderId}": { "get": { "tags": ["a.v1.A"] }, "delete": { "tags": ["a.v1.A"] } },
            "/v1/shipments": { "post": { "tags": ["b.v1.B"] } },
        }});
        let routes = routes_of(&document, "a.v1.A").unwrap();
        assert_eq!(routes.len(), 2, "{routes:?}");
        assert_eq!(routes[1].regex, "^/v1/payments/[^/]+$");
        assert_eq!(routes[1].methods, ["DELETE", "GET"]);
        assert!(routes_of(&serde_json::json!({}), "a.v1.A").is_err());
    }
}

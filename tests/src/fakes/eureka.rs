//! A fake Eureka server: the parts of Eureka's REST API that Trellis's
//! `eureka://` backend, `py-eureka-client` and `eureka-js-client` use.
//!
//! Implemented, as documented in Netflix's "Eureka REST operations", under
//! a base path of the fake's choosing (`/eureka` as Spring Cloud serves it,
//! `/eureka/v2` as Netflix's server does):
//! - `POST /apps/APP` with a JSON `{"instance": {...}}` (204); the app name
//!   is stored in capitals and matched in any case;
//! - `PUT /apps/APP/ID` heartbeats (200, or 404 for an unknown instance);
//! - `PUT /apps/APP/ID/status?value=STATUS` and `DELETE` of it;
//! - `DELETE /apps/APP/ID` (200, or 404);
//! - `GET /apps`, `/apps/delta`, `/apps/APP`, `/apps/APP/ID`, in JSON when
//!   the request accepts `application/json`, in XML otherwise (as the real
//!   server negotiates), with `versions__delta` and `apps__hashcode`;
//! - lease expiry: an instance not renewed within its
//!   `leaseInfo.durationInSecs` (90 s by default) is evicted.
//!
//! Not modelled: the response cache (a real server serves reads from a
//! cache refreshed every 30 s, so changes show up to 30 s late there and at
//! once here), self-preservation (a real server stops evicting when too
//! many renewals are missing), the 60 s eviction period (the fake evicts
//! within 50 ms), peer replication, regions and zones of servers,
//! `overriddenstatus` rules beyond a plain override, ASG status, and
//! compression. Deltas hold the changes of the last 3 minutes, as the real
//! server's do.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::{HttpServer, Reply, Req, epoch_millis, json as json_reply, reply, text};

/// How long changes stay in the delta.
const DELTA_RETENTION: Duration = Duration::from_secs(180);

/// A running fake server; stops when dropped.
#[derive(Debug)]
pub struct FakeEureka {
    server: HttpServer,
    base: String,
    state: Arc<Mutex<State>>,
    _evictor: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct State {
    /// Instances by app (in capitals), then id.
    apps: BTreeMap<String, BTreeMap<String, Lease>>,
    /// Recent changes: when, and the instance record with its `actionType`.
    changes: VecDeque<(Instant, String, Value)>,
    version: u64,
    /// Whether `/apps/delta` is served (403 otherwise, as Spring's `disable-delta`).
    delta: bool,
    /// How many GETs each path (under the base) had.
    gets: BTreeMap<String, usize>,
}

#[derive(Debug, Clone)]
struct Lease {
    record: Value,
    renewed: Instant,
    duration: Duration,
}

impl FakeEureka {
    /// A fake server under `base` (such as `/eureka` or `/eureka/v2`).
    pub async fn start(base: &str) -> FakeEureka {
        Self::start_with_delta(base, true).await
    }

    /// A fake server that serves `/apps/delta` or, when `delta` is false,
    /// refuses it with 403 as a server with deltas disabled does.
    pub async fn start_with_delta(base: &str, delta: bool) -> FakeEureka {
        let base = base.trim_end_matches('/').to_owned();
        let state = Arc::new(Mutex::new(State { delta, ..State::default() }));
        let (handler_state, handler_base) = (state.clone(), base.clone());
        let server = HttpServer::start(move |req| {
            let (state, base) = (handler_state.clone(), handler_base.clone());
            async move { handle(&state, &base, req) }
        })
        .await;
        let evictor = tokio::spawn(evict(state.clone()));
        FakeEureka { server, base, state, _evictor: evictor }
    }

    /// `HOST:PORT` it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    /// `http://HOST:PORT/BASE`, as foreign clients take it.
    pub fn http_url(&self) -> String {
        format!("http://{}{}", self.addr(), self.base)
    }

    /// `eureka://HOST:PORT/BASE` plus `options` (such as `?interval=100ms`).
    pub fn url(&self, options: &str) -> String {
        format!("eureka://{}{}{options}", self.addr(), self.base)
    }

    /// Stops answering (connections refused) until [`restart`](Self::restart).
    pub fn stop(&self) {
        self.server.stop();
    }

    /// Answers again, with the same registry.
    pub async fn restart(&self) {
        self.server.restart().await;
    }

    /// The record of instance `id` of `app`, as the server keeps it.
    pub fn instance(&self, app: &str, id: &str) -> Option<Value> {
        let state = self.state.lock().expect("state");
        state.apps.get(&app.to_ascii_uppercase()).and_then(|a| a.get(id)).map(|l| l.record.clone())
    }

    /// Stores `record` under `app` as it is, renewed forever, for tests of
    /// malformed entries.
    pub fn add_raw_instance(&self, app: &str, id: &str, record: Value) {
        let mut state = self.state.lock().expect("state");
        let lease = Lease { record, renewed: Instant::now(), duration: Duration::from_secs(86_400) };
        state.apps.entry(app.to_ascii_uppercase()).or_default().insert(id.to_owned(), lease);
        state.version += 1;
    }

    /// How many GET requests `path` (under the base, such as `/apps/delta`) had.
    pub fn gets(&self, path: &str) -> usize {
        self.state.lock().expect("state").gets.get(path).copied().unwrap_or(0)
    }

    /// Forgets every instance, as a restarted server.
    pub fn forget_everything(&self) {
        let mut state = self.state.lock().expect("state");
        state.apps.clear();
        state.version += 1;
    }
}

fn handle(state: &Mutex<State>, base: &str, req: Req) -> Reply {
    let Some(rest) = req.path.strip_prefix(base).and_then(|p| p.strip_prefix("/apps")) else {
        return text(StatusCode::NOT_FOUND, format!("the fake Eureka server serves {base}/apps only"));
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let json_wanted = req
        .headers
        .get_all(http::header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("json")));
    let mut state = state.lock().expect("state");
    if req.method == Method::GET {
        *state.gets.entry(format!("/apps{rest}")).or_default() += 1;
    }
    match (&req.method, segments.as_slice()) {
        (&Method::GET, ["delta"]) if !state.delta => text(StatusCode::FORBIDDEN, "delta disabled"),
        (&Method::GET, []) => {
            let apps = state.apps.clone();
            let body = applications(
                &state,
                apps.iter().map(|(name, leases)| {
                    (name.clone(), leases.values().map(|l| l.record.clone()).collect())
                }),
            );
            render(json_wanted, "applications", body)
        }
        (&Method::GET, ["delta"]) => {
            let mut grouped: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for (_, app, record) in &state.changes {
                grouped.entry(app.clone()).or_default().push(record.clone());
            }
            let body = applications(&state, grouped.into_iter());
            render(json_wanted, "applications", body)
        }
        (&Method::GET, [app]) => match state.apps.get(&app.to_ascii_uppercase()) {
            Some(leases) if !leases.is_empty() => {
                let body = application(
                    &app.to_ascii_uppercase(),
                    leases.values().map(|l| l.record.clone()).collect(),
                );
                render(json_wanted, "application", body)
            }
            _ => text(StatusCode::NOT_FOUND, ""),
        },
        (&Method::GET, [app, id]) => match state.apps.get(&app.to_ascii_uppercase()).and_then(|a| a.get(*id))
        {
            Some(lease) => render(json_wanted, "instance", lease.record.clone()),
            None => text(StatusCode::NOT_FOUND, ""),
        },
        (&Method::POST, [app]) => register(&mut state, app, &req.body),
        (&Method::PUT, [app, id]) => {
            let Some(lease) = state.apps.get_mut(&app.to_ascii_uppercase()).and_then(|a| a.get_mut(*id))
            else {
                return text(StatusCode::NOT_FOUND, "");
            };
            lease.renewed = Instant::now();
            lease.record["leaseInfo"]["lastRenewalTimestamp"] = json!(epoch_millis());
            text(StatusCode::OK, "")
        }
        (&Method::PUT | &Method::DELETE, [app, id, "status"]) => {
            let status = if req.method == Method::PUT {
                match req.query.get("value") {
                    Some(value) => value.clone(),
                    None => return text(StatusCode::BAD_REQUEST, "no value"),
                }
            } else {
                "UP".to_owned()
            };
            let app = app.to_ascii_uppercase();
            let Some(lease) = state.apps.get_mut(&app).and_then(|a| a.get_mut(*id)) else {
                return text(StatusCode::NOT_FOUND, "");
            };
            lease.record["status"] = json!(status);
            lease.record["overriddenstatus"] =
                json!(if req.method == Method::PUT { status.as_str() } else { "UNKNOWN" });
            let record = lease.record.clone();
            changed(&mut state, &app, record, "MODIFIED");
            text(StatusCode::OK, "")
        }
        (&Method::DELETE, [app, id]) => {
            let app = app.to_ascii_uppercase();
            match state.apps.get_mut(&app).and_then(|a| a.remove(*id)) {
                Some(lease) => {
                    changed(&mut state, &app, lease.record, "DELETED");
                    text(StatusCode::OK, "")
                }
                None => text(StatusCode::NOT_FOUND, ""),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            format!("the fake Eureka server does not serve {} {}", req.method, req.path),
        ),
    }
}

fn register(state: &mut State, app: &str, body: &[u8]) -> Reply {
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(body) else {
        return text(StatusCode::BAD_REQUEST, "expected a JSON object {\"instance\": {...}}");
    };
    let Some(Value::Object(mut record)) = body.remove("instance") else {
        return text(StatusCode::BAD_REQUEST, "expected a JSON object {\"instance\": {...}}");
    };
    let app = app.to_ascii_uppercase();
    // What the real server's validation rejects.
    for required in ["hostName", "ipAddr", "app", "dataCenterInfo"] {
        if record.get(required).is_none_or(|v| v.is_null() || v.as_str() == Some("")) {
            return text(StatusCode::BAD_REQUEST, format!("Missing {required}"));
        }
    }
    if record.get("app").and_then(Value::as_str).map(str::to_ascii_uppercase).as_deref() != Some(app.as_str())
    {
        return text(StatusCode::BAD_REQUEST, "Mismatched appName");
    }
    let id = match record.get("instanceId").and_then(Value::as_str).filter(|s| !s.is_empty()) {
        Some(id) => id.to_owned(),
        None => record.get("hostName").and_then(Value::as_str).unwrap_or_default().to_owned(),
    };
    let duration = record
        .get("leaseInfo")
        .and_then(|info| info.get("durationInSecs"))
        .and_then(|d| d.as_u64().or_else(|| d.as_str()?.parse().ok()))
        .unwrap_or(90);
    let now = epoch_millis();
    record.insert("instanceId".to_owned(), json!(id));
    record.insert("app".to_owned(), json!(app));
    record.entry("status").or_insert(json!("UP"));
    record.insert("lastUpdatedTimestamp".to_owned(), json!(now.to_string()));
    let lease_info = record.entry("leaseInfo").or_insert(json!({}));
    if let Value::Object(info) = lease_info {
        info.insert("durationInSecs".to_owned(), json!(duration));
        info.entry("renewalIntervalInSecs").or_insert(json!(30));
        info.insert("registrationTimestamp".to_owned(), json!(now));
        info.insert("lastRenewalTimestamp".to_owned(), json!(now));
        info.insert("evictionTimestamp".to_owned(), json!(0));
        info.insert("serviceUpTimestamp".to_owned(), json!(now));
    }
    let record = Value::Object(record);
    let lease = Lease {
        record: record.clone(),
        renewed: Instant::now(),
        duration: Duration::from_secs(duration.max(1)),
    };
    state.apps.entry(app.clone()).or_default().insert(id, lease);
    changed(state, &app, record, "ADDED");
    reply(StatusCode::NO_CONTENT, "text/plain", "")
}

fn changed(state: &mut State, app: &str, mut record: Value, action: &str) {
    record["actionType"] = json!(action);
    state.version += 1;
    let now = Instant::now();
    state.changes.push_back((now, app.to_owned(), record));
    while state.changes.front().is_some_and(|(at, _, _)| now.duration_since(*at) > DELTA_RETENTION) {
        state.changes.pop_front();
    }
}

/// Evicts instances whose lease expired.
async fn evict(state: Arc<Mutex<State>>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    loop {
        ticks.tick().await;
        let mut state = state.lock().expect("state");
        let now = Instant::now();
        let mut expired = Vec::new();
        for (app, leases) in &mut state.apps {
            leases.retain(|_, lease| {
                let alive = now.duration_since(lease.renewed) <= lease.duration;
                if !alive {
                    expired.push((app.clone(), lease.record.clone()));
                }
                alive
            });
        }
        for (app, record) in expired {
            changed(&mut state, &app, record, "DELETED");
        }
    }
}

/// `{"name": APP, "instance": [...]}`.
fn application(name: &str, instances: Vec<Value>) -> Value {
    json!({ "name": name, "instance": instances })
}

/// `{"versions__delta": ..., "apps__hashcode": ..., "application": [...]}`:
/// the hash code counts every instance by status, as `UP_2_DOWN_1_`.
fn applications(state: &State, apps: impl Iterator<Item = (String, Vec<Value>)>) -> Value {
    let apps: Vec<Value> = apps
        .filter(|(_, instances)| !instances.is_empty())
        .map(|(name, instances)| application(&name, instances))
        .collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for lease in state.apps.values().flat_map(BTreeMap::values) {
        let status = lease.record.get("status").and_then(Value::as_str).unwrap_or("UNKNOWN").to_owned();
        *counts.entry(status).or_default() += 1;
    }
    let hashcode: String = counts.iter().map(|(status, n)| format!("{status}_{n}_")).collect();
    json!({ "versions__delta": state.version.to_string(), "apps__hashcode": hashcode, "application": apps })
}

/// `body` under `root`, in JSON (`{"root": body}`) or in XML.
fn render(json_wanted: bool, root: &str, body: Value) -> Reply {
    if json_wanted {
        json_reply(StatusCode::OK, &json!({ root: body }))
    } else {
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>");
        element(&mut xml, root, &body);
        reply(StatusCode::OK, "application/xml", xml)
    }
}

/// Writes `value` as the XML element `name`, as Eureka's XStream codec
/// does: `@key` members are attributes, `$` is the text, lists repeat the
/// element.
fn element(out: &mut String, name: &str, value: &Value) {
    match value {
        Value::Array(items) => {
            for item in items {
                element(out, name, item);
            }
        }
        Value::Object(map) => {
            out.push('<');
            out.push_str(name);
            for (key, value) in map.iter().filter(|(k, _)| k.starts_with('@')) {
                out.push_str(&format!(" {}=\"{}\"", &key[1..], escape(&scalar(value))));
            }
            out.push('>');
            if let Some(text) = map.get("$") {
                out.push_str(&escape(&scalar(text)));
            }
            for (key, value) in map.iter().filter(|(k, _)| !k.starts_with('@') && *k != "$") {
                element(out, key, value);
            }
            out.push_str(&format!("</{name}>"));
        }
        Value::Null => out.push_str(&format!("<{name}/>")),
        scalar_value => out.push_str(&format!("<{name}>{}</{name}>", escape(&scalar(scalar_value)))),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

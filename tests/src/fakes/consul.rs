//! A fake Consul agent: the parts of the agent and health HTTP APIs that
//! Trellis's `consul://` backend and `py-consul` use.
//!
//! Implemented, as documented for Consul 1.x:
//! - `PUT /v1/agent/service/register` (field names in any case, as Consul
//!   reads them; `Check`, `Checks`, or the old top-level `TTL`), with TTL and
//!   gRPC checks (the fake calls `grpc.health.v1.Health/Check` itself every
//!   `Interval`), `Status`, `DeregisterCriticalServiceAfter`, `Meta`,
//!   `Weights`, `Tags`; check IDs `service:ID` (one check) or `service:ID:N`;
//! - `PUT /v1/agent/service/deregister/ID`, `GET /v1/agent/service/ID`;
//! - `PUT /v1/agent/check/{pass,warn,fail}/CHECK_ID`;
//! - `GET /v1/health/service/NAME` with `passing`, and blocking queries
//!   (`index`, `wait`, the `X-Consul-Index` header);
//! - ACL tokens: when the fake has one, every request needs it in
//!   `X-Consul-Token`, `Authorization: Bearer` or `?token=`, else 403.
//!
//! Not modelled: a cluster (one agent that is its own catalog, so no
//! anti-entropy between agent and servers, no Raft, no stale reads, no
//! `dc` other than its own), the node's `serfHealth` check, the one-minute
//! minimum of `DeregisterCriticalServiceAfter` and the ~30 s reaper period
//! (the fake reaps within 50 ms of the deadline), HTTP and script checks,
//! `wait` jitter, filtering expressions, `near`, tagged addresses,
//! Connect and namespaces, and ACL policies (one token may do anything).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::{HttpServer, Reply, Req, go_duration, json as json_reply, text};

/// The node every service runs on.
const NODE: &str = "fake-node";
/// The address of that node, used when a service has none.
pub const NODE_ADDRESS: &str = "127.0.0.1";

/// A running fake agent; stops when dropped.
#[derive(Debug)]
pub struct FakeConsul {
    server: HttpServer,
    state: Arc<Shared>,
    _reaper: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The current index, for blocking queries to wait on.
    index: watch::Sender<u64>,
    token: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    index: u64,
    services: BTreeMap<String, Service>,
    /// Entries served as they are, for tests of malformed answers.
    raw: Vec<(String, Value)>,
}

#[derive(Debug, Clone)]
struct Service {
    id: String,
    name: String,
    address: String,
    port: u64,
    tags: Vec<Value>,
    meta: Value,
    weights: Value,
    checks: Vec<Check>,
}

#[derive(Debug, Clone)]
struct Check {
    id: String,
    name: String,
    kind: Kind,
    status: &'static str,
    /// When the TTL was last passed, or the gRPC check last ran.
    last: Instant,
    critical_since: Option<Instant>,
    deregister_after: Option<Duration>,
    running: bool,
}

#[derive(Debug, Clone)]
enum Kind {
    Ttl(Duration),
    Grpc { target: String, interval: Duration, timeout: Duration },
}

/// `object[key]`, with the key in any case, as Consul's decoder reads it.
fn field<'a>(object: &'a Value, key: &str) -> Option<&'a Value> {
    object.as_object()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v)
}

fn field_str<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    field(object, key).and_then(Value::as_str)
}

impl FakeConsul {
    /// A fake agent on a free loopback port, without ACLs.
    pub async fn start() -> FakeConsul {
        Self::start_with_token(None).await
    }

    /// A fake agent that requires `token` on every request.
    pub async fn start_with_token(token: Option<&str>) -> FakeConsul {
        let (index, _) = watch::channel(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State { index: 1, ..State::default() }),
            index,
            token: token.map(str::to_owned),
        });
        let handler = shared.clone();
        let server = HttpServer::start(move |req| {
            let shared = handler.clone();
            async move { shared.handle(req).await }
        })
        .await;
        let reaper = tokio::spawn(reap(shared.clone()));
        FakeConsul { server, state: shared, _reaper: reaper }
    }

    /// `HOST:PORT` of its HTTP API.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    /// `consul://HOST:PORT` plus `options` (such as `?ttl=1s`).
    pub fn url(&self, options: &str) -> String {
        format!("consul://{}{options}", self.addr())
    }

    /// Stops answering (connections refused) until [`restart`](Self::restart).
    pub fn stop(&self) {
        self.server.stop();
    }

    /// Answers again, with the same catalog.
    pub async fn restart(&self) {
        self.server.restart().await;
    }

    /// Sets the index back to `index`, as a restarted agent would.
    pub fn set_index(&self, index: u64) {
        let mut state = self.state.state.lock().expect("state");
        state.index = index;
        self.state.index.send_replace(index);
    }

    /// Serves `entry` as it is among `service`'s health entries.
    pub fn add_raw_entry(&self, service: &str, entry: Value) {
        let mut state = self.state.state.lock().expect("state");
        state.raw.push((service.to_owned(), entry));
        self.state.bump(&mut state);
    }

    /// The registered service instance `id`, as `GET /v1/agent/service/ID` shows it.
    pub fn service(&self, id: &str) -> Option<Value> {
        self.state.state.lock().expect("state").services.get(id).map(Service::agent_view)
    }

    /// The status of each check of instance `id`.
    pub fn check_statuses(&self, id: &str) -> Vec<String> {
        let state = self.state.state.lock().expect("state");
        state
            .services
            .get(id)
            .map(|s| s.checks.iter().map(|c| c.status.to_owned()).collect())
            .unwrap_or_default()
    }

    /// Forgets every service and check, as an agent that lost its state.
    pub fn forget_everything(&self) {
        let mut state = self.state.state.lock().expect("state");
        state.services.clear();
        self.state.bump(&mut state);
    }
}

impl Shared {
    fn bump(&self, state: &mut State) {
        state.index += 1;
        self.index.send_replace(state.index);
    }

    fn authorized(&self, req: &Req) -> bool {
        let Some(token) = &self.token else { return true };
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let given = header("x-consul-token")
            .or_else(|| header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned)))
            .or_else(|| req.query.get("token").cloned());
        given.as_deref() == Some(token.as_str())
    }

    async fn handle(self: Arc<Self>, req: Req) -> Reply {
        if !self.authorized(&req) {
            return text(StatusCode::FORBIDDEN, "Permission denied: ACL not found");
        }
        let path = req.path.clone();
        let segments: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
        match (&req.method, segments.as_slice()) {
            (&Method::PUT, ["v1", "agent", "service", "register"]) => self.register(&req),
            (&Method::PUT, ["v1", "agent", "service", "deregister", id]) => self.deregister(id),
            (&Method::GET, ["v1", "agent", "service", id]) => {
                match self.state.lock().expect("state").services.get(*id) {
                    Some(service) => json_reply(StatusCode::OK, &service.agent_view()),
                    None => text(StatusCode::NOT_FOUND, format!("unknown service ID: {id}")),
                }
            }
            (&Method::PUT, ["v1", "agent", "check", verb @ ("pass" | "warn" | "fail"), id]) => {
                self.update(verb, id)
            }
            (&Method::GET, ["v1", "health", "service", name]) => self.health(name, &req).await,
            _ => text(
                StatusCode::NOT_FOUND,
                format!("the fake Consul agent does not serve {} {}", req.method, req.path),
            ),
        }
    }

    fn register(&self, req: &Req) -> Reply {
        let body: Value = match serde_json::from_slice(&req.body) {
            Ok(body) => body,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("Request decode failed: {e}")),
        };
        let Some(name) = field_str(&body, "Name").filter(|n| !n.is_empty()) else {
            return text(StatusCode::BAD_REQUEST, "Missing service name");
        };
        let id = field_str(&body, "ID").filter(|i| !i.is_empty()).unwrap_or(name).to_owned();
        let port = match field(&body, "Port") {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|p| p <= 65535) => n.as_u64().unwrap_or(0),
            Some(other) => return text(StatusCode::BAD_REQUEST, format!("Invalid Port: {other}")),
        };
        let mut specs: Vec<Value> = match (field(&body, "Check"), field(&body, "Checks")) {
            (Some(check), _) if check.is_object() => vec![check.clone()],
            (_, Some(Value::Array(checks))) => checks.clone(),
            _ => Vec::new(),
        };
        if let Some(ttl) = field(&body, "TTL").filter(|t| t.is_string()) {
            specs.push(json!({ "TTL": ttl }));
        }
        let mut checks = Vec::new();
        let several = specs.len() > 1;
        for (n, spec) in specs.iter().enumerate() {
            let check_id = field_str(spec, "CheckID").map(str::to_owned).unwrap_or_else(|| {
                if several { format!("service:{id}:{}", n + 1) } else { format!("service:{id}") }
            });
            let duration =
                |key: &str| field_str(spec, key).map(|d| go_duration(d).ok_or(format!("Invalid {key}: {d}")));
            let kind = match (duration("TTL"), field_str(spec, "GRPC")) {
                (Some(Ok(ttl)), None) => Kind::Ttl(ttl),
                (None, Some(target)) => {
                    let interval = match duration("Interval") {
                        Some(Ok(interval)) if !interval.is_zero() => interval,
                        Some(Err(e)) => return text(StatusCode::BAD_REQUEST, e),
                        _ => return text(StatusCode::BAD_REQUEST, "Interval must be > 0 for gRPC checks"),
                    };
                    let timeout = match duration("Timeout") {
                        Some(Ok(timeout)) => timeout,
                        Some(Err(e)) => return text(StatusCode::BAD_REQUEST, e),
                        None => Duration::from_secs(10),
                    };
                    if field(spec, "GRPCUseTLS").and_then(Value::as_bool) == Some(true) {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "the fake Consul agent cannot run gRPC checks over TLS",
                        );
                    }
                    Kind::Grpc { target: target.to_owned(), interval, timeout }
                }
                (Some(Err(e)), _) => return text(StatusCode::BAD_REQUEST, e),
                _ => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "the fake Consul agent takes TTL or GRPC checks only",
                    );
                }
            };
            let status = match field_str(spec, "Status") {
                Some("passing") => "passing",
                Some("warning") => "warning",
                Some("critical") | None => "critical",
                Some(other) => return text(StatusCode::BAD_REQUEST, format!("Invalid Status: {other}")),
            };
            let deregister_after = match duration("DeregisterCriticalServiceAfter") {
                Some(Ok(after)) => Some(after),
                Some(Err(e)) => return text(StatusCode::BAD_REQUEST, e),
                None => None,
            };
            checks.push(Check {
                id: check_id,
                name: field_str(spec, "Name").unwrap_or("Service check").to_owned(),
                kind,
                status,
                last: Instant::now(),
                critical_since: (status == "critical").then(Instant::now),
                deregister_after,
                running: false,
            });
        }
        let meta = field(&body, "Meta").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
        for (key, value) in meta.as_object().into_iter().flatten() {
            let key_ok = !key.is_empty()
                && key.len() <= 128
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !key_ok || key.starts_with("consul-") || !value.is_string() {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Invalid Service Meta: key {key:?} or its value"),
                );
            }
        }
        let weights = match field(&body, "Weights") {
            Some(weights) if weights.is_object() => {
                let passing = field(weights, "Passing").and_then(Value::as_u64).unwrap_or(1);
                if passing < 1 {
                    return text(StatusCode::BAD_REQUEST, "Passing must be greater than 0");
                }
                json!({ "Passing": passing, "Warning": field(weights, "Warning").and_then(Value::as_u64).unwrap_or(1) })
            }
            _ => json!({ "Passing": 1, "Warning": 1 }),
        };
        let service = Service {
            id: id.clone(),
            name: name.to_owned(),
            address: field_str(&body, "Address").unwrap_or("").to_owned(),
            port,
            tags: field(&body, "Tags").and_then(Value::as_array).cloned().unwrap_or_default(),
            meta,
            weights,
            checks,
        };
        let mut state = self.state.lock().expect("state");
        state.services.insert(id, service);
        self.bump(&mut state);
        text(StatusCode::OK, "")
    }

    fn deregister(&self, id: &str) -> Reply {
        let mut state = self.state.lock().expect("state");
        if state.services.remove(id).is_none() {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
                ),
            );
        }
        self.bump(&mut state);
        text(StatusCode::OK, "")
    }

    fn update(&self, verb: &str, id: &str) -> Reply {
        let mut state = self.state.lock().expect("state");
        let check = state.services.values_mut().flat_map(|s| s.checks.iter_mut()).find(|c| c.id == id);
        let Some(check) = check else {
            return text(StatusCode::NOT_FOUND, format!("CheckID {id:?} does not have associated TTL"));
        };
        if !matches!(check.kind, Kind::Ttl(_)) {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("CheckID {id:?} does not have associated TTL"),
            );
        }
        let status = match verb {
            "pass" => "passing",
            "warn" => "warning",
            _ => "critical",
        };
        check.last = Instant::now();
        let changed = check.status != status;
        check.status = status;
        check.critical_since =
            if status == "critical" { check.critical_since.or(Some(Instant::now())) } else { None };
        if changed {
            self.bump(&mut state);
        }
        text(StatusCode::OK, "")
    }

    async fn health(&self, name: &str, req: &Req) -> Reply {
        let passing = req.query.get("passing").is_some_and(|v| !matches!(v.as_str(), "0" | "false"));
        if let Some(index) = req.query.get("index") {
            let Ok(index) = index.parse::<u64>() else {
                return text(StatusCode::BAD_REQUEST, format!("Invalid index: {index}"));
            };
            let wait = match req.query.get("wait") {
                Some(wait) => match go_duration(wait) {
                    Some(wait) => wait.min(Duration::from_secs(600)),
                    None => return text(StatusCode::BAD_REQUEST, format!("Invalid wait time: {wait}")),
                },
                None => Duration::from_secs(300),
            };
            let mut changes = self.index.subscribe();
            // As Consul does: wait until the index moves past the one asked for; an
            // index that went backwards below it waits the whole `wait`.
            let _ = tokio::time::timeout(wait, changes.wait_for(|current| *current > index)).await;
        }
        let state = self.state.lock().expect("state");
        let mut entries: Vec<Value> = state
            .services
            .values()
            .filter(|s| s.name == name)
            .filter(|s| !passing || s.checks.iter().all(|c| c.status == "passing"))
            .map(Service::health_entry)
            .collect();
        entries
            .extend(state.raw.iter().filter(|(service, _)| service == name).map(|(_, entry)| entry.clone()));
        let mut response = json_reply(StatusCode::OK, &Value::Array(entries));
        response
            .headers_mut()
            .insert("x-consul-index", state.index.to_string().parse().expect("a header value"));
        response
    }
}

impl Service {
    fn agent_view(&self) -> Value {
        json!({
            "ID": self.id, "Service": self.name, "Tags": self.tags, "Meta": self.meta,
            "Address": self.address, "Port": self.port, "Weights": self.weights, "Datacenter": "dc1",
        })
    }

    fn health_entry(&self) -> Value {
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|c| {
                json!({
                    "Node": NODE, "CheckID": c.id, "Name": c.name, "Status": c.status,
                    "ServiceID": self.id, "ServiceName": self.name,
                    "Type": match c.kind { Kind::Ttl(_) => "ttl", Kind::Grpc { .. } => "grpc" },
                })
            })
            .collect();
        let mut service = self.agent_view();
        if let Some(map) = service.as_object_mut() {
            map.remove("Datacenter");
        }
        json!({
            "Node": { "ID": "00000000-0000-0000-0000-000000000001", "Node": NODE, "Address": NODE_ADDRESS, "Datacenter": "dc1", "Meta": Map::new() },
            "Service": service,
            "Checks": checks,
        })
    }
}

/// Turns TTL checks critical past their TTL, runs gRPC checks, and removes
/// services critical for longer than their `DeregisterCriticalServiceAfter`.
async fn reap(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let mut state = shared.state.lock().expect("state");
        let mut changed = false;
        let mut due = Vec::new();
        for service in state.services.values_mut() {
            for check in &mut service.checks {
                match &check.kind {
                    Kind::Ttl(ttl) => {
                        if check.status != "critical" && now.duration_since(check.last) > *ttl {
                            check.status = "critical";
                            check.critical_since = Some(now);
                            changed = true;
                        }
                    }
                    Kind::Grpc { target, interval, timeout } => {
                        if !check.running && now.duration_since(check.last) >= *interval {
                            check.running = true;
                            due.push((service.id.clone(), check.id.clone(), target.clone(), *timeout));
                        }
                    }
                }
            }
        }
        let before = state.services.len();
        state.services.retain(|_, service| {
            !service.checks.iter().any(|c| match (c.critical_since, c.deregister_after) {
                (Some(since), Some(after)) => now.duration_since(since) > after,
                _ => false,
            })
        });
        if changed || state.services.len() != before {
            shared.bump(&mut state);
        }
        drop(state);
        for (service, check, target, timeout) in due {
            let shared = shared.clone();
            tokio::spawn(async move {
                let status = grpc_check(&target, timeout).await;
                let mut state = shared.state.lock().expect("state");
                let Some(check) = state
                    .services
                    .get_mut(&service)
                    .and_then(|s| s.checks.iter_mut().find(|c| c.id == check))
                else {
                    return;
                };
                check.running = false;
                check.last = Instant::now();
                if check.status != status {
                    check.status = status;
                    check.critical_since = (status == "critical").then(Instant::now);
                    shared.bump(&mut state);
                }
            });
        }
    }
}

/// Consul's gRPC check: `passing` when `grpc.health.v1.Health/Check` for
/// the service in `target` (`HOST:PORT/SERVICE`) answers `SERVING`.
async fn grpc_check(target: &str, timeout: Duration) -> &'static str {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let (address, service) = target.split_once('/').unwrap_or((target, ""));
    let call = async {
        let channel = trellis::codegen::tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest { service: service.to_owned() })
            .await
            .ok()?;
        Some(answer.into_inner().status == ServingStatus::Serving as i32)
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Some(true)) => "passing",
        _ => "critical",
    }
}

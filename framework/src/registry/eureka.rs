//! `eureka://HOST:PORT/PATH[?ttl=30s&interval=5s]`: a Eureka server's REST API, in JSON.
//!
//! PATH is the server's base path: `/eureka` for Spring Cloud Netflix's
//! server, `/eureka/v2` for Netflix's own. The Eureka application of a
//! service is its full name in capitals (Eureka's own convention), such as
//! `ORDER.PAYMENT.V1.ORDERPAYMENT`; its VIP address is the name as written.
//!
//! Registering posts the instance (`POST PATH/apps/APP`): its id, address
//! (as `ipAddr` and `hostName`), port (the secure port when the endpoint's
//! scheme is `https`), status `UP`, a lease of `ttl` (`durationInSecs`,
//! renewed every third of it) and its metadata (`version`, `zone`,
//! `weight` and the labels). The renewal is a heartbeat
//! (`PUT PATH/apps/APP/ID`); a heartbeat answered 404 (the server evicted or
//! forgot the instance) registers it again. A clean shutdown deletes it
//! (`DELETE PATH/apps/APP/ID`); an instance killed without one is evicted
//! by the server once its lease expires (a real server evicts in a
//! background pass, and not at all in self-preservation mode).
//!
//! Resolving reads `GET PATH/apps/APP` and keeps the instances whose
//! status is `UP`; an unknown application (404) has no instances. Then
//! every `interval` it reads the delta (`GET PATH/apps/delta`, the changes
//! of the last minutes across all applications) and reads the
//! application's list again only when the delta shows new changes of it,
//! after a failed poll, and at least every 30 s. A server that serves no
//! delta (403, as with Spring's `disable-delta`, or 404) gets the full
//! read every `interval`. Instances that cannot be read are skipped with
//! one warning each.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::http::Http;
use super::poll::{Pace, Source, follow, renew};
use super::types::{
    AbortOnDrop, Backend, BoxFuture, Endpoint, Instance, Lease, Metadata, Resolution, Scheme, unreachable,
};
use super::url::{Target, parse_endpoint};
use crate::error::Error;

/// The lease of a registration, unless `ttl` says otherwise.
const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// How often resolutions poll, unless `interval` says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// What to check when the server cannot be reached.
const FIX: &str =
    "check the Eureka server's address and base path (/eureka or /eureka/v2) and that it is running";

/// The data center an instance outside a cloud declares.
const DATA_CENTER: (&str, &str) = ("com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "MyOwn");

/// The `eureka://` backend.
#[derive(Debug)]
pub(super) struct Eureka {
    url: String,
    http: Http,
    ttl: Duration,
    interval: Duration,
}

impl Eureka {
    pub(super) fn parse(target: &Target<'_>) -> Result<Self, Error> {
        let err = |reason: String| target.error(reason);
        let (address, pairs) = target.query();
        let (server, path) = match address.find('/') {
            Some(at) => (&address[..at], &address[at..]),
            None => (address, ""),
        };
        let server = parse_endpoint(server).map_err(&err)?;
        let path = path.trim_end_matches('/');
        if path.is_empty() {
            return Err(err(format!(
                "`{address}` has no base path: add the server's, /eureka for Spring Cloud or /eureka/v2 \
                 for Netflix's server, as in eureka://{server}/eureka"
            )));
        }
        if !path.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.')) {
            return Err(err(format!("`{path}` is not a base path such as /eureka")));
        }
        let mut eureka = Eureka {
            url: target.url.to_owned(),
            http: Http::new(server, path),
            ttl: DEFAULT_TTL,
            interval: DEFAULT_INTERVAL,
        };
        for (key, value) in pairs {
            let duration = |least: Duration| {
                humantime::parse_duration(value).ok().filter(|d| *d >= least).ok_or_else(|| {
                    err(format!("`{key}={value}`: expected a duration of at least {least:?}, such as 30s"))
                })
            };
            match key {
                "ttl" => eureka.ttl = duration(Duration::from_secs(1))?,
                "interval" => eureka.interval = duration(Duration::from_millis(1))?,
                _ => {
                    return Err(err(format!("unknown option `{key}`; eureka:// takes `ttl` and `interval`")));
                }
            }
        }
        Ok(eureka)
    }

    fn error(&self, reason: impl std::fmt::Display) -> Error {
        Error::Registry { url: self.url.clone(), reason: reason.to_string() }
    }

    /// The body of `POST PATH/apps/APP` for `instance`.
    fn registration(&self, instance: &Instance) -> Result<Vec<u8>, Error> {
        let metadata = metadata(&instance.metadata).map_err(|e| self.error(e))?;
        let (host, port) = (instance.endpoint.host(), instance.endpoint.port());
        let https = instance.endpoint.scheme() == Scheme::Https;
        let seconds = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
        let body = json!({ "instance": {
            "instanceId": instance.id,
            "app": app(&instance.service),
            "hostName": host,
            "ipAddr": host,
            "vipAddress": instance.service,
            "secureVipAddress": instance.service,
            "status": "UP",
            "port": { "$": if https { 80 } else { port }, "@enabled": (!https).to_string() },
            "securePort": { "$": if https { port } else { 443 }, "@enabled": https.to_string() },
            "dataCenterInfo": { "@class": DATA_CENTER.0, "name": DATA_CENTER.1 },
            "leaseInfo": {
                "renewalIntervalInSecs": seconds(self.ttl / 3).max(1),
                "durationInSecs": seconds(self.ttl).max(1),
            },
            "metadata": metadata,
        }});
        Ok(body.to_string().into_bytes())
    }
}

/// The Eureka application of `service`.
fn app(service: &str) -> String {
    service.to_ascii_uppercase()
}

/// The metadata of an instance: its labels, then version, zone and weight.
/// Eureka sends metadata as XML elements too, so keys must be XML names.
fn metadata(metadata: &Metadata) -> Result<BTreeMap<String, String>, String> {
    let mut map = metadata.labels.clone();
    for (key, value) in [("version", &metadata.version), ("zone", &metadata.zone)] {
        if let Some(value) = value {
            map.insert(key.to_owned(), value.clone());
        }
    }
    map.insert("weight".to_owned(), metadata.weight.to_string());
    for key in map.keys() {
        let mut chars = key.chars();
        let starts = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !starts || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
            return Err(format!(
                "the label `{key}` cannot be a Eureka metadata key: start with a letter or `_`, then use \
                 letters, digits, `_`, `-` or `.`"
            ));
        }
    }
    Ok(map)
}

/// `value` as a port: a number, or a string of one (both occur).
fn number(value: &Value) -> Option<u16> {
    match value {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Whether a port is enabled: `"true"` or `true` (both occur).
fn enabled(port: &Value) -> bool {
    matches!(port.get("@enabled"), Some(Value::Bool(true)))
        || port.get("@enabled").and_then(Value::as_str) == Some("true")
}

/// The instance a Eureka instance record describes; `Ok(None)` when it is
/// not `UP`.
fn instance(record: &Value, service: &str) -> Result<Option<Instance>, String> {
    let text = |key: &str| record.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    if text("status") != Some("UP") {
        return Ok(None);
    }
    let id = text("instanceId").ok_or("no instanceId")?;
    let host = text("ipAddr").or_else(|| text("hostName")).ok_or("neither ipAddr nor hostName")?;
    let (secure, plain) =
        (record.get("securePort").unwrap_or(&Value::Null), record.get("port").unwrap_or(&Value::Null));
    let (port, scheme) = if enabled(secure) && !enabled(plain) {
        (number(secure.get("$").unwrap_or(&Value::Null)), Scheme::Https)
    } else {
        (number(plain.get("$").unwrap_or(&Value::Null)).or_else(|| number(plain)), Scheme::Http)
    };
    let port = port.filter(|p| *p != 0).ok_or("no usable port")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let endpoint = parse_endpoint(&Endpoint::new(host, port).to_string())?.with_scheme(scheme);
    let mut labels: BTreeMap<String, String> = match record.get("metadata") {
        Some(Value::Object(map)) => map
            .iter()
            .filter(|(key, _)| !key.starts_with('@'))
            .filter_map(|(key, value)| value.as_str().map(|v| (key.clone(), v.to_owned())))
            .collect(),
        _ => BTreeMap::new(),
    };
    let weight = match labels.remove("weight") {
        Some(weight) => weight.parse().map_err(|_| format!("weight `{weight}` is not a whole number"))?,
        None => 100,
    };
    let metadata =
        Metadata { version: labels.remove("version"), zone: labels.remove("zone"), weight, labels };
    Ok(Some(Instance { id: id.to_owned(), service: service.to_owned(), endpoint, metadata }))
}

/// Polls one application: the delta every time, the application's full
/// list when the delta shows it changed, or at least every [`FULL_EVERY`].
#[derive(Debug)]
struct Poll {
    http: Http,
    service: String,
    /// `/apps/APP`.
    path: String,
    /// The application's name, in capitals.
    app: String,
    warned: HashSet<String>,
    /// When the full list was last read; `None` reads it next time.
    full_at: Option<Instant>,
    /// Whether the server serves `/apps/delta`.
    delta: bool,
    /// This application's records in the last delta.
    last_delta: Option<Vec<Value>>,
}

/// The longest time between two reads of an application's full list.
const FULL_EVERY: Duration = Duration::from_secs(30);

impl Source for Poll {
    type Error = String;

    async fn fetch(&mut self) -> Result<Option<Vec<Instance>>, String> {
        let fetched = self.fetch_changes().await;
        if fetched.is_err() {
            // The delta only covers recent minutes: after a failure, read everything.
            self.full_at = None;
        }
        fetched
    }
}

impl Poll {
    async fn fetch_changes(&mut self) -> Result<Option<Vec<Instance>>, String> {
        let recent = self.full_at.is_some_and(|at| at.elapsed() < FULL_EVERY);
        if self.delta && recent && !self.delta_names_a_change().await? {
            return Ok(None);
        }
        let instances = self.full().await?;
        self.full_at = Some(Instant::now());
        Ok(Some(instances))
    }

    /// Whether `/apps/delta` holds changes of this application not seen in
    /// the previous delta. A server without deltas (403 or 404) is not asked
    /// again, and `true` is returned.
    async fn delta_names_a_change(&mut self) -> Result<bool, String> {
        let path = "/apps/delta";
        let reply = self.http.send(Method::GET, path, None, REQUEST_TIMEOUT).await?;
        if matches!(reply.status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) {
            tracing::info!(
                service = self.service,
                "the Eureka server serves no delta; reading the application in full"
            );
            self.delta = false;
            return Ok(true);
        }
        if reply.status != StatusCode::OK {
            return Err(format!("GET {path} answered {}: {}", reply.status, reply.text()));
        }
        let body: Value = serde_json::from_slice(&reply.body)
            .map_err(|e| format!("GET {path} answered something other than JSON: {e}: {}", reply.text()))?;
        let ours: Vec<Value> = list(body.pointer("/applications/application"))
            .into_iter()
            .filter(|app| {
                app.get("name").and_then(Value::as_str).is_some_and(|n| n.eq_ignore_ascii_case(&self.app))
            })
            .flat_map(|app| list(app.get("instance")))
            .collect();
        let changed = !ours.is_empty() && self.last_delta.as_ref() != Some(&ours);
        self.last_delta = Some(ours);
        Ok(changed)
    }

    /// The `UP` instances of `GET /apps/APP`.
    async fn full(&mut self) -> Result<Vec<Instance>, String> {
        let reply = self.http.send(Method::GET, &self.path, None, REQUEST_TIMEOUT).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if reply.status != StatusCode::OK {
            return Err(format!("GET {} answered {}: {}", self.path, reply.status, reply.text()));
        }
        let body: Value = serde_json::from_slice(&reply.body).map_err(|e| {
            format!("GET {} answered something other than JSON: {e}: {}", self.path, reply.text())
        })?;
        let mut instances = Vec::new();
        for record in &list(body.pointer("/application/instance")) {
            match instance(record, &self.service) {
                Ok(Some(instance)) => instances.push(instance),
                Ok(None) => {}
                Err(why) => {
                    let id = record
                        .get("instanceId")
                        .and_then(Value::as_str)
                        .unwrap_or("(no instanceId)")
                        .to_owned();
                    if self.warned.insert(id.clone()) {
                        tracing::warn!(
                            service = self.service,
                            id,
                            "skipping a Eureka instance that cannot be read: {why}"
                        );
                    }
                }
            }
        }
        Ok(instances)
    }
}

/// The `UP` instances in a `GET /apps/APP` body, and the instance records of
/// `APP` in a `GET /apps/delta` body: what the fuzz target reads.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_body(body: &[u8], service: &str) -> Result<(Vec<Instance>, usize), String> {
    let body: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut instances = Vec::new();
    for record in &list(body.pointer("/application/instance")) {
        if let Some(instance) = instance(record, service)? {
            instances.push(instance);
        }
    }
    let app = app(service);
    let delta = list(body.pointer("/applications/application"))
        .into_iter()
        .filter(|a| a.get("name").and_then(Value::as_str).is_some_and(|n| n.eq_ignore_ascii_case(&app)))
        .flat_map(|a| list(a.get("instance")))
        .count();
    Ok((instances, delta))
}

/// A JSON list, a lone object (as older servers send one element), or nothing.
fn list(value: Option<&Value>) -> Vec<Value> {
    match value {
        Some(Value::Array(items)) => items.clone(),
        Some(item @ Value::Object(_)) => vec![item.clone()],
        _ => Vec::new(),
    }
}

/// A registration in Eureka, renewed in the background.
#[derive(Debug)]
struct EurekaLease {
    http: Http,
    path: String,
    _renewal: AbortOnDrop,
}

impl Lease for EurekaLease {
    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        let EurekaLease { http, path, _renewal: renewal } = *self;
        drop(renewal);
        Box::pin(async move {
            match http.send(Method::DELETE, &path, None, REQUEST_TIMEOUT).await {
                Ok(reply) if reply.status.is_success() || reply.status == StatusCode::NOT_FOUND => {}
                Ok(reply) => tracing::warn!(
                    path,
                    "cannot deregister from Eureka: {} {}; the lease expires by itself",
                    reply.status,
                    reply.text()
                ),
                Err(e) => {
                    tracing::warn!(path, "cannot deregister from Eureka: {e}; the lease expires by itself")
                }
            }
            Ok(())
        })
    }
}

/// Posts a registration.
async fn register(http: &Http, app_path: &str, body: &[u8]) -> Result<(), String> {
    let reply = http.send(Method::POST, app_path, Some(body.to_vec()), REQUEST_TIMEOUT).await?;
    if reply.status.is_success() {
        Ok(())
    } else {
        Err(format!("POST {app_path} answered {}: {}", reply.status, reply.text()))
    }
}

/// One heartbeat; registers again when the server no longer knows the instance.
async fn heartbeat(http: &Http, app_path: &str, instance_path: &str, body: &[u8]) -> Result<(), String> {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let path = format!("{instance_path}?status=UP&lastDirtyTimestamp={now}");
    let reply = http.send(Method::PUT, &path, None, REQUEST_TIMEOUT).await?;
    if reply.status.is_success() {
        Ok(())
    } else if reply.status == StatusCode::NOT_FOUND {
        register(http, app_path, body).await?;
        tracing::info!(instance_path, "the Eureka server did not know the instance; registered again");
        Ok(())
    } else {
        Err(format!("PUT {path} answered {}: {}", reply.status, reply.text()))
    }
}

/// `text` with every byte but letters, digits and `-._~` percent-encoded.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Backend for Eureka {
    fn register(&self, instance: Instance) -> BoxFuture<'_, Result<Box<dyn Lease>, Error>> {
        Box::pin(async move {
            let body = self.registration(&instance)?;
            let app_path = format!("/apps/{}", encode(&app(&instance.service)));
            let instance_path = format!("{app_path}/{}", encode(&instance.id));
            register(&self.http, &app_path, &body).await.map_err(|e| unreachable(&self.url, e, FIX))?;
            let what = format!("renewing {} in {}", instance.service, self.url);
            let (http, paths) = (self.http.clone(), (app_path, instance_path.clone()));
            let renewal = renew(what, self.ttl / 3, move || {
                let (http, (app_path, instance_path), body) = (http.clone(), paths.clone(), body.clone());
                async move { heartbeat(&http, &app_path, &instance_path, &body).await }
            });
            Ok(Box::new(EurekaLease { http: self.http.clone(), path: instance_path, _renewal: renewal })
                as Box<dyn Lease>)
        })
    }

    fn resolve(&self, service: &str) -> BoxFuture<'_, Result<Resolution, Error>> {
        let poll = Poll {
            http: self.http.clone(),
            service: service.to_owned(),
            path: format!("/apps/{}", encode(&app(service))),
            app: app(service),
            warned: HashSet::new(),
            full_at: None,
            delta: true,
            last_delta: None,
        };
        let (service, what) = (service.to_owned(), format!("resolving {service} in {}", self.url));
        let pace = Pace::every(self.interval);
        Box::pin(async move {
            follow(service, what, pace, poll).await.map_err(|e| unreachable(&self.url, e, FIX))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: &str = "eureka://HOST:PORT/PATH";

    fn parse(url: &str) -> Result<Eureka, Error> {
        Eureka::parse(&Target { url, rest: url.strip_prefix("eureka://").unwrap_or(url), form: FORM })
    }

    #[test]
    fn both_base_paths_parse_and_bad_urls_are_named() {
        for (url, base) in
            [("eureka://h:8761/eureka", "/eureka"), ("eureka://h:8080/eureka/v2/?ttl=9s", "/eureka/v2")]
        {
            let eureka = parse(url).unwrap();
            assert!(format!("{:?}", eureka.http).contains(&format!("base: \"{base}\"")), "{url}");
        }
        assert_eq!(parse("eureka://h:1/eureka?ttl=9s").unwrap().ttl, Duration::from_secs(9));
        for (url, needle) in [
            ("eureka://h:8761", "no base path"),
            ("eureka://h:8761/", "no base path"),
            ("eureka://h/eureka", "no port"),
            ("eureka://h:1/eu reka", "base path"),
            ("eureka://h:1/eureka?ttl=10ms", "at least"),
            ("eureka://h:1/eureka?color=red", "unknown option `color`"),
        ] {
            let msg = parse(url).map(drop).unwrap_err().to_string();
            assert!(msg.contains(url) && msg.contains(needle) && msg.contains(FORM), "{url}: {msg}");
        }
    }

    #[test]
    fn registrations_carry_the_lease_port_and_metadata() {
        let eureka = parse("eureka://h:1/eureka?ttl=30s").unwrap();
        let metadata = Metadata { zone: Some("z1".into()), weight: 7, ..Metadata::default() };
        let instance = Instance::new("a.v1.A", Endpoint::new("10.0.0.7", 50051), metadata);
        let body: Value = serde_json::from_slice(&eureka.registration(&instance).unwrap()).unwrap();
        let record = &body["instance"];
        assert_eq!((record["app"].as_str(), record["vipAddress"].as_str()), (Some("A.V1.A"), Some("a.v1.A")));
        assert_eq!(record["port"], json!({"$": 50051, "@enabled": "true"}));
        assert_eq!(record["leaseInfo"], json!({"renewalIntervalInSecs": 10, "durationInSecs": 30}));
        assert_eq!(record["metadata"], json!({"zone": "z1", "weight": "7"}));
        let read = super::instance(record, "a.v1.A").unwrap().unwrap();
        assert_eq!(
            (read.id, read.endpoint, read.metadata),
            (instance.id, instance.endpoint, instance.metadata)
        );

        let bad = Metadata { labels: [("1x".to_owned(), "y".to_owned())].into(), ..Metadata::default() };
        let msg =
            eureka.registration(&Instance::new("a.A", Endpoint::new("h", 1), bad)).unwrap_err().to_string();
        assert!(msg.contains("`1x`") && msg.contains("Eureka metadata key"), "{msg}");
    }

    #[test]
    fn records_in_either_spelling_are_read_and_only_up_is_kept() {
        let record = json!({"instanceId": "i", "hostName": "web.local", "status": "UP",
            "port": {"$": "8080", "@enabled": true}, "metadata": {"@class": "java.util.Collections$EmptyMap"}});
        let read = instance(&record, "a.A").unwrap().unwrap();
        assert_eq!((read.endpoint.uri(), read.metadata.weight), ("http://web.local:8080".to_owned(), 100));
        let secure = json!({"instanceId": "s", "ipAddr": "10.0.0.1", "status": "UP",
            "port": {"$": 80, "@enabled": "false"}, "securePort": {"$": 8443, "@enabled": "true"}});
        assert_eq!(instance(&secure, "a.A").unwrap().unwrap().endpoint.uri(), "https://10.0.0.1:8443");
        let down = json!({"instanceId": "d", "ipAddr": "10.0.0.1", "status": "DOWN", "port": {"$": 1}});
        assert!(instance(&down, "a.A").unwrap().is_none());
        let broken = json!({"instanceId": "b", "ipAddr": "10.0.0.1", "status": "UP", "port": {"$": 0}});
        assert!(instance(&broken, "a.A").is_err());
    }
}

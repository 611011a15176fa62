//! `consul://HOST:PORT[?ttl=10s&check=ttl|grpc&deregister_after=1m&interval=200ms&wait=30s&dc=DC&token=...]`:
//! a Consul agent's HTTP API.
//!
//! Registering puts the instance in the agent's catalog
//! (`PUT /v1/agent/service/register`) with its address, port, the tag
//! `trellis`, its metadata as `Meta` (`version`, `zone`, `weight`, `scheme`
//! when it is `https`, and every label) and its weight as
//! `Weights.Passing` (at least 1, which Consul requires), and a health check:
//!
//! - `check=ttl` (the default): a TTL check of `ttl` that the instance
//!   passes every third of `ttl` (`PUT /v1/agent/check/pass/service:ID`). If
//!   the agent no longer knows the check (it lost its state), the instance
//!   is registered again.
//! - `check=grpc`: Consul itself calls the instance's `grpc.health.v1`
//!   service every `ttl`. Trellis looks every third of `ttl` whether the
//!   agent still has the instance, and registers it again if not.
//!
//! Either way the check carries `DeregisterCriticalServiceAfter`
//! (`deregister_after`, 1 minute by default; Consul refuses less than a
//! minute and reaps every 30 s or so), so a killed instance leaves the
//! catalog; it leaves the answers clients get as soon as its check turns
//! critical, at most `ttl` after it died. A clean shutdown deregisters
//! (`PUT /v1/agent/service/deregister/ID`).
//!
//! Resolving follows `GET /v1/health/service/NAME?passing=1` with blocking
//! queries: each query waits up to `wait` for the `X-Consul-Index` to move
//! past the last one seen; an index that goes backwards (a restarted or
//! replaced agent) starts over from 0, and at least `interval` passes
//! between two queries. An instance whose service address is empty is
//! reached at its node's address. Weights: the `weight` meta key when the
//! instance has one (Trellis writes it), `Weights.Passing × 100` otherwise,
//! so a service registered by another tool with weights 1 and 3 gets
//! Trellis weights 100 and 300. Entries that cannot be read are skipped
//! with one warning each.
//!
//! The ACL token comes from `token=` in the URL or the `CONSUL_HTTP_TOKEN`
//! variable; it is sent as `X-Consul-Token` and never logged: the URL is
//! shown with `token=REDACTED`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::http::{Http, Reply};
use super::poll::{Pace, Source, follow, renew};
use super::types::{
    AbortOnDrop, Backend, BoxFuture, Endpoint, Instance, Lease, Metadata, Resolution, Scheme, unreachable,
};
use super::url::{Target, parse_endpoint};
use crate::error::Error;
use crate::secret::Secret;

/// The TTL of a check, unless `ttl` says otherwise.
const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// How long a critical instance stays in the catalog, unless
/// `deregister_after` says otherwise.
const DEFAULT_DEREGISTER_AFTER: Duration = Duration::from_secs(60);

/// The least time between two blocking queries, unless `interval` says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_millis(200);

/// How long a blocking query waits, unless `wait` says otherwise.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// How long a request other than a blocking query may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The variable Consul's own tools read the ACL token from.
const TOKEN_VARIABLE: &str = "CONSUL_HTTP_TOKEN";

/// What to check when the agent cannot be reached.
const FIX: &str = "check the Consul agent's address (its HTTP port, 8500 by default) and that it is running";

/// The tag every instance Trellis registers carries.
const TAG: &str = "trellis";

/// How an instance's health reaches Consul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The instance passes a TTL check.
    Ttl,
    /// Consul calls the instance's gRPC health service.
    Grpc,
}

/// The `consul://` backend.
#[derive(Debug)]
pub(super) struct Consul {
    url: String,
    http: Http,
    ttl: Duration,
    check: Check,
    deregister_after: Duration,
    interval: Duration,
    wait: Duration,
    dc: Option<String>,
}

impl Consul {
    pub(super) fn parse(target: &Target<'_>) -> Result<Self, Error> {
        let err = |reason: String| target.error(reason);
        let (agent, pairs) = target.query();
        let agent = parse_endpoint(agent).map_err(&err)?;
        let mut consul = Consul {
            url: target.url.to_owned(),
            http: Http::new(agent, ""),
            ttl: DEFAULT_TTL,
            check: Check::Ttl,
            deregister_after: DEFAULT_DEREGISTER_AFTER,
            interval: DEFAULT_INTERVAL,
            wait: DEFAULT_WAIT,
            dc: None,
        };
        let mut token = std::env::var(TOKEN_VARIABLE).ok().filter(|t| !t.is_empty()).map(Secret::new);
        for (key, value) in pairs {
            let duration = |least: Duration| {
                humantime::parse_duration(value).ok().filter(|d| *d >= least && !d.is_zero()).ok_or_else(
                    || {
                        err(format!(
                            "`{key}={value}`: expected a duration of at least {least:?}, such as 10s or 500ms"
                        ))
                    },
                )
            };
            match key {
                "ttl" => consul.ttl = duration(Duration::from_millis(300))?,
                "deregister_after" => consul.deregister_after = duration(Duration::from_millis(1))?,
                "interval" => consul.interval = duration(Duration::from_millis(1))?,
                "wait" => consul.wait = duration(Duration::from_millis(1))?,
                "check" => {
                    consul.check = match value {
                        "ttl" => Check::Ttl,
                        "grpc" => Check::Grpc,
                        _ => return Err(err(format!("`check={value}`: expected `ttl` or `grpc`"))),
                    }
                }
                "dc" if !value.is_empty()
                    && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
                {
                    consul.dc = Some(value.to_owned());
                }
                "dc" => return Err(err(format!("`dc={value}`: expected a datacenter name such as dc1"))),
                "token" if !value.is_empty() => token = Some(Secret::new(value.to_owned())),
                "token" => {
                    return Err(err(
                        "`token=` is empty: give the ACL token, or leave the option out".to_owned()
                    ));
                }
                _ => {
                    return Err(err(format!(
                        "unknown option `{key}`; consul:// takes `ttl`, `check`, `deregister_after`, \
                         `interval`, `wait`, `dc` and `token`"
                    )));
                }
            }
        }
        if let Some(token) = token {
            consul.http = consul.http.with_header("x-consul-token", token.expose(), true).map_err(&err)?;
        }
        Ok(consul)
    }

    fn error(&self, reason: impl std::fmt::Display) -> Error {
        Error::Registry { url: self.url.clone(), reason: reason.to_string() }
    }

    /// `&dc=DC`, or nothing for the agent's own datacenter.
    fn dc(&self) -> String {
        self.dc.as_ref().map_or_else(String::new, |dc| format!("&dc={dc}"))
    }

    /// The body of `PUT /v1/agent/service/register` for `instance`.
    fn registration(&self, instance: &Instance) -> Result<Vec<u8>, Error> {
        let meta = meta(&instance.metadata, instance.endpoint.scheme()).map_err(|e| self.error(e))?;
        let mut check = json!({
            "CheckID": check_id(&instance.id),
            "DeregisterCriticalServiceAfter": go_duration(self.deregister_after),
        });
        match self.check {
            Check::Ttl => {
                check["Name"] = json!(format!("Trellis TTL of {}", instance.service));
                check["TTL"] = json!(go_duration(self.ttl));
                check["Status"] = json!("passing");
            }
            Check::Grpc => {
                check["Name"] = json!(format!("gRPC health of {}", instance.service));
                check["GRPC"] = json!(format!("{}/{}", instance.endpoint, instance.service));
                check["GRPCUseTLS"] = json!(instance.endpoint.scheme() == Scheme::Https);
                check["Interval"] = json!(go_duration(self.ttl));
                check["Timeout"] = json!(go_duration(self.ttl.min(Duration::from_secs(5))));
            }
        }
        let body = json!({
            "ID": instance.id,
            "Name": instance.service,
            "Address": instance.endpoint.host(),
            "Port": instance.endpoint.port(),
            "Tags": [TAG],
            "Meta": meta,
            "Weights": { "Passing": instance.metadata.weight.max(1), "Warning": 1 },
            "Check": check,
        });
        Ok(body.to_string().into_bytes())
    }
}

/// The check of instance `id`.
fn check_id(id: &str) -> String {
    format!("service:{id}")
}

/// `duration` as Go writes durations, which Consul reads: `1500ms`.
fn go_duration(duration: Duration) -> String {
    format!("{}ms", duration.as_millis().max(1))
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

/// The `Meta` of an instance: its labels, then version, zone, weight and a
/// scheme other than `http`, checked against Consul's rules for meta.
fn meta(metadata: &Metadata, scheme: Scheme) -> Result<BTreeMap<String, String>, String> {
    let mut meta = metadata.labels.clone();
    for (key, value) in [("version", &metadata.version), ("zone", &metadata.zone)] {
        if let Some(value) = value {
            meta.insert(key.to_owned(), value.clone());
        }
    }
    meta.insert("weight".to_owned(), metadata.weight.to_string());
    if scheme != Scheme::Http {
        meta.insert("scheme".to_owned(), scheme.as_str().to_owned());
    }
    if meta.len() > 64 {
        return Err(format!("{} metadata entries; Consul takes at most 64: drop some labels", meta.len()));
    }
    for (key, value) in &meta {
        if key.is_empty()
            || key.len() > 128
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            || key.starts_with("consul-")
        {
            return Err(format!(
                "the label `{key}` cannot be a Consul meta key: use 1 to 128 letters, digits, `-` or `_`, \
                 not starting with `consul-`"
            ));
        }
        if value.len() > 512 {
            return Err(format!("the label `{key}` is longer than the 512 characters Consul takes"));
        }
    }
    Ok(meta)
}

/// One entry of `/v1/health/service/NAME`, as far as Trellis reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    node: Node,
    service: Service,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    weights: Option<Weights>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: u32,
}

impl Entry {
    /// The instance this entry describes, or why it cannot be one.
    fn instance(self, service: &str) -> Result<Instance, String> {
        let Service { id, address, port, meta, weights } = self.service;
        let host = if address.is_empty() { self.node.address } else { address };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if port == 0 {
            return Err("port 0".to_owned());
        }
        let endpoint = parse_endpoint(&Endpoint::new(host, port).to_string())?;
        let mut labels = meta.unwrap_or_default();
        let scheme = match labels.remove("scheme").as_deref() {
            None | Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some(other) => return Err(format!("scheme `{other}` is neither http nor https")),
        };
        let weight = match labels.remove("weight") {
            Some(weight) => weight.parse().map_err(|_| format!("weight `{weight}` is not a whole number"))?,
            None => weights.map_or(100, |w| w.passing.saturating_mul(100)),
        };
        let metadata =
            Metadata { version: labels.remove("version"), zone: labels.remove("zone"), weight, labels };
        Ok(Instance { id, service: service.to_owned(), endpoint: endpoint.with_scheme(scheme), metadata })
    }
}

/// Blocking queries on one service's passing instances.
#[derive(Debug)]
struct Query {
    http: Http,
    service: String,
    /// Path and query, without `index` and `wait`.
    path: String,
    /// The last `X-Consul-Index` seen; 0 before the first answer.
    index: u64,
    wait: Duration,
    /// Entries already warned about, by service ID.
    warned: HashSet<String>,
}

impl Source for Query {
    type Error = String;

    async fn fetch(&mut self) -> Result<Option<Vec<Instance>>, String> {
        let (path, timeout) = if self.index == 0 {
            (self.path.clone(), REQUEST_TIMEOUT)
        } else {
            let path = format!("{}&index={}&wait={}", self.path, self.index, go_duration(self.wait));
            // Consul adds up to wait/16 of jitter.
            (path, self.wait + self.wait / 16 + REQUEST_TIMEOUT)
        };
        let reply = self.http.send(Method::GET, &path, None, timeout).await?;
        if reply.status != StatusCode::OK {
            return Err(format!("GET {path} answered {}: {}", reply.status, reply.text()));
        }
        let index = reply
            .headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("GET {path} answered without a numeric X-Consul-Index header"))?;
        // Consul's rules: an index that went backwards starts over from 0;
        // one below 1 is taken as 1. An unchanged index (the wait ran out)
        // is decoded all the same: publishing compares, and an agent that
        // lost its state may come back to the same index with other entries.
        let previous = std::mem::replace(&mut self.index, index.max(1));
        if index < previous {
            tracing::info!(
                service = self.service,
                "the Consul index went back from {previous} to {index}; reading anew"
            );
            self.index = 0;
        }
        Ok(Some(self.decode(&reply)?))
    }
}

impl Query {
    /// The instances in a `/v1/health/service` answer; unreadable entries
    /// are skipped, with one warning each.
    fn decode(&mut self, reply: &Reply) -> Result<Vec<Instance>, String> {
        decode_health(&reply.body, &self.service, &mut self.warned)
            .map_err(|e| format!("{e}: {}", reply.text()))
    }
}

/// The instances of `service` in the body of a `/v1/health/service`
/// answer; unreadable entries are skipped, with one warning each (per ID in
/// `warned`).
pub(super) fn decode_health(
    body: &[u8],
    service: &str,
    warned: &mut HashSet<String>,
) -> Result<Vec<Instance>, String> {
    let entries: Vec<serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not a JSON array of entries: {e}"))?;
    let mut instances = Vec::with_capacity(entries.len());
    for entry in entries {
        let id = entry.pointer("/Service/ID").and_then(|v| v.as_str()).unwrap_or("(no ID)").to_owned();
        let read = serde_json::from_value::<Entry>(entry)
            .map_err(|e| e.to_string())
            .and_then(|e| e.instance(service));
        match read {
            Ok(instance) => instances.push(instance),
            Err(why) => {
                if warned.insert(id.clone()) {
                    tracing::warn!(service, id, "skipping a Consul entry that cannot be read: {why}");
                }
            }
        }
    }
    Ok(instances)
}

/// A registration in Consul: renewed (or watched) in the background.
#[derive(Debug)]
struct ConsulLease {
    http: Http,
    id: String,
    _renewal: AbortOnDrop,
}

impl Lease for ConsulLease {
    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        let ConsulLease { http, id, _renewal: renewal } = *self;
        drop(renewal);
        Box::pin(async move {
            let path = format!("/v1/agent/service/deregister/{}", encode(&id));
            match http.send(Method::PUT, &path, None, REQUEST_TIMEOUT).await {
                Ok(reply) if reply.status.is_success() || reply.status == StatusCode::NOT_FOUND => {}
                Ok(reply) => tracing::warn!(
                    id,
                    "cannot deregister from Consul: {} {}; the check's DeregisterCriticalServiceAfter removes it",
                    reply.status,
                    reply.text()
                ),
                Err(e) => tracing::warn!(
                    id,
                    "cannot deregister from Consul: {e}; the check's DeregisterCriticalServiceAfter removes it"
                ),
            }
            Ok(())
        })
    }
}

/// Registers `body` with the agent.
async fn register(http: &Http, body: &[u8]) -> Result<(), String> {
    let path = "/v1/agent/service/register?replace-existing-checks=true";
    let reply = http.send(Method::PUT, path, Some(body.to_vec()), REQUEST_TIMEOUT).await?;
    if reply.status.is_success() {
        Ok(())
    } else {
        Err(format!("PUT {path} answered {}: {}", reply.status, reply.text()))
    }
}

/// One renewal: passes the TTL check, or looks whether the agent still has
/// the instance; registers again when the agent lost it.
async fn renewal(http: &Http, check: Check, id: &str, body: &[u8]) -> Result<(), String> {
    let (method, path) = match check {
        Check::Ttl => (Method::PUT, format!("/v1/agent/check/pass/{}", encode(&check_id(id)))),
        Check::Grpc => (Method::GET, format!("/v1/agent/service/{}", encode(id))),
    };
    let reply = http.send(method.clone(), &path, None, REQUEST_TIMEOUT).await?;
    let text = reply.text();
    // Older agents answer 500 "Unknown check" rather than 404.
    let lost = reply.status == StatusCode::NOT_FOUND
        || reply.status == StatusCode::INTERNAL_SERVER_ERROR && text.to_ascii_lowercase().contains("unknown");
    if reply.status.is_success() {
        Ok(())
    } else if lost {
        register(http, body).await?;
        tracing::info!(id, "the Consul agent had lost the instance; registered again");
        Ok(())
    } else {
        Err(format!("{method} {path} answered {}: {text}", reply.status))
    }
}

impl Backend for Consul {
    fn register(&self, instance: Instance) -> BoxFuture<'_, Result<Box<dyn Lease>, Error>> {
        Box::pin(async move {
            let body = self.registration(&instance)?;
            register(&self.http, &body).await.map_err(|e| unreachable(&self.url, e, FIX))?;
            let what = format!("renewing {} in {}", instance.service, self.url);
            let (http, check, id) = (self.http.clone(), self.check, instance.id.clone());
            let renewal = renew(what, self.ttl / 3, move || {
                let (http, id, body) = (http.clone(), id.clone(), body.clone());
                async move { renewal(&http, check, &id, &body).await }
            });
            Ok(Box::new(ConsulLease { http: self.http.clone(), id: instance.id, _renewal: renewal })
                as Box<dyn Lease>)
        })
    }

    fn resolve(&self, service: &str) -> BoxFuture<'_, Result<Resolution, Error>> {
        let query = Query {
            http: self.http.clone(),
            service: service.to_owned(),
            path: format!("/v1/health/service/{}?passing=1{}", encode(service), self.dc()),
            index: 0,
            wait: self.wait,
            warned: HashSet::new(),
        };
        let (service, what) = (service.to_owned(), format!("resolving {service} in {}", self.url));
        let pace = Pace { every: Duration::ZERO, floor: self.interval };
        Box::pin(async move {
            follow(service, what, pace, query).await.map_err(|e| unreachable(&self.url, e, FIX))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: &str = "consul://HOST:PORT";

    fn parse(url: &str) -> Result<Consul, Error> {
        let shown = crate::registry::url::redact(url);
        Consul::parse(&Target { url: &shown, rest: url.strip_prefix("consul://").unwrap_or(url), form: FORM })
    }

    #[test]
    fn options_parse_and_bad_ones_are_named() {
        let consul = parse("consul://127.0.0.1:8500").unwrap();
        assert_eq!((consul.ttl, consul.check, consul.wait), (DEFAULT_TTL, Check::Ttl, DEFAULT_WAIT));
        let consul =
            parse("consul://h:1?ttl=1s&check=grpc&deregister_after=2s&interval=50ms&wait=2s&dc=eu-1")
                .unwrap();
        assert_eq!(
            (consul.ttl, consul.check, consul.dc()),
            (Duration::from_secs(1), Check::Grpc, "&dc=eu-1".to_owned())
        );
        for (url, needle) in [
            ("consul://", "HOST:PORT"),
            ("consul://h", "no port"),
            ("consul://h:1?ttl=soon", "`ttl=soon`"),
            ("consul://h:1?ttl=10ms", "at least"),
            ("consul://h:1?check=http", "`ttl` or `grpc`"),
            ("consul://h:1?dc=a/b", "datacenter"),
            ("consul://h:1?token=", "empty"),
            ("consul://h:1?color=red", "unknown option `color`"),
        ] {
            let msg = parse(url).map(drop).unwrap_err().to_string();
            assert!(msg.contains(url) && msg.contains(needle) && msg.contains(FORM), "{url}: {msg}");
        }
    }

    #[test]
    fn the_token_is_sent_but_never_shown() {
        let consul = parse("consul://h:1?token=hunter2").unwrap();
        assert!(!format!("{consul:?}").contains("hunter2"), "{consul:?}");
    }

    #[test]
    fn registrations_carry_metadata_weights_and_the_check() {
        let consul = parse("consul://h:1?ttl=3s&deregister_after=1m").unwrap();
        let metadata = Metadata {
            version: Some("1.2.0".into()),
            zone: Some("eu-1a".into()),
            weight: 0,
            labels: [("team".to_owned(), "pay".to_owned())].into(),
        };
        let instance = Instance::new("a.v1.A", Endpoint::new("10.0.0.7", 50051), metadata);
        let body: serde_json::Value =
            serde_json::from_slice(&consul.registration(&instance).unwrap()).unwrap();
        assert_eq!(body["Address"], "10.0.0.7");
        assert_eq!(body["Port"], 50051);
        assert_eq!(body["Meta"], json!({"team": "pay", "version": "1.2.0", "zone": "eu-1a", "weight": "0"}));
        assert_eq!(body["Weights"]["Passing"], 1);
        assert_eq!(body["Check"]["TTL"], "3000ms");
        assert_eq!(body["Check"]["DeregisterCriticalServiceAfter"], "60000ms");
        assert_eq!(body["Check"]["CheckID"], format!("service:{}", instance.id));

        let bad = Metadata { labels: [("a.b".to_owned(), "x".to_owned())].into(), ..Metadata::default() };
        let instance = Instance::new("a.v1.A", Endpoint::new("10.0.0.7", 1), bad);
        let msg = consul.registration(&instance).unwrap_err().to_string();
        assert!(msg.contains("`a.b`") && msg.contains("Consul meta key"), "{msg}");
    }

    #[test]
    fn entries_fall_back_to_the_node_address_and_to_consul_weights() {
        let entry: Entry = serde_json::from_value(json!({
            "Node": {"Node": "n1", "Address": "10.0.0.9"},
            "Service": {"ID": "x", "Service": "a.A", "Address": "", "Port": 7, "Meta": null,
                        "Weights": {"Passing": 3, "Warning": 1}}
        }))
        .unwrap();
        let instance = entry.instance("a.A").unwrap();
        assert_eq!((instance.endpoint.to_string(), instance.metadata.weight), ("10.0.0.9:7".to_owned(), 300));

        let entry: Entry = serde_json::from_value(json!({
            "Node": {"Address": "10.0.0.9"},
            "Service": {"ID": "y", "Address": "::1", "Port": 8,
                        "Meta": {"weight": "50", "zone": "z", "scheme": "https", "team": "t"}}
        }))
        .unwrap();
        let instance = entry.instance("a.A").unwrap();
        assert_eq!(instance.endpoint.uri(), "https://[::1]:8");
        assert_eq!((instance.metadata.weight, instance.metadata.zone.as_deref()), (50, Some("z")));
        assert_eq!(instance.metadata.labels.get("team").map(String::as_str), Some("t"));
    }
}

//! `etcd://HOST:PORT[,HOST:PORT...][?ttl=3s&prefix=/trellis]`: etcd v3.
//!
//! Each registered instance is one key, `{prefix}/services/{service}/{id}`,
//! holding the [`Instance`] as JSON and attached to a lease of `ttl` (whole
//! seconds, rounded up). The registering process renews the lease every
//! third of the TTL; a clean shutdown revokes it, and a process killed with
//! SIGKILL disappears when the lease expires. While etcd cannot be reached
//! the renewals keep being retried, and if the lease expired meanwhile the
//! instance is registered again under a new lease.
//!
//! A resolution reads the service's keys (in pages of 2,000, at one
//! revision, so a fleet of any size fits etcd's message limit), then watches
//! them from the revision it read. When the watch breaks it keeps the last instances,
//! reconnects with backoff, reads the keys again and watches anew.
//!
//! Requests are spread over all the listed members and each is bounded, so
//! a dead member of a cluster costs a retry, not a stall.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, KeyValue, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
    WatchOptions,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::poll::{KEEPING, OutageLog, publish};
use super::types::{
    AbortOnDrop, Backend, BoxFuture, DEFAULT_TTL, Heartbeat, Instance, Lease, Resolution, unreachable,
};
use super::url::{Target, parse_endpoint};
use crate::error::Error;

/// Where keys go unless `prefix` says otherwise.
const DEFAULT_PREFIX: &str = "/trellis";

/// What to check when etcd cannot be reached.
const FIX: &str = "check the etcd address and that etcd is running";

/// The longest lease etcd grants.
const MAX_TTL: Duration = Duration::from_secs(9_000_000_000);

/// How long connecting to one member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one request may take before it is retried, on another member if
/// the cluster has several.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the first registration or resolution may take in all.
const FIRST_CONTACT: Duration = Duration::from_secs(5);

/// How long a deregistration may take.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(3);

/// The pause between two attempts of a request.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How often a quiet watch asks etcd for a progress answer, so the
/// resolution's heartbeat stays fresh without changes and a watch whose
/// member stopped answering is noticed: after three unanswered requests it
/// is read and watched anew.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The first and the longest pause before a resolution reconnects.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(2));

/// HTTP/2 pings that find a silently dead connection. etcd refuses pings
/// more often than every 5 seconds.
const PING: (Duration, Duration) = (Duration::from_secs(6), Duration::from_secs(3));

/// The `etcd://` backend.
#[derive(Debug)]
pub(super) struct Etcd {
    url: String,
    /// `http://HOST:PORT` of each member.
    endpoints: Vec<String>,
    /// Lease TTL in seconds.
    ttl: i64,
    /// Key prefix, without a trailing `/`.
    prefix: String,
}

impl Etcd {
    pub(super) fn parse(target: &Target<'_>) -> Result<Self, Error> {
        let (url, err) = (target.url, |reason: String| target.error(reason));
        let (members, pairs) = target.query();
        let endpoints = members
            .split(',')
            .map(|addr| parse_endpoint(addr.trim()).map(|e| e.uri()).map_err(&err))
            .collect::<Result<Vec<_>, _>>()?;
        let mut etcd = Etcd {
            url: url.to_owned(),
            endpoints,
            ttl: whole_seconds(DEFAULT_TTL),
            prefix: DEFAULT_PREFIX.to_owned(),
        };
        for (key, value) in pairs {
            match key {
                "ttl" => {
                    etcd.ttl = humantime::parse_duration(value)
                        .ok()
                        .filter(|d| !d.is_zero() && *d <= MAX_TTL)
                        .map(whole_seconds)
                        .ok_or_else(|| {
                            err(format!(
                                "`ttl={value}`: expected a positive duration such as 3s \
                                 (whole seconds, at most {}s)",
                                MAX_TTL.as_secs()
                            ))
                        })?;
                }
                "prefix" => {
                    if !value.starts_with('/') || value.contains(char::is_whitespace) {
                        return Err(err(format!(
                            "`prefix={value}`: expected a key prefix starting with `/`, such as /trellis"
                        )));
                    }
                    etcd.prefix = value.trim_end_matches('/').to_owned();
                }
                _ => return Err(err(format!("unknown option `{key}`; etcd:// takes `ttl` and `prefix`"))),
            }
        }
        Ok(etcd)
    }

    /// The keys of `service`'s instances all start with this.
    fn service_prefix(&self, service: &str) -> String {
        format!("{}/services/{service}/", self.prefix)
    }

    /// A client over every member. Nothing is contacted until the first request.
    async fn client(&self) -> Result<Client, Error> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(PING.0, PING.1)
            // A member cut off from the others refuses requests and ends watches.
            .with_require_leader(true);
        Client::connect(&self.endpoints, Some(options)).await.map_err(|e| unreachable(&self.url, e, FIX))
    }
}

/// `ttl` in whole seconds, rounded up: etcd leases count in seconds.
fn whole_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// Runs the request `attempt` makes until it succeeds, each attempt bounded
/// by [`REQUEST_TIMEOUT`]; the last error once `deadline` passes.
async fn retry<T, F, Fut>(deadline: Instant, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    loop {
        let bound = REQUEST_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        let failure = match tokio::time::timeout(bound, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {bound:?}"),
        };
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(failure);
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Grants a lease of `ttl` seconds and puts `key` under it; returns the lease.
async fn grant_and_put(
    client: &Client,
    ttl: i64,
    key: &str,
    value: &[u8],
    deadline: Instant,
) -> Result<i64, String> {
    let lease = retry(deadline, || {
        let mut leases = client.lease_client();
        async move { leases.grant(ttl, None).await }
    })
    .await?
    .id();
    retry(deadline, || {
        let (mut kv, key, value) = (client.kv_client(), key.to_owned(), value.to_owned());
        async move { kv.put(key, value, Some(PutOptions::new().with_lease(lease))).await }
    })
    .await?;
    Ok(lease)
}

/// Renews lease `id` over `stream`, or over a new stream (perhaps to another
/// member) if there is none or it broke. `Ok(false)` when the lease is gone.
async fn renew(
    client: &Client,
    id: i64,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Result<bool, etcd_client::Error> {
    if let Some((keeper, responses)) = stream {
        let renewed = match keeper.keep_alive().await {
            Ok(()) => responses.message().await,
            Err(e) => Err(e),
        };
        match renewed {
            Ok(Some(response)) => return Ok(response.ttl() > 0),
            Ok(None) | Err(_) => *stream = None,
        }
    }
    // Opening a stream renews once, and fails this way if the lease is gone.
    match client.lease_client().keep_alive(id).await {
        Ok(opened) => {
            *stream = Some(opened);
            Ok(true)
        }
        Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Keeps `key` registered: renews `lease` every third of `ttl`, and puts the
/// key under a new lease if the old one expired. A renewal gets a third of
/// the TTL too, so a member that stops answering leaves time to renew
/// through another before the lease expires.
async fn keep_alive(
    client: Client,
    ttl: i64,
    key: String,
    value: Vec<u8>,
    lease: Arc<AtomicI64>,
    what: String,
) {
    let mut outage = OutageLog::new(what);
    let mut stream = None;
    let every = Duration::from_secs(ttl.unsigned_abs()) / 3;
    let bound = every.min(REQUEST_TIMEOUT);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let id = lease.load(Ordering::Relaxed);
        match tokio::time::timeout(bound, renew(&client, id, &mut stream)).await {
            Ok(Ok(true)) => outage.succeeded(),
            Ok(Ok(false)) => {
                stream = None;
                match grant_and_put(&client, ttl, &key, &value, Instant::now() + REQUEST_TIMEOUT).await {
                    Ok(id) => {
                        lease.store(id, Ordering::Relaxed);
                        tracing::info!(key, "the lease expired; registered again");
                        outage.succeeded();
                    }
                    Err(e) => outage.failed(&e, "retrying"),
                }
            }
            Ok(Err(e)) => {
                stream = None;
                outage.failed(&e, "retrying");
            }
            Err(_) => {
                stream = None;
                outage.failed(&format!("no answer within {bound:?}"), "retrying");
            }
        }
    }
}

/// A registration in etcd: a key under a lease kept alive in the background.
struct EtcdLease {
    client: Client,
    key: String,
    lease: Arc<AtomicI64>,
    _keep_alive: AbortOnDrop,
}

impl std::fmt::Debug for EtcdLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLease")
            .field("key", &self.key)
            .field("lease", &self.lease.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Lease for EtcdLease {
    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        let EtcdLease { client, key, lease, _keep_alive: renewals } = *self;
        drop(renewals);
        Box::pin(async move {
            let id = lease.load(Ordering::Relaxed);
            let revoked = retry(Instant::now() + REVOKE_TIMEOUT, || {
                let mut leases = client.lease_client();
                async move {
                    match leases.revoke(id).await {
                        // Already expired: nothing left to remove.
                        Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => Ok(()),
                        other => other.map(drop),
                    }
                }
            })
            .await;
            if let Err(e) = revoked {
                tracing::warn!(key, "cannot deregister: {e}; the entry goes when its lease expires");
            }
            Ok(())
        })
    }
}

/// The key and instance in `kv`; `None` (with a warning) if the value is not an instance.
fn decode(kv: &KeyValue) -> Option<(String, Instance)> {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    match serde_json::from_slice(kv.value()) {
        Ok(instance) => Some((key, instance)),
        Err(e) => {
            tracing::warn!(key, "skipping a registry entry that cannot be read: {e}");
            None
        }
    }
}

/// Keys read per request: about 500 KB of instances, well under the etcd
/// client's 4 MiB message limit, so a fleet of any size is read in pages.
const PAGE: i64 = 2_000;

/// The end of the key range that holds every key starting with `prefix`
/// (as etcd's own `--prefix`: the last byte that can be, incremented).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every key.
    vec![0]
}

/// Follows the keys of one service into a resolution's channel.
struct Follower {
    client: Client,
    prefix: String,
    /// Instances by key.
    instances: BTreeMap<String, Instance>,
    tx: watch::Sender<Arc<[Instance]>>,
    /// Beaten by every read and watch answer.
    heartbeat: Heartbeat,
}

impl Follower {
    /// Reads every key of the service, in pages of [`PAGE`] at the revision
    /// of the first, and publishes them; returns the revision read.
    async fn load(&mut self, deadline: Instant) -> Result<i64, String> {
        let end = prefix_end(self.prefix.as_bytes());
        let mut instances = BTreeMap::new();
        let mut from = self.prefix.clone().into_bytes();
        // 0 reads the latest revision: the first page's, which the others then read at.
        let mut revision = 0;
        loop {
            let response = retry(deadline, || {
                let (mut kv, key) = (self.client.kv_client(), from.clone());
                let options =
                    GetOptions::new().with_range(end.clone()).with_limit(PAGE).with_revision(revision);
                async move { kv.get(key, Some(options)).await }
            })
            .await?;
            self.heartbeat.beat();
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            instances.extend(response.kvs().iter().filter_map(decode));
            match response.kvs().last() {
                Some(last) if response.more() => {
                    // The next page starts right after the last key read.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        self.instances = instances;
        self.publish();
        Ok(revision)
    }

    fn publish(&self) {
        publish(&self.tx, self.instances.values().cloned().collect());
    }

    /// Applies the changes after `revision` until the watch breaks. Returns
    /// whether it was set up; a watch that cannot be set up is an outage.
    async fn watch(&mut self, revision: i64, outage: &mut OutageLog) -> bool {
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut watcher = self.client.watch_client();
        let watch = watcher.watch(self.prefix.clone(), Some(options));
        let mut stream = match tokio::time::timeout(REQUEST_TIMEOUT, watch).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                outage.failed(&e, KEEPING);
                return false;
            }
            Err(_) => {
                outage.failed(&format!("no answer within {REQUEST_TIMEOUT:?}"), KEEPING);
                return false;
            }
        };
        outage.succeeded();
        let mut progress = tokio::time::interval_at(Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unanswered = 0u32;
        let ended = loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = progress.tick() => {
                    if unanswered == 3 {
                        break format!("no answer to three progress requests, {PROGRESS_EVERY:?} apart");
                    }
                    unanswered += 1;
                    if let Err(e) = stream.request_progress().await {
                        break e.to_string();
                    }
                    continue;
                }
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => break "the watch ended".to_owned(),
                Err(e) => break e.to_string(),
            };
            unanswered = 0;
            self.heartbeat.beat();
            if response.canceled() {
                break format!("the watch was canceled: {}", response.cancel_reason());
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let entry = match event.event_type() {
                    EventType::Put => decode(kv),
                    EventType::Delete => None,
                };
                match entry {
                    Some((key, instance)) => self.instances.insert(key, instance),
                    None => self.instances.remove(&*String::from_utf8_lossy(kv.key())),
                };
            }
            self.publish();
        };
        // Often one member going away: an outage only if reading again fails.
        tracing::debug!(prefix = self.prefix, "etcd watch broke: {ended}; reading again");
        true
    }

    /// Watches, and when the watch breaks, keeps the last instances, reads
    /// them again with backoff and watches anew.
    async fn run(mut self, mut revision: i64, what: String) {
        let mut outage = OutageLog::new(what);
        let mut backoff = BACKOFF.0;
        loop {
            if self.watch(revision, &mut outage).await {
                backoff = BACKOFF.0;
            }
            revision = loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
                match self.load(Instant::now() + REQUEST_TIMEOUT).await {
                    Ok(revision) => break revision,
                    Err(e) => outage.failed(&e, KEEPING),
                }
            };
        }
    }
}

impl Backend for Etcd {
    fn register(&self, instance: Instance) -> BoxFuture<'_, Result<Box<dyn Lease>, Error>> {
        Box::pin(async move {
            let key = format!("{}{}", self.service_prefix(&instance.service), instance.id);
            let value = serde_json::to_vec(&instance).map_err(|e| Error::Registry {
                url: self.url.clone(),
                reason: format!("cannot encode entry: {e}"),
            })?;
            let client = self.client().await?;
            let id = grant_and_put(&client, self.ttl, &key, &value, Instant::now() + FIRST_CONTACT)
                .await
                .map_err(|e| unreachable(&self.url, e, FIX))?;
            let lease = Arc::new(AtomicI64::new(id));
            let what = format!("renewing {} in {}", instance.service, self.url);
            let task =
                tokio::spawn(keep_alive(client.clone(), self.ttl, key.clone(), value, lease.clone(), what));
            Ok(Box::new(EtcdLease { client, key, lease, _keep_alive: AbortOnDrop(task) }) as Box<dyn Lease>)
        })
    }

    fn resolve(&self, service: &str) -> BoxFuture<'_, Result<Resolution, Error>> {
        let (prefix, service) = (self.service_prefix(service), service.to_owned());
        Box::pin(async move {
            let (tx, rx) = watch::channel(Arc::from(Vec::new()));
            let heartbeat = Heartbeat::new();
            let mut follower = Follower {
                client: self.client().await?,
                prefix,
                instances: BTreeMap::new(),
                tx,
                heartbeat: heartbeat.clone(),
            };
            let revision = follower
                .load(Instant::now() + FIRST_CONTACT)
                .await
                .map_err(|e| unreachable(&self.url, e, FIX))?;
            let task = tokio::spawn(follower.run(revision, format!("resolving {service} in {}", self.url)));
            Ok(Resolution::new(service, rx, task).with_heartbeat(heartbeat))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Etcd, Error> {
        let rest = url.strip_prefix("etcd://").unwrap_or(url);
        Etcd::parse(&Target { url, rest, form: "etcd://HOST:PORT" })
    }

    #[test]
    fn a_prefix_ends_where_etcd_ends_it() {
        assert_eq!(prefix_end(b"/trellis/services/a.v1.A/"), b"/trellis/services/a.v1.A0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn members_and_defaults() {
        let etcd = parse("etcd://127.0.0.1:2379").unwrap();
        assert_eq!(etcd.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!((etcd.ttl, etcd.prefix.as_str()), (3, "/trellis"));
        assert_eq!(etcd.service_prefix("a.v1.A"), "/trellis/services/a.v1.A/");

        let etcd = parse("etcd://a:1, b.internal:2,[::1]:3").unwrap();
        assert_eq!(etcd.endpoints, ["http://a:1", "http://b.internal:2", "http://[::1]:3"]);
    }

    #[test]
    fn options_round_the_ttl_up_to_whole_seconds() {
        for (ttl, secs) in [("2s", 2), ("1500ms", 2), ("10ms", 1), ("1m", 60)] {
            let etcd = parse(&format!("etcd://h:1?ttl={ttl}")).unwrap();
            assert_eq!(etcd.ttl, secs, "{ttl}");
        }
        let etcd = parse("etcd://h:1?prefix=/apps/shop/&ttl=4s").unwrap();
        assert_eq!((etcd.ttl, etcd.service_prefix("s")), (4, "/apps/shop/services/s/".to_owned()));
        assert_eq!(parse("etcd://h:1?prefix=/").unwrap().service_prefix("s"), "/services/s/");
    }

    #[test]
    fn bad_urls_name_the_url_and_what_is_expected() {
        for (url, needle) in [
            ("etcd://", "HOST:PORT"),
            ("etcd://localhost", "no port"),
            ("etcd://h:1,", "HOST:PORT"),
            ("etcd://h:0", "port 0"),
            ("etcd://h:99999", "port"),
            ("etcd://h:1?ttl=soon", "positive duration"),
            ("etcd://h:1?ttl=0s", "positive duration"),
            ("etcd://h:1?ttl=1000years", "at most 9000000000s"),
            ("etcd://h:1?prefix=trellis", "starting with `/`"),
            ("etcd://h:1?color=red", "unknown option `color`"),
        ] {
            let msg = parse(url).map(|_| ()).unwrap_err().to_string();
            assert!(msg.contains(url) && msg.contains(needle), "{url}: {msg}");
        }
    }
}

//! What the server and the channels say about themselves: the server's
//! state (for `/readyz` and `trellis_server_state`), and a view of each
//! channel (for the status page and the gauges read at scrape time).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use serde::Serialize;

/// Where the server is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ServerState {
    /// Not yet serving, or not yet registered.
    Starting,
    /// Every service `SERVING` and registered: ready.
    Serving,
    /// Shutdown started: `NOT_SERVING`, deregistered, still answering
    /// while the propagation delay runs.
    ShuttingDown,
    /// No longer accepting connections; in-flight calls finishing.
    Draining,
    /// Stopped.
    Stopped,
}

impl ServerState {
    const ALL: [ServerState; 5] = [
        ServerState::Starting,
        ServerState::Serving,
        ServerState::ShuttingDown,
        ServerState::Draining,
        ServerState::Stopped,
    ];

    fn name(self) -> &'static str {
        match self {
            ServerState::Starting => "starting",
            ServerState::Serving => "serving",
            ServerState::ShuttingDown => "shutting_down",
            ServerState::Draining => "draining",
            ServerState::Stopped => "stopped",
        }
    }
}

/// What the server registered, for the status page.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ServerInfo {
    pub(crate) listen: String,
    pub(crate) services: Vec<&'static str>,
    pub(crate) registry: Option<String>,
    /// The endpoint registered for every service.
    pub(crate) endpoint: String,
    /// Whether the leases are held (false before registering and after deregistering).
    pub(crate) registered: bool,
}

/// How a channel sees one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EndpointHealth {
    /// In rotation, and answered calls or health checks.
    Ready,
    /// In rotation, but nothing heard from it yet.
    Connecting,
    /// Out of rotation after failures or for its latency.
    Ejected,
    /// Its server's health says `NOT_SERVING`.
    NotServing,
}

impl EndpointHealth {
    const ALL: [EndpointHealth; 4] = [
        EndpointHealth::Ready,
        EndpointHealth::Connecting,
        EndpointHealth::Ejected,
        EndpointHealth::NotServing,
    ];

    fn name(self) -> &'static str {
        match self {
            EndpointHealth::Ready => "ready",
            EndpointHealth::Connecting => "connecting",
            EndpointHealth::Ejected => "ejected",
            EndpointHealth::NotServing => "not_serving",
        }
    }
}

/// A method's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    /// As a gauge: 0 closed, 1 half-open, 2 open.
    fn value(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// One endpoint of a channel now.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EndpointSnapshot {
    pub(crate) address: String,
    pub(crate) health: EndpointHealth,
    pub(crate) in_flight: usize,
    /// The balancer's load: latency estimate x (in flight + 1), in milliseconds.
    pub(crate) load_ms: f64,
    /// The mean latency, in milliseconds.
    pub(crate) latency_ms: f64,
    /// Attempts sent there so far.
    pub(crate) calls: u64,
    /// Its instance's weight (share of calls; 0 drains it).
    pub(crate) weight: u32,
    /// Whether its instance is in the client's own zone.
    pub(crate) local: bool,
    /// Why it was last ejected, if it was.
    pub(crate) last_failure: String,
}

/// One method's breaker now.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BreakerSnapshot {
    pub(crate) method: &'static str,
    pub(crate) state: BreakerState,
}

/// One channel now.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChannelSnapshot {
    pub(crate) service: &'static str,
    pub(crate) registry: String,
    pub(crate) balance: String,
    /// The client's own zone, whose instances it prefers.
    pub(crate) zone: Option<String>,
    /// The instances the registry lists; the channel connects to
    /// `endpoints`, a subset of them in a large fleet.
    pub(crate) instances: usize,
    /// Seconds since the registry last answered this channel, if it has.
    pub(crate) registry_answered_seconds_ago: Option<f64>,
    pub(crate) registry_error: Option<String>,
    pub(crate) endpoints: Vec<EndpointSnapshot>,
    pub(crate) breakers: Vec<BreakerSnapshot>,
}

/// A channel that can describe itself.
pub(crate) trait ChannelView: Send + Sync {
    fn snapshot(&self) -> ChannelSnapshot;
}

/// What the server and the channels published.
#[derive(Default)]
pub(crate) struct Board {
    state: AtomicU8,
    server: Mutex<Option<ServerInfo>>,
    channels: Mutex<Vec<Weak<dyn ChannelView>>>,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board").field("state", &self.state()).finish_non_exhaustive()
    }
}

impl Board {
    pub(crate) fn state(&self) -> ServerState {
        ServerState::ALL
            .get(usize::from(self.state.load(Ordering::SeqCst)))
            .copied()
            .unwrap_or(ServerState::Stopped)
    }

    pub(crate) fn set_state(&self, state: ServerState) {
        let index = ServerState::ALL.iter().position(|s| *s == state).unwrap_or(0);
        self.state.store(index as u8, Ordering::SeqCst);
    }

    pub(crate) fn set_server(&self, info: ServerInfo) {
        *self.server.lock().unwrap_or_else(PoisonError::into_inner) = Some(info);
    }

    pub(crate) fn set_registered(&self, registered: bool) {
        if let Some(info) = self.server.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            info.registered = registered;
        }
    }

    pub(crate) fn server(&self) -> Option<ServerInfo> {
        self.server.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Adds a channel; it leaves the board when it is dropped.
    pub(crate) fn add_channel(&self, view: Weak<dyn ChannelView>) {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels.retain(|c| c.strong_count() > 0);
        channels.push(view);
    }

    /// Every live channel now, one per target service: the endpoints of the
    /// first built, each method's breaker the least closed of all.
    pub(crate) fn channels(&self) -> Vec<ChannelSnapshot> {
        let views: Vec<Arc<dyn ChannelView>> = self
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let mut snapshots: Vec<ChannelSnapshot> = Vec::new();
        for view in views {
            let snapshot = view.snapshot();
            match snapshots.iter_mut().find(|s| s.service == snapshot.service) {
                Some(first) => {
                    for breaker in snapshot.breakers {
                        if let Some(known) = first.breakers.iter_mut().find(|b| b.method == breaker.method) {
                            known.state = known.state.max(breaker.state);
                        }
                    }
                }
                None => snapshots.push(snapshot),
            }
        }
        snapshots
    }
}

/// Exports the state gauges at scrape time.
#[derive(Debug)]
pub(super) struct BoardCollector(pub(super) Arc<Board>);

fn family<'a>(
    encoder: &'a mut DescriptorEncoder<'_>,
    name: &'a str,
    help: &str,
) -> Result<prometheus_client::encoding::MetricEncoder<'a>, std::fmt::Error> {
    encoder.encode_descriptor(name, help, None, MetricType::Gauge)
}

impl Collector for BoardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let now = self.0.state();
        {
            let mut state = family(
                &mut encoder,
                "trellis_server_state",
                "The server's lifecycle state: 1 for the current one (starting, serving, shutting_down, draining, stopped)",
            )?;
            for s in ServerState::ALL {
                ConstGauge::new(i64::from(s == now)).encode(state.encode_family(&[("state", s.name())])?)?;
            }
        }
        let ready = ConstGauge::new(i64::from(now == ServerState::Serving));
        ready.encode(family(&mut encoder, "trellis_server_ready", "1 while /readyz answers 200")?)?;

        let channels = self.0.channels();
        {
            let mut endpoints = family(
                &mut encoder,
                "trellis_client_endpoints",
                "Endpoints of a target service by state: ready, connecting (nothing heard yet), ejected, not_serving",
            )?;
            for channel in &channels {
                for health in EndpointHealth::ALL {
                    let n = channel.endpoints.iter().filter(|e| e.health == health).count();
                    let labels = [("service", channel.service), ("state", health.name())];
                    ConstGauge::new(n as i64).encode(endpoints.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut breakers = family(
                &mut encoder,
                "trellis_client_breaker_state",
                "A method's circuit breaker: 0 closed, 1 half-open, 2 open",
            )?;
            for channel in &channels {
                for breaker in &channel.breakers {
                    let labels = [("service", channel.service), ("method", breaker.method)];
                    ConstGauge::new(breaker.state.value()).encode(breakers.encode_family(&labels)?)?;
                }
            }
        }
        let mut answered = family(
            &mut encoder,
            "trellis_client_registry_answer_age_seconds",
            "Seconds since the registry last answered for a target service, changes or not (a poll, a watch event or progress answer)",
        )?;
        for channel in &channels {
            if let Some(age) = channel.registry_answered_seconds_ago {
                ConstGauge::new(age).encode(answered.encode_family(&[("service", channel.service)])?)?;
            }
        }
        Ok(())
    }
}

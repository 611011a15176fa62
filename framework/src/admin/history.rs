//! The recent past of each endpoint, for the status page's charts: sampled
//! once a second by the admin listener, the last minute kept.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::metrics::ChannelSnapshot;

/// How often the endpoints are sampled.
pub(super) const EVERY: Duration = Duration::from_secs(1);
/// How many samples are kept per endpoint.
const KEPT: usize = 60;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    calls: u64,
    latency_ms: f64,
}

/// One endpoint's last minute: calls per second and mean latency, oldest first.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct Series {
    rate: Vec<f64>,
    latency_ms: Vec<f64>,
}

/// The samples of every endpoint, by service and address.
#[derive(Debug, Default)]
pub(super) struct History {
    samples: Mutex<HashMap<(String, String), VecDeque<Sample>>>,
}

impl History {
    /// Records what `channels` say now; endpoints that left are forgotten.
    pub(super) fn record(&self, channels: &[ChannelSnapshot], at: Instant) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let mut seen = Vec::new();
        for channel in channels {
            for endpoint in &channel.endpoints {
                let key = (channel.service.to_owned(), endpoint.address.clone());
                let series = samples.entry(key.clone()).or_default();
                series.push_back(Sample { at, calls: endpoint.calls, latency_ms: endpoint.latency_ms });
                while series.len() > KEPT {
                    series.pop_front();
                }
                seen.push(key);
            }
        }
        samples.retain(|key, _| seen.contains(key));
    }

    /// The series of each endpoint of `service`, by address.
    pub(super) fn of(&self, service: &str) -> BTreeMap<String, Series> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|((_, address), samples)| {
                let pairs = samples.iter().zip(samples.iter().skip(1));
                let rate = pairs
                    .map(|(a, b)| {
                        let seconds = b.at.saturating_duration_since(a.at).as_secs_f64();
                        if seconds > 0.0 { b.calls.saturating_sub(a.calls) as f64 / seconds } else { 0.0 }
                    })
                    .collect();
                let latency_ms = samples.iter().skip(1).map(|s| s.latency_ms).collect();
                (address.clone(), Series { rate, latency_ms })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{EndpointHealth, EndpointSnapshot};

    fn channel(calls: u64) -> ChannelSnapshot {
        ChannelSnapshot {
            service: "s.v1.S",
            registry: String::new(),
            balance: String::new(),
            zone: None,
            instances: 1,
            registry_answered_seconds_ago: None,
            registry_error: None,
            endpoints: vec![EndpointSnapshot {
                address: "127.0.0.1:1".to_owned(),
                health: EndpointHealth::Ready,
                in_flight: 0,
                load_ms: 0.0,
                latency_ms: 2.0,
                calls,
                weight: 100,
                local: false,
                last_failure: String::new(),
            }],
            breakers: Vec::new(),
        }
    }

    #[test]
    fn rates_come_from_successive_samples() {
        let history = History::default();
        let start = Instant::now();
        history.record(&[channel(0)], start);
        history.record(&[channel(10)], start + Duration::from_secs(1));
        history.record(&[channel(30)], start + Duration::from_secs(3));
        let series = &history.of("s.v1.S")["127.0.0.1:1"];
        assert_eq!(series.rate, vec![10.0, 10.0]);
        assert_eq!(series.latency_ms, vec![2.0, 2.0]);
        history.record(&[], start + Duration::from_secs(4));
        assert!(history.of("s.v1.S").is_empty(), "a gone endpoint is forgotten");
    }
}

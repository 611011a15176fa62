//! Following the registry: the endpoint set changes as instances come and
//! go, and each endpoint carries its instance's weight and whether it runs
//! in the client's zone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tower_layer::Layer;

use super::hash::{rendezvous, weighted_score};
use super::pick::Member;
use super::{Connector, Shared};
use crate::client::endpoint::{EndpointLayer, EndpointState};
use crate::registry::{Endpoint, Instance, Registry};

/// How long to wait before resolving again after the registry failed.
const RESOLVE_RETRY: Duration = Duration::from_millis(500);

/// Keeps the endpoint set current. Keeps the last known endpoints while the
/// registry cannot be reached, and stops when the balancer is dropped.
pub(super) async fn follow<S>(
    registry: Registry,
    shared: Weak<Shared<S>>,
    connect: Connector<S>,
    bump: watch::Sender<u64>,
) {
    let Some(service) = shared.upgrade().map(|s| s.service) else { return };
    let mut resolution = loop {
        match registry.resolve(service).await {
            Ok(resolution) => break resolution,
            Err(err) => {
                let Some(shared) = shared.upgrade() else { return };
                if shared.set_registry_error(Some(err.to_string())) {
                    tracing::warn!(service, "cannot resolve: {err}; retrying");
                }
                drop(shared);
                tokio::time::sleep(RESOLVE_RETRY).await;
            }
        }
    };
    if let Some(shared) = shared.upgrade() {
        shared.set_registry_error(None);
        shared.counters.metrics.resolved(resolution.heartbeat().clone());
    }
    let mut next = Some(resolution.current());
    while let Some(instances) = next {
        let Some(shared) = shared.upgrade() else { return };
        let changes = apply(&shared, service, &connect, &instances);
        if changes > 0 {
            shared.counters.metrics.discovery_updated(changes);
            bump.send_modify(|n| *n += 1);
        }
        drop(shared);
        next = resolution.changed().await;
    }
}

/// Each endpoint's weight and whether it is in the client's zone.
type Placements<'a> = BTreeMap<&'a Endpoint, (u32, bool)>;

/// Where an endpoint's instance runs and its share of calls. Instances
/// that share an endpoint count as one, with the highest weight.
fn placements<'a>(instances: &'a [Instance], zone: Option<&str>) -> Placements<'a> {
    let mut placements = BTreeMap::new();
    for instance in instances {
        let local = zone.is_some() && instance.metadata.zone.as_deref() == zone;
        let entry = placements.entry(&instance.endpoint).or_insert((0, false));
        *entry = (entry.0.max(instance.metadata.weight), entry.1 || local);
    }
    placements
}

/// The endpoints a channel connects to: every one in a fleet of at most
/// `size` (or when `size` is 0); else the `size` with the highest weighted
/// rendezvous score for the channel's `seed`. Rendezvous hashing keeps a
/// subset stable: an instance that comes or goes changes at most one
/// member of it; and with random seeds every instance is in about the same
/// number of subsets (in proportion to its weight). A client in a zone takes
/// three quarters of its subset from its zone and the rest from others, so
/// it has somewhere to spill over to; a side with too few leaves its share
/// to the other.
fn subset(mut placements: Placements<'_>, size: usize, seed: u64) -> Placements<'_> {
    if size == 0 || placements.len() <= size {
        return placements;
    }
    let mut ranked: Vec<(f64, &Endpoint, bool)> = placements
        .iter()
        .map(|(&endpoint, &(weight, local))| {
            (weighted_score(rendezvous(seed, endpoint), weight), endpoint, local)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let locals = ranked.iter().filter(|r| r.2).count();
    let (local_quota, remote_quota) = match locals {
        0 => (0, size),
        n if n == ranked.len() => (size, 0),
        n => {
            let local = (size - size / 4).min(n);
            let remote = (size - local).min(ranked.len() - n);
            (size - remote, remote)
        }
    };
    let keep: BTreeSet<&Endpoint> = ranked
        .iter()
        .filter(|r| r.2)
        .take(local_quota)
        .chain(ranked.iter().filter(|r| !r.2).take(remote_quota))
        .map(|r| r.1)
        .collect();
    placements.retain(|endpoint, _| keep.contains(endpoint));
    placements
}

/// Brings the endpoint set in line with `instances`: connects to new
/// endpoints, drops gone ones, and records weights and zones. Returns the
/// number of changes.
fn apply<S>(
    shared: &Shared<S>,
    service: &'static str,
    connect: &Connector<S>,
    instances: &[Instance],
) -> u64 {
    let all = placements(instances, shared.zone.as_deref());
    shared.instances.store(all.len(), std::sync::atomic::Ordering::Relaxed);
    let placements = subset(all, shared.subset_size, shared.subset_seed);
    let old = shared.endpoints.snapshot();
    let known: BTreeSet<&Endpoint> = old.iter().map(|m| &m.endpoint).collect();
    let mut changes = 0;
    let mut list: Vec<Arc<Member<S>>> = Vec::with_capacity(placements.len());
    for member in old.iter() {
        match placements.get(&member.endpoint) {
            Some(&(weight, local)) => {
                if (member.weight(), member.local()) != (weight, local) {
                    tracing::debug!(service, endpoint = %member.endpoint, weight, local, "endpoint placement changed");
                    member.set_placement(weight, local);
                    changes += 1;
                }
                list.push(Arc::clone(member));
            }
            None => {
                tracing::debug!(service, endpoint = %member.endpoint, "endpoint removed");
                changes += 1;
            }
        }
    }
    for (&endpoint, &(weight, local)) in &placements {
        if known.contains(endpoint) {
            continue;
        }
        let state = Arc::new(EndpointState::new(
            endpoint.clone(),
            service,
            shared.outliers.clone(),
            shared.counters.clone(),
        ));
        state.set_placement(weight, local);
        match connect(&state) {
            Ok((transport, health)) => {
                tracing::debug!(service, %endpoint, weight, local, "endpoint added");
                let service = EndpointLayer::new(state.clone()).layer(transport);
                list.push(Arc::new(Member { state, service, _health: health }));
                changes += 1;
            }
            Err(err) => tracing::warn!(service, %endpoint, "ignoring endpoint: {err}"),
        }
    }
    if changes > 0 {
        shared.endpoints.replace(list);
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Metadata;

    fn instance(port: u16, weight: u32, zone: &str) -> Instance {
        let metadata = Metadata { weight, zone: Some(zone.to_owned()), ..Metadata::default() };
        Instance::new("t.v1.T", Endpoint::new("127.0.0.1", port), metadata)
    }

    #[test]
    fn each_endpoint_gets_its_instances_weight_and_whether_it_is_in_the_clients_zone() {
        let instances =
            [instance(1, 100, "a"), instance(2, 50, "b"), instance(2, 200, "b"), instance(3, 0, "a")];
        let placed = placements(&instances, Some("a"));
        let at = |port| placed[&Endpoint::new("127.0.0.1", port)];
        assert_eq!(
            (at(1), at(2), at(3)),
            ((100, true), (200, false), (0, true)),
            "shared: the highest weight"
        );
        let placed = placements(&instances, None);
        assert!(placed.values().all(|(_, local)| !local), "a client without a zone prefers none");
    }

    fn fleet(n: u16, zone_of: impl Fn(u16) -> &'static str) -> Vec<Instance> {
        (1..=n).map(|port| instance(port, 100, zone_of(port))).collect()
    }

    fn chosen(instances: &[Instance], size: usize, seed: u64, zone: Option<&str>) -> BTreeSet<u16> {
        subset(placements(instances, zone), size, seed).keys().map(|e| e.port()).collect()
    }

    #[test]
    fn a_subset_is_bounded_spread_evenly_and_moves_little_when_the_fleet_changes() {
        let instances = fleet(200, |_| "a");
        assert_eq!(chosen(&instances, 0, 1, None).len(), 200, "0: every instance");
        assert_eq!(chosen(&instances[..10], 20, 1, None).len(), 10, "a small fleet: every instance");
        // 1,000 clients with subsets of 20 out of 200: 100 clients per instance on average.
        let mut clients_of = std::collections::BTreeMap::<u16, usize>::new();
        for seed in 0..1000 {
            let subset = chosen(&instances, 20, seed, None);
            assert_eq!(subset.len(), 20);
            for port in subset {
                *clients_of.entry(port).or_default() += 1;
            }
        }
        let (fewest, most) = (clients_of.values().min().unwrap(), clients_of.values().max().unwrap());
        assert!(clients_of.len() == 200 && *fewest >= 60 && *most <= 140, "{fewest}..{most}");
        // One instance gone or added: at most one member changes.
        for seed in 0..50 {
            let before = chosen(&instances, 20, seed, None);
            let fewer: Vec<Instance> = instances.iter().filter(|i| i.endpoint.port() != 7).cloned().collect();
            let after = chosen(&fewer, 20, seed, None);
            assert!(before.difference(&after).count() <= 1, "seed {seed}: removal");
            let mut more = instances.clone();
            more.push(instance(999, 100, "a"));
            let after = chosen(&more, 20, seed, None);
            assert!(before.difference(&after).count() <= 1, "seed {seed}: addition");
        }
        // Weight 0 (draining) instances are the last to take a place.
        let mut drained = instances.clone();
        drained.iter_mut().take(100).for_each(|i| i.metadata.weight = 0);
        assert!(chosen(&drained, 20, 3, None).iter().all(|port| *port > 100));
    }

    #[test]
    fn a_zoned_subset_takes_three_quarters_from_its_zone() {
        let instances = fleet(100, |port| if port <= 50 { "a" } else { "b" });
        let subset = chosen(&instances, 20, 5, Some("a"));
        let local = subset.iter().filter(|port| **port <= 50).count();
        assert_eq!((subset.len(), local), (20, 15));
        // Its zone has only 5: those, and the rest from the others.
        let few = fleet(100, |port| if port <= 5 { "a" } else { "b" });
        let subset = chosen(&few, 20, 5, Some("a"));
        assert_eq!((subset.len(), subset.iter().filter(|port| **port <= 5).count()), (20, 5));
    }
}

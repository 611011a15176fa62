//! Following the registry: the endpoint set changes as instances come and
//! go, and each endpoint carries its instance's weight and whether it runs
//! in the client's zone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tower_layer::Layer;

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

/// Where an endpoint's instance runs and its share of calls. Instances
/// that share an endpoint count as one, with the highest weight.
fn placements<'a>(instances: &'a [Instance], zone: Option<&str>) -> BTreeMap<&'a Endpoint, (u32, bool)> {
    let mut placements = BTreeMap::new();
    for instance in instances {
        let local = zone.is_some() && instance.metadata.zone.as_deref() == zone;
        let entry = placements.entry(&instance.endpoint).or_insert((0, false));
        *entry = (entry.0.max(instance.metadata.weight), entry.1 || local);
    }
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
    let placements = placements(instances, shared.zone.as_deref());
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
}

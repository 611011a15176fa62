//! Following the registry: the endpoint set changes as instances come and go.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tower::discover::Change;
use tower_layer::Layer;

use super::pick::Member;
use super::{Connector, Shared};
use crate::client::endpoint::{EndpointLayer, EndpointState};
use crate::registry::Registry;

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
    let resolution = loop {
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
    let mut changes = std::pin::pin!(resolution.into_changes());
    while let Some(change) =
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(changes.as_mut(), cx)).await
    {
        let Some(shared) = shared.upgrade() else { return };
        let mut list: Vec<Arc<Member<S>>> = shared.endpoints.snapshot().to_vec();
        match change {
            Change::Insert(_, endpoint) => {
                let state = Arc::new(EndpointState::new(
                    endpoint.clone(),
                    service,
                    shared.outliers.clone(),
                    shared.counters.clone(),
                ));
                match connect(&state) {
                    Ok((transport, health)) => {
                        tracing::debug!(service, %endpoint, "endpoint added");
                        let service = EndpointLayer::new(state.clone()).layer(transport);
                        list.retain(|m| m.endpoint != endpoint);
                        list.push(Arc::new(Member { state, service, _health: health }));
                    }
                    Err(err) => tracing::warn!(service, %endpoint, "ignoring endpoint: {err}"),
                }
            }
            Change::Remove(endpoint) => {
                tracing::debug!(service, %endpoint, "endpoint removed");
                list.retain(|m| m.endpoint != endpoint);
            }
        }
        shared.endpoints.replace(list);
        shared.counters.metrics.discovery_updated(1);
        bump.send_modify(|n| *n += 1);
    }
}

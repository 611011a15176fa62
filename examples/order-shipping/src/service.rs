//! The `OrderShipping` gRPC handlers.

use trellis::{Request, Response, Status};

use crate::proto::order::shipping::v1::order_shipping_server::OrderShipping;
use crate::proto::order::shipping::v1::{Address, GetShipmentRequest, ShipRequest, ShipResponse, Shipment};
use crate::store::{self, NewShipment, ShipmentRecord, ShipmentStore, StoreError};

/// Longest accepted id, key or address line.
const MAX_LEN: usize = 128;

/// Implements `order.shipping.v1.OrderShipping` over a [`ShipmentStore`].
#[derive(Debug, Clone)]
pub struct ShippingService {
    store: ShipmentStore,
}

impl ShippingService {
    /// Serves shipments from `store`.
    pub fn new(store: ShipmentStore) -> Self {
        ShippingService { store }
    }

    /// Runs a blocking store operation off the async workers.
    async fn blocking<T, F>(&self, op: F) -> Result<T, Status>
    where
        F: FnOnce(&ShipmentStore) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || op(&store))
            .await
            .map_err(|e| Status::internal(format!("shipment store task failed: {e}")))?
            .map_err(store_status)
    }
}

#[trellis::async_trait]
impl OrderShipping for ShippingService {
    async fn ship(&self, request: Request<ShipRequest>) -> Result<Response<ShipResponse>, Status> {
        let req = request.into_inner();
        let order_id = required("order_id", req.order_id)?;
        let idempotency_key = required("idempotency_key", req.idempotency_key)?;
        let address = req.address.ok_or_else(|| Status::invalid_argument("address: required"))?;
        let address = store::Address {
            name: required("address.name", address.name)?,
            line1: required("address.line1", address.line1)?,
            line2: optional("address.line2", address.line2)?,
            city: required("address.city", address.city)?,
            postal_code: optional("address.postal_code", address.postal_code)?,
            country: country(address.country)?,
        };
        let new = NewShipment { order_id, address, idempotency_key };
        let outcome = self.blocking(move |store| store.ship(&new)).await?;
        Ok(Response::new(ShipResponse { tracking_id: outcome.record.tracking_id }))
    }

    async fn get_shipment(&self, request: Request<GetShipmentRequest>) -> Result<Response<Shipment>, Status> {
        let order_id = required("order_id", request.into_inner().order_id)?;
        let lookup = order_id.clone();
        match self.blocking(move |store| store.get(&lookup)).await? {
            Some(record) => Ok(Response::new(shipment(record))),
            None => Err(Status::not_found(format!("order `{order_id}` has not shipped"))),
        }
    }
}

fn optional(field: &str, value: String) -> Result<String, Status> {
    let value = value.trim().to_owned();
    if value.len() > MAX_LEN {
        return Err(Status::invalid_argument(format!(
            "{field}: at most {MAX_LEN} bytes, got {}",
            value.len()
        )));
    }
    Ok(value)
}

fn required(field: &str, value: String) -> Result<String, Status> {
    let value = optional(field, value)?;
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: required")));
    }
    Ok(value)
}

fn country(value: String) -> Result<String, Status> {
    let code = required("address.country", value)?.to_ascii_uppercase();
    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(Status::invalid_argument(format!(
            "address.country: `{code}` is not an ISO 3166-1 alpha-2 code such as DE or US"
        )));
    }
    Ok(code)
}

fn shipment(record: ShipmentRecord) -> Shipment {
    let a = record.address;
    Shipment {
        tracking_id: record.tracking_id,
        order_id: record.order_id,
        address: Some(Address {
            name: a.name,
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            postal_code: a.postal_code,
            country: a.country,
        }),
        created_at_ms: record.created_at_ms,
    }
}

fn store_status(err: StoreError) -> Status {
    match err {
        StoreError::IdempotencyKeyReused { .. } => {
            Status::invalid_argument(format!("idempotency_key: {err}; use a new key for a new request"))
        }
        StoreError::AlreadyExists { .. } => Status::already_exists(err.to_string()),
        other => {
            tracing::error!(error = %other, "shipment store failed");
            Status::internal(format!("shipment store failed: {other}"))
        }
    }
}

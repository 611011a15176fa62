//! The `OrderPayment` gRPC handlers.

use trellis::{Request, Response, Status};

use crate::proto::order::payment::v1::order_payment_server::OrderPayment;
use crate::proto::order::payment::v1::{
    GetPaymentRequest, PayRequest, PayResponse, Payment, PaymentState, RefundRequest,
};
use crate::store::{self, NewPayment, PaymentRecord, PaymentStore, StoreError};

/// The currencies accepted, ISO 4217.
const CURRENCIES: &[&str] = &[
    "AUD", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD", "INR", "JPY", "KRW", "MXN", "NOK",
    "NZD", "PLN", "SEK", "SGD", "USD", "ZAR",
];

/// Longest accepted order id or idempotency key.
const MAX_ID_LEN: usize = 128;

/// Implements `order.payment.v1.OrderPayment` over a [`PaymentStore`].
#[derive(Debug, Clone)]
pub struct PaymentService {
    store: PaymentStore,
}

impl PaymentService {
    /// Serves payments from `store`.
    pub fn new(store: PaymentStore) -> Self {
        PaymentService { store }
    }

    /// Runs a blocking store operation off the async workers.
    async fn blocking<T, F>(&self, op: F) -> Result<T, Status>
    where
        F: FnOnce(&PaymentStore) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || op(&store))
            .await
            .map_err(|e| Status::internal(format!("payment store task failed: {e}")))?
            .map_err(store_status)
    }
}

#[trellis::async_trait]
impl OrderPayment for PaymentService {
    async fn pay(&self, request: Request<PayRequest>) -> Result<Response<PayResponse>, Status> {
        let req = request.into_inner();
        let order_id = required_id("order_id", req.order_id)?;
        let idempotency_key = required_id("idempotency_key", req.idempotency_key)?;
        if req.amount_minor <= 0 {
            return Err(Status::invalid_argument(format!(
                "amount_minor: must be a positive number of minor units (cents), got {}",
                req.amount_minor
            )));
        }
        let currency = req.currency.trim().to_ascii_uppercase();
        if !CURRENCIES.contains(&currency.as_str()) {
            return Err(Status::invalid_argument(format!(
                "currency: unknown currency `{}`; expected an ISO 4217 code, one of {}",
                req.currency,
                CURRENCIES.join(", ")
            )));
        }
        let new = NewPayment { order_id, amount_minor: req.amount_minor, currency, idempotency_key };
        let outcome = self.blocking(move |store| store.pay(&new)).await?;
        if outcome.replayed {
            tracing::debug!(payment_id = %outcome.record.payment_id, "replayed Pay for a known idempotency key");
        }
        Ok(Response::new(PayResponse {
            payment_id: outcome.record.payment_id.clone(),
            state: state(outcome.record.state).into(),
        }))
    }

    async fn get_payment(&self, request: Request<GetPaymentRequest>) -> Result<Response<Payment>, Status> {
        let order_id = required_id("order_id", request.into_inner().order_id)?;
        let lookup = order_id.clone();
        match self.blocking(move |store| store.get(&lookup)).await? {
            Some(record) => Ok(Response::new(payment(record))),
            None => Err(Status::not_found(format!("order `{order_id}` has no payment"))),
        }
    }

    async fn refund(&self, request: Request<RefundRequest>) -> Result<Response<Payment>, Status> {
        let order_id = required_id("order_id", request.into_inner().order_id)?;
        let lookup = order_id.clone();
        match self.blocking(move |store| store.refund(&lookup)).await? {
            Some(record) => Ok(Response::new(payment(record))),
            None => Err(Status::not_found(format!("order `{order_id}` has no payment to refund"))),
        }
    }
}

fn required_id(field: &str, value: String) -> Result<String, Status> {
    let value = value.trim().to_owned();
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: required")));
    }
    if value.len() > MAX_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "{field}: at most {MAX_ID_LEN} bytes, got {}",
            value.len()
        )));
    }
    Ok(value)
}

fn state(state: store::PaymentState) -> PaymentState {
    match state {
        store::PaymentState::Captured => PaymentState::Captured,
        store::PaymentState::Refunded => PaymentState::Refunded,
    }
}

fn payment(record: PaymentRecord) -> Payment {
    Payment {
        payment_id: record.payment_id,
        order_id: record.order_id,
        amount_minor: record.amount_minor,
        currency: record.currency,
        state: state(record.state).into(),
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
            tracing::error!(error = %other, "payment store failed");
            Status::internal(format!("payment store failed: {other}"))
        }
    }
}

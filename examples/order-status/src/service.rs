//! The `OrderStatus` gRPC handlers.

use std::pin::Pin;
use std::time::Duration;

use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use trellis::client::Clients;
use trellis::{Code, Request, Response, Status};

use crate::proto::order::payment::v1::{GetPaymentRequest, OrderPaymentClient, Payment, PaymentState};
use crate::proto::order::shipping::v1::{GetShipmentRequest, OrderShippingClient, Shipment};
use crate::proto::order::status::v1::order_status_server::OrderStatus;
use crate::proto::order::status::v1::{GetStatusRequest, OrderState, OrderStatusReport, WatchStatusRequest};

/// Implements `order.status.v1.OrderStatus` by asking payment and shipping.
#[derive(Debug, Clone)]
pub struct StatusService {
    payment: OrderPaymentClient,
    shipping: OrderShippingClient,
    watch_interval: Duration,
}

impl StatusService {
    /// Finds payment and shipping through `clients` (the application
    /// context, or a bare registry).
    ///
    /// # Errors
    ///
    /// When called outside a Tokio runtime.
    pub fn discover(clients: impl Into<Clients>, watch_interval: Duration) -> Result<Self, trellis::Error> {
        let clients = clients.into();
        Ok(StatusService {
            payment: OrderPaymentClient::discover(&clients)?,
            shipping: OrderShippingClient::discover(&clients)?,
            watch_interval,
        })
    }

    /// The order's state now: payment and shipping asked in parallel.
    async fn report(&self, order_id: &str) -> Result<OrderStatusReport, Status> {
        let mut payment = self.payment.clone();
        let mut shipping = self.shipping.clone();
        let (paid, shipped) = tokio::join!(
            payment.get_payment(GetPaymentRequest { order_id: order_id.to_owned() }),
            shipping.get_shipment(GetShipmentRequest { order_id: order_id.to_owned() }),
        );
        let payment = found(paid, "order-payment")?;
        let shipment = found(shipped, "order-shipping")?;
        Ok(OrderStatusReport {
            order_id: order_id.to_owned(),
            state: state(payment.as_ref(), shipment.as_ref()).into(),
            payment,
            shipment,
        })
    }
}

/// `NOT_FOUND` means "not yet"; any other error fails the call, saying which
/// dependency failed.
fn found<T>(result: Result<Response<T>, Status>, dependency: &str) -> Result<Option<T>, Status> {
    match result {
        Ok(response) => Ok(Some(response.into_inner())),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => {
            let code = match status.code() {
                Code::DeadlineExceeded | Code::Cancelled => status.code(),
                _ => Code::Unavailable,
            };
            Err(Status::new(code, format!("{dependency}: {}", status.message())))
        }
    }
}

fn state(payment: Option<&Payment>, shipment: Option<&Shipment>) -> OrderState {
    match (payment.map(|p| p.state()), shipment) {
        (Some(PaymentState::Refunded), _) => OrderState::Refunded,
        (_, Some(_)) => OrderState::Shipped,
        (Some(_), None) => OrderState::Paid,
        (None, None) => OrderState::Pending,
    }
}

fn order_id(raw: String) -> Result<String, Status> {
    let id = raw.trim().to_owned();
    if id.is_empty() {
        return Err(Status::invalid_argument("order_id: required"));
    }
    Ok(id)
}

type ReportStream = Pin<Box<dyn Stream<Item = Result<OrderStatusReport, Status>> + Send>>;

#[trellis::async_trait]
impl OrderStatus for StatusService {
    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<OrderStatusReport>, Status> {
        let order_id = order_id(request.into_inner().order_id)?;
        Ok(Response::new(self.report(&order_id).await?))
    }

    type WatchStatusStream = ReportStream;

    async fn watch_status(
        &self,
        request: Request<WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let order_id = order_id(request.into_inner().order_id)?;
        // The first report is taken here, so a bad order id or an unreachable
        // dependency fails the call itself rather than its stream.
        let first = self.report(&order_id).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let service = self.clone();
        // The polling task carries the call's context, so its calls stay in
        // the call's trace and within its deadline.
        let context = trellis::context::RequestContext::current();
        let poll = async move {
            let mut last = first.clone();
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            let mut ticks = tokio::time::interval(service.watch_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = tx.closed() => return,
                }
                match service.report(&order_id).await {
                    Ok(report) if report == last => {}
                    Ok(report) => {
                        last = report.clone();
                        if tx.send(Ok(report)).await.is_err() {
                            return;
                        }
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        };
        match context {
            Some(context) => tokio::spawn(context.scope(poll)),
            None => tokio::spawn(poll),
        };
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

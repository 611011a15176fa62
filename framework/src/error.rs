//! The runtime's error type.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// A boxed error, as handlers and service setup code return them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong while starting or running a Trellis service.
///
/// Every message names the thing at fault and what would fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is missing or invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The server could not listen on its address.
    #[error(
        "cannot listen on {addr}: {source} (choose another address with --listen, or stop what holds it)"
    )]
    Bind {
        /// The address from `listen`.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },

    /// A registry URL is malformed or names an unknown kind of registry.
    #[error("registry `{url}`: {reason}")]
    Registry {
        /// The URL as given.
        url: String,
        /// What is wrong and what is expected.
        reason: String,
    },

    /// An instance's address cannot be connected to.
    #[error("endpoint `{endpoint}`: {reason}")]
    Endpoint {
        /// The endpoint as registered.
        endpoint: String,
        /// What is wrong and what would fix it.
        reason: String,
    },

    /// Something that needs a Tokio runtime was called outside one.
    #[error(
        "{0} must be called inside a Tokio runtime (for example from `#[tokio::main]` or `trellis::App::run`)"
    )]
    NoRuntime(&'static str),

    /// The server failed while serving.
    #[error("server failed: {0}")]
    Serve(#[source] BoxError),
}

/// `err` and its sources, as `outer: inner: innermost`.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Why a call failed in the client stack, rather than in the server's
/// handler: attached as the source of the [`Status`](tonic::Status) a
/// generated client returns, so callers can tell causes apart without
/// parsing messages.
///
/// ```
/// use trellis::client::CallError;
///
/// fn should_fall_back(status: &trellis::Status) -> bool {
///     matches!(CallError::of(status), Some(CallError::CircuitOpen { .. }))
/// }
/// assert!(!should_fall_back(&trellis::Status::not_found("no such order")));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The method's circuit breaker is open: calls to the service keep
    /// failing, so this one was failed at once. `UNAVAILABLE`.
    #[error(
        "{method}: circuit open for {service}: calls keep failing ({last_failure}); next try in {retry_in:?}"
    )]
    CircuitOpen {
        /// The method's path.
        method: String,
        /// The full service name.
        service: &'static str,
        /// When the breaker lets a probe through.
        retry_in: Duration,
        /// The failure that kept it open.
        last_failure: String,
    },

    /// No instance could be found before the deadline. `DEADLINE_EXCEEDED`.
    #[error("{method}: deadline of {timeout:?} passed: {reason}")]
    NoInstance {
        /// The method's path.
        method: String,
        /// The call's whole time budget.
        timeout: Duration,
        /// Why: none registered, or the registry cannot be followed.
        reason: String,
    },

    /// The deadline (inherited from the inbound call) had passed before the
    /// call was sent. `DEADLINE_EXCEEDED`.
    #[error("{method}: the deadline passed before the call was sent")]
    DeadlinePassed {
        /// The method's path.
        method: String,
    },

    /// Sent, but no answer came within the deadline. `DEADLINE_EXCEEDED`.
    #[error("{method}: no response from {service}{} within the call's {timeout:?} deadline", at(.endpoint))]
    DeadlineExceeded {
        /// The method's path.
        method: String,
        /// The full service name.
        service: &'static str,
        /// The call's whole time budget.
        timeout: Duration,
        /// The instance that did not answer, when one attempt was waited for.
        endpoint: Option<String>,
    },

    /// The instance could not be reached (connection refused or reset, a
    /// broken HTTP/2 stream). `UNAVAILABLE`.
    #[error("{method}: cannot reach {service} at {endpoint}: {reason}")]
    Unreachable {
        /// The method's path.
        method: String,
        /// The full service name.
        service: &'static str,
        /// The instance.
        endpoint: String,
        /// What the transport said.
        reason: String,
        /// Whether the request provably never reached a handler.
        never_reached: bool,
    },

    /// The instance answered that it cannot serve the call now
    /// (`UNAVAILABLE`, or shed unprocessed). The server's own status code
    /// and message.
    #[error("{}", .status.message())]
    Unavailable {
        /// The instance.
        endpoint: String,
        /// What the server answered.
        status: Box<tonic::Status>,
        /// Whether the server said no handler ran (`trellis-unprocessed`).
        never_reached: bool,
        /// The server's retry pushback: `Some(None)` means "do not retry".
        pushback: Option<Option<Duration>>,
    },

    /// The last attempt failed and the call was not sent again. The last
    /// failure's code.
    #[error("{last} (not retried: {reason})")]
    NotRetried {
        /// The failure of the last attempt.
        last: Box<CallError>,
        /// Why no other attempt was made.
        reason: NotRetried,
    },

    /// A streaming request cannot be sent a second time. `INTERNAL`.
    #[error("{method}: the request stream cannot be sent twice")]
    NotReplayable {
        /// The method's path.
        method: String,
    },

    /// The request could not be encoded or read: the encoder's code
    /// (`OUT_OF_RANGE` for a message over `max_encoding_size`), else
    /// `INTERNAL`.
    #[error("{method}: request body: {reason}")]
    RequestBody {
        /// The method's path.
        method: String,
        /// Why, and the fix where there is one.
        reason: String,
        /// The code the call fails with.
        code: tonic::Code,
    },
}

/// Why a failed attempt was not sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotRetried {
    /// The retry budget (a share of recent calls) is spent.
    BudgetSpent,
    /// The backoff would end past the call's deadline.
    NoTimeLeft,
}

impl fmt::Display for NotRetried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotRetried::BudgetSpent => "the retry budget is spent",
            NotRetried::NoTimeLeft => "no time left before the deadline",
        })
    }
}

fn at(endpoint: &Option<String>) -> String {
    endpoint.as_ref().map(|e| format!(" at {e}")).unwrap_or_default()
}

impl CallError {
    /// The client-stack cause of `status`, if the stack produced it.
    pub fn of(status: &tonic::Status) -> Option<&CallError> {
        std::error::Error::source(status)?.downcast_ref::<CallError>()
    }

    /// The gRPC code this cause is reported with.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            CallError::CircuitOpen { .. } | CallError::Unreachable { .. } => Code::Unavailable,
            CallError::NoInstance { .. }
            | CallError::DeadlinePassed { .. }
            | CallError::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            CallError::Unavailable { status, .. } => status.code(),
            CallError::NotRetried { last, .. } => last.code(),
            CallError::NotReplayable { .. } => Code::Internal,
            CallError::RequestBody { code, .. } => *code,
        }
    }

    /// Whether this says the target service failed (which a circuit
    /// breaker counts), rather than the call or the caller.
    pub fn is_target_failure(&self) -> bool {
        match self {
            CallError::DeadlineExceeded { .. }
            | CallError::Unreachable { .. }
            | CallError::Unavailable { .. } => true,
            CallError::NotRetried { last, .. } => last.is_target_failure(),
            CallError::CircuitOpen { .. }
            | CallError::NoInstance { .. }
            | CallError::DeadlinePassed { .. }
            | CallError::NotReplayable { .. }
            | CallError::RequestBody { .. } => false,
        }
    }

    /// What the server answered, when the cause is its answer.
    fn server_status(&self) -> Option<&tonic::Status> {
        match self {
            CallError::Unavailable { status, .. } => Some(status),
            CallError::NotRetried { last, .. } => last.server_status(),
            _ => None,
        }
    }

    /// The instance the failed attempt went to, if one did.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            CallError::Unreachable { endpoint, .. } | CallError::Unavailable { endpoint, .. } => {
                Some(endpoint)
            }
            CallError::DeadlineExceeded { endpoint, .. } => endpoint.as_deref(),
            CallError::NotRetried { last, .. } => last.endpoint(),
            _ => None,
        }
    }
}

/// The one mapping from what the client stack failed with to the status a
/// caller sees: a [`CallError`] anywhere in the source chain becomes its
/// code and message, with the cause attached as the status's source; a
/// status is passed on as is; a tower timeout is `DEADLINE_EXCEEDED`; a
/// transport error is `UNAVAILABLE`; anything else is `UNKNOWN`.
pub(crate) fn into_status(err: BoxError) -> tonic::Status {
    let err = match err.downcast::<tonic::Status>() {
        Ok(status) => return *status,
        Err(err) => err,
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
    while let Some(cause) = source {
        if let Some(call) = cause.downcast_ref::<CallError>() {
            // The server's metadata (its pushback, say) is kept.
            let mut status = match call.server_status() {
                Some(server) => {
                    tonic::Status::with_metadata(call.code(), call.to_string(), server.metadata().clone())
                }
                None => tonic::Status::new(call.code(), call.to_string()),
            };
            status.set_source(std::sync::Arc::new(call.clone()));
            return status;
        }
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return status.clone();
        }
        if cause.is::<tower::timeout::error::Elapsed>() {
            return tonic::Status::deadline_exceeded(error_chain(err.as_ref()));
        }
        if cause.is::<tonic::transport::Error>() {
            return tonic::Status::unavailable(error_chain(err.as_ref()));
        }
        source = cause.source();
    }
    tonic::Status::unknown(error_chain(err.as_ref()))
}

//! The end of a call, as the layers that report on calls see it.
//!
//! A gRPC call's status is known only at its very end: in the response
//! headers of a trailers-only answer, otherwise in the trailers after the
//! last message. A call whose response (or body) is dropped before that was
//! cancelled: its caller went away, or its connection closed. The metrics
//! and trace layers of both sides report each call once, at that point;
//! [`Ending`] and [`EndBody`] find it for them.

use std::any::Any;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Code;

/// What a layer does when a call ends.
pub(crate) trait CallEnd {
    /// The call ended with `code`.
    fn end(self, code: Code);

    /// The code of a call whose response body failed with `err`.
    fn failed(&self, _err: &(dyn Any + 'static)) -> Code {
        Code::Internal
    }
}

/// The status a response's headers or trailers carry, if any.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    headers.get(&super::GRPC_STATUS).map(|v| Code::from_bytes(v.as_bytes()))
}

/// A call not yet ended: ended as `CANCELLED` if dropped so.
#[derive(Debug)]
pub(crate) struct Ending<C: CallEnd> {
    call: Option<C>,
}

impl<C: CallEnd> Ending<C> {
    /// Watches `call`; `None` watches nothing.
    pub(crate) fn new(call: Option<C>) -> Self {
        Ending { call }
    }

    /// The call, while it has not ended.
    pub(crate) fn get(&self) -> Option<&C> {
        self.call.as_ref()
    }

    /// Takes the call out, for a layer that ends it its own way.
    pub(crate) fn take(&mut self) -> Option<C> {
        self.call.take()
    }

    /// Ends the call with `code`, if it has not ended.
    pub(crate) fn end(&mut self, code: Code) {
        if let Some(call) = self.call.take() {
            call.end(code);
        }
    }

    /// Hands the call on with `response`: ended now if the headers carry
    /// its status (trailers-only), else when the body's trailers pass.
    pub(crate) fn into_response<B>(mut self, response: Response<B>) -> Response<EndBody<B, C>> {
        if let Some(code) = grpc_status(response.headers()) {
            self.end(code);
        }
        response.map(|inner| EndBody { inner, ending: self })
    }
}

impl<C: CallEnd> Default for Ending<C> {
    fn default() -> Self {
        Ending::new(None)
    }
}

impl<C: CallEnd> Drop for Ending<C> {
    fn drop(&mut self) {
        self.end(Code::Cancelled);
    }
}

pin_project! {
    /// A response body that ends its call when the trailers pass, when the
    /// body ends or fails, or as `CANCELLED` when it is dropped first.
    pub(crate) struct EndBody<B, C: CallEnd> {
        #[pin]
        inner: B,
        ending: Ending<C>,
    }
}

impl<B, C: CallEnd> std::fmt::Debug for EndBody<B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndBody").field("ended", &self.ending.call.is_none()).finish_non_exhaustive()
    }
}

impl<B, C> Body for EndBody<B, C>
where
    B: Body,
    B::Error: 'static,
    C: CallEnd,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let code = match &frame {
            Some(Ok(frame)) => frame.trailers_ref().map(|t| grpc_status(t).unwrap_or(Code::Ok)),
            Some(Err(err)) => this.ending.get().map(|call| call.failed(err as &dyn Any)),
            None => Some(Code::Ok),
        };
        if let Some(code) = code {
            this.ending.end(code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http::HeaderValue;
    use http_body_util::{BodyExt, Empty, StreamBody};

    use super::*;

    #[derive(Debug, Clone, Default)]
    struct Ends(Arc<Mutex<Vec<Code>>>);

    impl CallEnd for Ends {
        fn end(self, code: Code) {
            self.0.lock().unwrap().push(code);
        }
    }

    fn ended(ends: &Ends) -> Vec<Code> {
        ends.0.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_call_ends_once_at_its_headers_trailers_end_or_drop() {
        // Trailers-only: at the headers, not again at the body's end.
        let ends = Ends::default();
        let mut response = Response::new(Empty::<bytes::Bytes>::new());
        response.headers_mut().insert("grpc-status", HeaderValue::from_static("5"));
        let response = Ending::new(Some(ends.clone())).into_response(response);
        assert_eq!(ended(&ends), [Code::NotFound]);
        response.into_body().collect().await.unwrap();
        assert_eq!(ended(&ends), [Code::NotFound]);

        // The trailers' status.
        let ends = Ends::default();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("14"));
        let frames = futures_util::stream::iter([
            Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from_static(b"m"))),
            Ok(Frame::trailers(trailers)),
        ]);
        let body = Ending::new(Some(ends.clone())).into_response(Response::new(StreamBody::new(frames)));
        body.into_body().collect().await.unwrap();
        assert_eq!(ended(&ends), [Code::Unavailable]);

        // A body dropped before its end, and a future dropped before its response.
        let ends = Ends::default();
        drop(Ending::new(Some(ends.clone())).into_response(Response::new(Empty::<bytes::Bytes>::new())));
        drop(Ending::new(Some(ends.clone())));
        assert_eq!(ended(&ends), [Code::Cancelled, Code::Cancelled]);
    }
}

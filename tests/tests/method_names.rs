//! Methods whose names collide with what the generated client and server
//! define (`New`, `Connect`, `Call`, `Clone`, ...), Rust keywords, and names
//! equal once snake-cased compile with `_rpc` appended, and each renamed
//! method reaches its own handler through a real server, on its proto path.

use std::pin::Pin;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};
use trellis::{Registry, Request, Response, Status, Streaming};
use trellis_tests::proto::trellis::test::collide::v1::collide_server::{Collide, CollideServer};
use trellis_tests::proto::trellis::test::collide::v1::get_svc_server::{GetSvc, GetSvcServer};
use trellis_tests::proto::trellis::test::collide::v1::{
    COLLIDE_DESCRIPTOR, COLLIDE_SERVICE_NAME, Call, Called, CollideClient, GET_SVC_DESCRIPTOR, GetSvcClient,
};

type CalledStream = Pin<Box<dyn Stream<Item = Result<Called, Status>> + Send>>;

fn called(method: &str, text: String) -> Result<Response<Called>, Status> {
    Ok(Response::new(Called { method: method.to_owned(), text }))
}

/// Implements `Collide` for `Handler`: the unary methods answer with the
/// proto name given; the rest are written out.
macro_rules! collide {
    ($($rust:ident => $proto:literal,)* { $($rest:tt)* }) => {
        #[trellis::async_trait]
        impl Collide for Handler {
            $(
                async fn $rust(&self, request: Request<Call>) -> Result<Response<Called>, Status> {
                    called($proto, request.into_inner().text)
                }
            )*
            $($rest)*
        }
    };
}

#[derive(Debug, Clone)]
struct Handler;

collide! {
    new_rpc_rpc => "New",
    with_origin_rpc => "WithOrigin",
    with_interceptor_rpc => "WithInterceptor",
    send_compressed_rpc => "SendCompressed",
    accept_compressed_rpc => "AcceptCompressed",
    max_decoding_message_size_rpc => "MaxDecodingMessageSize",
    max_encoding_message_size_rpc => "MaxEncodingMessageSize",
    connect_rpc => "Connect",
    discover_rpc => "Discover",
    from_arc_rpc => "FromArc",
    poll_ready_rpc => "PollReady",
    call_rpc => "Call",
    clone_rpc => "Clone",
    clone_from_rpc => "CloneFrom",
    fmt_rpc => "Fmt",
    get_ref_rpc => "GetRef",
    get_mut_rpc => "GetMut",
    into_inner_rpc => "IntoInner",
    new_rpc => "NewRpc",
    r#type => "type",
    type_rpc => "Type",
    r#async => "async",
    self_ => "Self",
    super_ => "super",
    get_item => "GetItem",
    {
        type getItemStream = CalledStream;

        async fn get_item_rpc(&self, request: Request<Call>) -> Result<Response<CalledStream>, Status> {
            let text = request.into_inner().text;
            let replies =
                (0..2).map(move |i| Ok(Called { method: "getItem".to_owned(), text: format!("{text}{i}") }));
            Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
        }

        async fn get_item_rpc_rpc(&self, request: Request<Streaming<Call>>) -> Result<Response<Called>, Status> {
            let mut texts = Vec::new();
            let mut stream = request.into_inner();
            while let Some(call) = stream.next().await {
                texts.push(call?.text);
            }
            called("get_item", texts.join("+"))
        }

        type GET_ITEMStream = CalledStream;

        async fn get_item_rpc_rpc_rpc(
            &self,
            request: Request<Streaming<Call>>,
        ) -> Result<Response<CalledStream>, Status> {
            let replies = request
                .into_inner()
                .map(|call| call.map(|call| Called { method: "GET_ITEM".to_owned(), text: call.text }));
            Ok(Response::new(Box::pin(replies)))
        }
    }
}

#[trellis::async_trait]
impl GetSvc for Handler {
    async fn get(&self, request: Request<Call>) -> Result<Response<Called>, Status> {
        called("GetSvc.Get", request.into_inner().text)
    }

    type NewStream = CalledStream;

    async fn new_rpc(&self, request: Request<Call>) -> Result<Response<CalledStream>, Status> {
        let reply = Called { method: "GetSvc.New".to_owned(), text: request.into_inner().text };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(reply)]))))
    }
}

/// Serves both services on a free port; returns a registry naming it, and the address.
async fn serve() -> (Registry, std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = trellis::Server::builder()
        .add_service(CollideServer::new(Handler))
        .add_service(GetSvcServer::new(Handler))
        .propagation_delay(Duration::ZERO)
        .shutdown_signal(async {
            let _ = stopped.await;
        })
        .bind()
        .await
        .expect("bind");
    let addr = server.local_addr();
    tokio::spawn(server.serve());
    let url = format!("static://{COLLIDE_SERVICE_NAME}={addr};{}={addr}", GET_SVC_DESCRIPTOR.name());
    (Registry::from_url(&url).expect("registry"), addr, stop)
}

fn call(text: &str) -> Call {
    Call { text: text.to_owned() }
}

/// Calls each renamed unary method and returns `(method that answered, text)`.
macro_rules! call_each {
    ($client:ident: $($rust:ident),* $(,)?) => {
        vec![$({
            let reply = $client.$rust(call(stringify!($rust))).await.expect(stringify!($rust)).into_inner();
            (reply.method, reply.text)
        }),*]
    };
}

#[tokio::test]
async fn renamed_methods_reach_their_own_handlers() {
    let (registry, _, _stop) = serve().await;
    let mut client = CollideClient::discover(&registry).expect("discover");

    let answers = call_each!(client:
        new_rpc_rpc, with_origin_rpc, with_interceptor_rpc, send_compressed_rpc, accept_compressed_rpc,
        max_decoding_message_size_rpc, max_encoding_message_size_rpc, connect_rpc, discover_rpc, from_arc_rpc,
        poll_ready_rpc, call_rpc, clone_rpc, clone_from_rpc, fmt_rpc, get_ref_rpc, get_mut_rpc,
        into_inner_rpc, new_rpc, r#type, type_rpc, r#async, self_, super_, get_item,
    );
    let expected: Vec<(String, String)> = [
        ("New", "new_rpc_rpc"),
        ("WithOrigin", "with_origin_rpc"),
        ("WithInterceptor", "with_interceptor_rpc"),
        ("SendCompressed", "send_compressed_rpc"),
        ("AcceptCompressed", "accept_compressed_rpc"),
        ("MaxDecodingMessageSize", "max_decoding_message_size_rpc"),
        ("MaxEncodingMessageSize", "max_encoding_message_size_rpc"),
        ("Connect", "connect_rpc"),
        ("Discover", "discover_rpc"),
        ("FromArc", "from_arc_rpc"),
        ("PollReady", "poll_ready_rpc"),
        ("Call", "call_rpc"),
        ("Clone", "clone_rpc"),
        ("CloneFrom", "clone_from_rpc"),
        ("Fmt", "fmt_rpc"),
        ("GetRef", "get_ref_rpc"),
        ("GetMut", "get_mut_rpc"),
        ("IntoInner", "into_inner_rpc"),
        ("NewRpc", "new_rpc"),
        ("type", "r#type"),
        ("Type", "type_rpc"),
        ("async", "r#async"),
        ("Self", "self_"),
        ("super", "super_"),
        ("GetItem", "get_item"),
    ]
    .into_iter()
    .map(|(method, text)| (method.to_owned(), text.to_owned()))
    .collect();
    assert_eq!(answers, expected);

    // The three streaming kinds, each named `get_item` before renaming.
    let replies = client.get_item_rpc(call("s")).await.expect("getItem").into_inner();
    let replies: Vec<(String, String)> =
        replies.map(|r| r.expect("reply")).map(|r| (r.method, r.text)).collect().await;
    assert_eq!(replies, [("getItem".to_owned(), "s0".to_owned()), ("getItem".to_owned(), "s1".to_owned())]);

    let outbound = tokio_stream::iter([call("a"), call("b")]);
    let reply = client.get_item_rpc_rpc(outbound).await.expect("get_item").into_inner();
    assert_eq!((reply.method.as_str(), reply.text.as_str()), ("get_item", "a+b"));

    let outbound = tokio_stream::iter([call("x"), call("y")]);
    let replies = client.get_item_rpc_rpc_rpc(outbound).await.expect("GET_ITEM").into_inner();
    let replies: Vec<String> = replies.map(|r| r.expect("reply")).map(|r| r.text).collect().await;
    assert_eq!(replies, ["x", "y"]);

    // The generated client's own items still work next to the renamed methods.
    let mut clone = client.clone().max_decoding_message_size(1 << 20);
    assert_eq!(clone.clone_rpc(call("c")).await.expect("clone").into_inner().method, "Clone");
}

#[tokio::test]
async fn a_service_named_like_tonics_handler_struct_serves() {
    let (registry, _, _stop) = serve().await;
    let mut client = GetSvcClient::discover(&registry).expect("discover");
    let reply = client.get(call("g")).await.expect("get").into_inner();
    assert_eq!((reply.method.as_str(), reply.text.as_str()), ("GetSvc.Get", "g"));
    let replies = client.new_rpc(call("n")).await.expect("new").into_inner();
    let methods: Vec<String> = replies.map(|r| r.expect("reply").method).collect().await;
    assert_eq!(methods, ["GetSvc.New"]);
}

#[tokio::test]
async fn a_path_no_service_has_is_unimplemented_with_what_the_server_serves() {
    let (_, addr, _stop) = serve().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    for path in ["/trellis.test.collide.v1.Collide/Nope", "/no.such.v1.Service/Call"] {
        grpc.ready().await.expect("ready");
        let err = grpc
            .unary::<Call, Called, _>(
                tonic::Request::new(call("x")),
                http::uri::PathAndQuery::from_static(path),
                trellis::codegen::ProstCodec::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
        let message = err.message();
        assert!(message.contains(&format!("`{path}` is not a method of this server")), "{message}");
        assert!(message.contains("trellis.test.collide.v1.Collide (New, "), "{message}");
        assert!(message.contains("trellis.test.collide.v1.GetSvc (Get, New)"), "{message}");
        assert!(message.contains("grpc.health.v1.Health"), "{message}");
    }
}

#[test]
fn renaming_keeps_the_proto_names_and_paths() {
    let names: Vec<&str> = COLLIDE_DESCRIPTOR.methods().iter().map(|m| m.name()).collect();
    for expected in ["New", "Connect", "Call", "Clone", "type", "Type", "Self", "getItem", "GET_ITEM"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    assert!(COLLIDE_DESCRIPTOR.method_by_path("/trellis.test.collide.v1.Collide/New").is_some());
    assert!(COLLIDE_DESCRIPTOR.method_by_path("/trellis.test.collide.v1.Collide/get_item").is_some());
    assert!(GET_SVC_DESCRIPTOR.method_by_path("/trellis.test.collide.v1.GetSvc/Get").is_some());
}

//! REST/JSON on the gRPC port: curl (HTTP/1.1 and HTTP/2) against a real
//! Trellis server, through every binding form of `google.api.http`, the
//! proto3 JSON mapping, the error mapping, and server streaming. Needs
//! `curl` (Debian `curl`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::process::Command;
use tokio_stream::StreamExt;
use trellis::{Code, Request, Response, Status};
use trellis_tests::proto::trellis::test::rest::v1::library_server::{Library, LibraryServer};
use trellis_tests::proto::trellis::test::rest::v1::{
    Book, CreateBookRequest, GetBookRequest, LibraryClient, ListBooksRequest, ReadFileRequest,
    UpdateBookRequest,
};

type BookStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<Book, Status>> + Send>>;

#[derive(Debug)]
struct Books;

/// `google.rpc.Status`, what `grpc-status-details-bin` carries.
#[derive(Clone, PartialEq, trellis::codegen::prost::Message)]
#[prost(prost_path = "trellis::codegen::prost")]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<trellis::codegen::prost_types::Any>,
}

#[trellis::async_trait]
impl Library for Books {
    async fn get_book(&self, request: Request<GetBookRequest>) -> Result<Response<Book>, Status> {
        let key = request.metadata().get("x-caller").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let req = request.into_inner();
        if req.id == 404 {
            return Err(Status::not_found(format!("no book {} on {}", req.id, req.name)));
        }
        Ok(Response::new(Book { id: req.id, title: format!("{}|{key}", req.name), authors: vec![] }))
    }

    async fn create_book(&self, request: Request<CreateBookRequest>) -> Result<Response<Book>, Status> {
        let req = request.into_inner();
        let mut book = req.book.unwrap_or_default();
        if book.title.is_empty() {
            return Err(Status::invalid_argument("a book needs a title"));
        }
        book.id = 9_007_199_254_740_993; // past 2^53: only exact as a string
        book.authors.push(req.name);
        Ok(Response::new(book))
    }

    async fn update_book(&self, request: Request<UpdateBookRequest>) -> Result<Response<Book>, Status> {
        let book = request.into_inner().book.unwrap_or_default();
        Ok(Response::new(Book { title: format!("{} (id {})", book.title, book.id), ..book }))
    }

    async fn read_file(&self, request: Request<ReadFileRequest>) -> Result<Response<Book>, Status> {
        Ok(Response::new(Book { id: 1, title: request.into_inner().path, authors: vec![] }))
    }

    async fn archive_book(&self, request: Request<GetBookRequest>) -> Result<Response<Book>, Status> {
        let deadline =
            request.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned();
        let req = request.into_inner();
        if req.id == 504 {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Ok(Response::new(Book {
            id: req.id,
            title: format!("archived; deadline {deadline}"),
            authors: vec![],
        }))
    }

    async fn delete_book(&self, request: Request<GetBookRequest>) -> Result<Response<Book>, Status> {
        // Details in `grpc-status-details-bin`: one of a type the protos know, one the gateway cannot read.
        use trellis::codegen::prost::Message;
        use trellis::codegen::prost_types::Any;
        let id = request.into_inner().id;
        let message = format!("book {id} is archived, not deleted");
        let archived = Book { id, title: "archived".into(), ..Book::default() };
        let details = RpcStatus {
            code: Code::AlreadyExists as i32,
            message: message.clone(),
            details: vec![
                Any {
                    type_url: "type.googleapis.com/trellis.test.rest.v1.Book".into(),
                    value: archived.encode_to_vec(),
                },
                Any { type_url: "type.googleapis.com/vendor.Unknown".into(), value: vec![8, 1] },
            ],
        };
        Err(Status::with_details(Code::AlreadyExists, message, details.encode_to_vec().into()))
    }

    type ListBooksStream = BookStream;

    async fn list_books(&self, request: Request<ListBooksRequest>) -> Result<Response<BookStream>, Status> {
        let req = request.into_inner();
        if req.page_size < 0 {
            return Err(Status::out_of_range("page_size must not be negative"));
        }
        let available = req.filter.is_some_and(|f| f.available);
        let books: Vec<Result<Book, Status>> = (0..req.page_size)
            .map(|i| {
                Ok(Book {
                    id: i64::from(i),
                    title: format!("{} #{i} available={available}", req.shelf),
                    authors: req.authors.clone(),
                })
            })
            .chain((req.shelf == "broken").then(|| Err(Status::data_loss("the shelf collapsed"))))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(books))))
    }

    async fn audit(&self, _request: Request<GetBookRequest>) -> Result<Response<Book>, Status> {
        Ok(Response::new(Book::default()))
    }
}

/// The `Library` server, stopping when the sender is used or dropped.
fn library() -> (trellis::server::ServerBuilder, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let builder = trellis::Server::builder()
        .add_service(LibraryServer::new(Books))
        .propagation_delay(Duration::ZERO)
        .shutdown_signal(async {
            let _ = stopped.await;
        });
    (builder, stop)
}

async fn serve() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (builder, stop) = library();
    let server = builder.bind().await.expect("bind");
    let addr = server.local_addr();
    tokio::spawn(server.serve());
    (addr, stop)
}

/// What curl got: the status, the headers (lowercased names), the body.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: String,
    body: String,
}

impl Got {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Runs `curl -s -i ARGS http://ADDR/PATH`.
async fn curl(addr: SocketAddr, path: &str, args: &[&str]) -> Got {
    curl_url(&format!("http://{addr}{path}"), args).await
}

/// Runs `curl -s -i ARGS URL`.
async fn curl_url(url: &str, args: &[&str]) -> Got {
    let output = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10"])
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("curl runs (apt-get install curl)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) =
        text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response: {text:?} {output:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    Got { status, headers: head.to_lowercase(), body: body.to_owned() }
}

#[tokio::test]
async fn path_variables_with_patterns_and_metadata_headers() {
    let (addr, _stop) = serve().await;
    let got = curl(addr, "/v1/shelves/s%201/books/42", &["-H", "x-caller: tester"]).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert!(got.headers.contains("content-type: application/json"), "{got:?}");
    // int64 out as a string; lowerCamelCase names; default fields left out.
    assert_eq!(got.json(), serde_json::json!({ "id": "42", "title": "shelves/s 1|tester" }));

    // The additional binding reaches the same method; HTTP/2 works too.
    let got = curl(addr, "/v1/books/7", &["--http2-prior-knowledge"]).await;
    assert_eq!((got.status, got.json()), (200, serde_json::json!({ "id": "7", "title": "|" })), "{got:?}");

    let got = curl(addr, "/v1/files/a/b/c.txt", &[]).await;
    assert_eq!(got.json()["title"], "a/b/c.txt", "{got:?}");
}

#[tokio::test]
async fn bodies_bind_as_the_rule_says() {
    let (addr, _stop) = serve().await;
    // `body: "book"`: the body is the field; the path gives `name`. Proto
    // names are accepted alongside JSON names, numbers as strings or not.
    let got = curl(
        addr,
        "/v1/shelves/fiction/books",
        &["-X", "POST", "-d", r#"{"title": "Dune", "authors": ["Herbert"]}"#],
    )
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(
        got.json(),
        serde_json::json!({ "id": "9007199254740993", "title": "Dune", "authors": ["Herbert", "shelves/fiction"] })
    );

    // `body: "*"` with `response_body: "title"`; the path binds a nested field.
    let got =
        curl(addr, "/v1/books/5", &["-X", "PATCH", "-d", r#"{"book": {"title": "Emma", "id": 99}}"#]).await;
    assert_eq!((got.status, got.json()), (200, serde_json::json!("Emma (id 5)")), "{got:?}");

    // A verb, and the deadline from `x-trellis-timeout`.
    let got =
        curl(addr, "/v1/books/3:archive", &["-X", "POST", "-d", "{}", "-H", "x-trellis-timeout: 2s"]).await;
    let title = got.json()["title"].as_str().unwrap_or_default().to_owned();
    assert!(title.starts_with("archived; deadline "), "{got:?}");
    assert_ne!(title, "archived; deadline none", "{got:?}");
}

#[tokio::test]
async fn query_parameters_bind_scalars_repeated_and_nested_fields() {
    let (addr, _stop) = serve().await;
    let got = curl(
        addr,
        "/v1/shelves/sci/books?pageSize=2&authors=Le%20Guin&authors=Banks&filter.available=true",
        &[],
    )
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    assert!(got.headers.contains("content-type: application/x-ndjson"), "{got:?}");
    let lines: Vec<serde_json::Value> =
        got.body.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(
        lines,
        [
            serde_json::json!({ "result": { "title": "sci #0 available=true", "authors": ["Le Guin", "Banks"] } }),
            serde_json::json!({ "result": { "id": "1", "title": "sci #1 available=true", "authors": ["Le Guin", "Banks"] } }),
        ]
    );
}

#[tokio::test]
async fn server_streams_end_with_an_error_line_or_event() {
    let (addr, _stop) = serve().await;
    let got = curl(addr, "/v1/shelves/broken/books?page_size=1", &[]).await;
    let lines: Vec<serde_json::Value> =
        got.body.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(lines.len(), 2, "{got:?}");
    assert_eq!(
        lines[1],
        serde_json::json!({ "error": { "code": 15, "message": "the shelf collapsed", "details": [] } })
    );

    let got = curl(addr, "/v1/shelves/broken/books?page_size=1", &["-H", "accept: text/event-stream"]).await;
    assert!(got.headers.contains("content-type: text/event-stream"), "{got:?}");
    assert!(got.body.starts_with("data: {\"title\":\"broken #0 available=false\"}\n\n"), "{got:?}");
    assert!(got.body.contains("event: error\ndata: {\"code\":15,"), "{got:?}");

    // An error before the first message is an HTTP error.
    let got = curl(addr, "/v1/shelves/x/books?page_size=-1", &[]).await;
    assert_eq!((got.status, got.json()["code"].as_i64()), (400, Some(11)), "{got:?}");
}

#[tokio::test]
async fn errors_map_to_http_statuses_with_json_bodies() {
    let (addr, _stop) = serve().await;
    let got = curl(addr, "/v1/shelves/s/books/404", &[]).await;
    assert_eq!(got.status, 404, "{got:?}");
    assert_eq!(
        got.json(),
        serde_json::json!({ "code": 5, "message": "no book 404 on shelves/s", "details": [] })
    );

    let got = curl(addr, "/v1/books/1", &["-X", "DELETE"]).await;
    assert_eq!((got.status, got.json()["code"].as_i64()), (409, Some(Code::AlreadyExists as i64)), "{got:?}");
    assert_eq!(
        got.json()["details"],
        serde_json::json!([
            { "@type": "type.googleapis.com/trellis.test.rest.v1.Book", "id": "1", "title": "archived" },
            { "@type": "type.googleapis.com/vendor.Unknown", "value": "CAE=" },
        ]),
        "grpc-status-details-bin, in JSON: {got:?}"
    );

    let got = curl(addr, "/v1/shelves/f/books", &["-X", "POST", "-d", r#"{"authors": []}"#]).await;
    assert_eq!((got.status, got.json()["message"].as_str()), (400, Some("a book needs a title")), "{got:?}");

    let got =
        curl(addr, "/v1/books/504:archive", &["-X", "POST", "-d", "{}", "-H", "x-trellis-timeout: 100ms"])
            .await;
    assert_eq!((got.status, got.json()["code"].as_i64()), (504, Some(4)), "{got:?}");
}

#[tokio::test]
async fn malformed_requests_are_refused_naming_the_problem() {
    let (addr, _stop) = serve().await;
    let got =
        curl(addr, "/v1/shelves/f/books", &["-X", "POST", "-d", "{\"title\": \"x\",\n \"authors\": [}"])
            .await;
    assert_eq!(got.status, 400, "{got:?}");
    let message = got.json()["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("not valid JSON") && message.contains("line 2 column"), "{message}");

    let got = curl(addr, "/v1/shelves/f/books", &["-X", "POST", "-d", r#"{"title": "x", "pages": 3}"#]).await;
    let message = got.json()["message"].as_str().unwrap_or_default().to_owned();
    assert!(got.status == 400 && message.contains("pages"), "{got:?}");

    let got = curl(addr, "/v1/shelves/s/books/notanumber", &[]).await;
    let message = got.json()["message"].as_str().unwrap_or_default().to_owned();
    assert!(got.status == 400 && message.contains("notanumber"), "{got:?}");

    let got = curl(addr, "/v1/shelves/s/books?colour=red", &[]).await;
    let message = got.json()["message"].as_str().unwrap_or_default().to_owned();
    assert!(got.status == 400 && message.contains("query parameter `colour`"), "{got:?}");

    let got = curl(addr, "/v1/books/1", &["-X", "PUT", "-d", "{}"]).await;
    assert_eq!(got.status, 405, "{got:?}");
    assert!(got.headers.contains("allow: get, head, patch, delete"), "{got:?}");

    let got = curl(addr, "/v2/nothing", &[]).await;
    assert_eq!((got.status, got.json()["code"].as_i64()), (404, Some(5)), "{got:?}");
}

#[tokio::test]
async fn grpc_still_works_on_the_same_port() {
    let (addr, _stop) = serve().await;
    let registry = trellis::Registry::from_url(&format!("static://trellis.test.rest.v1.Library={addr}"))
        .expect("registry");
    let mut client = LibraryClient::discover(&registry).expect("discover");
    let book = client.get_book(GetBookRequest { name: "n".into(), id: 1 }).await.expect("grpc").into_inner();
    assert_eq!(book.title, "n|");
    let stream = client
        .list_books(ListBooksRequest { shelf: "g".into(), page_size: 3, ..Default::default() })
        .await
        .expect("stream")
        .into_inner();
    let ids: Vec<i64> = stream.map(|b| b.expect("book").id).collect().await;
    assert_eq!(ids, [0, 1, 2]);
}

#[tokio::test]
async fn rest_listen_moves_rest_to_a_port_of_its_own() {
    let (builder, stop) = library();
    let server = builder.rest_listen("127.0.0.1:0".parse().expect("addr")).bind().await.expect("bind");
    let (grpc, rest) = (server.local_addr(), server.rest_addr().expect("a REST listener"));
    assert_ne!(grpc, rest);
    let serving = tokio::spawn(server.serve());

    // REST on its own port, HTTP/1.1 and HTTP/2, with the OpenAPI document.
    let got = curl(rest, "/v1/books/7", &[]).await;
    assert_eq!((got.status, got.json()), (200, serde_json::json!({ "id": "7", "title": "|" })), "{got:?}");
    let got = curl(rest, "/v1/books/8", &["--http2-prior-knowledge"]).await;
    assert_eq!((got.status, got.json()["id"].as_str()), (200, Some("8")), "{got:?}");
    assert_eq!(curl(rest, "/openapi.json", &[]).await.status, 200);

    // gRPC on the gRPC port; the gRPC port no longer speaks REST or HTTP/1.1.
    let registry = trellis::Registry::from_url(&format!("static://trellis.test.rest.v1.Library={grpc}"))
        .expect("registry");
    let mut client = LibraryClient::discover(&registry).expect("discover");
    let book = client.get_book(GetBookRequest { name: "n".into(), id: 1 }).await.expect("grpc").into_inner();
    assert_eq!(book.title, "n|");
    let got = curl(grpc, "/v1/books/7", &["--http2-prior-knowledge"]).await;
    assert!(
        got.headers.contains("content-type: application/grpc") && got.headers.contains("grpc-status: 12"),
        "REST answered on the gRPC port, not gRPC's UNIMPLEMENTED: {got:?}"
    );
    let http1 = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"])
        .arg(format!("http://{grpc}/v1/books/7"))
        .output()
        .await
        .expect("curl runs");
    assert_ne!(String::from_utf8_lossy(&http1.stdout), "200", "HTTP/1.1 answered on the gRPC port");

    // A gRPC call sent to the REST port is told where gRPC is.
    let registry = trellis::Registry::from_url(&format!("static://trellis.test.rest.v1.Library={rest}"))
        .expect("registry");
    let mut lost = LibraryClient::discover(&registry).expect("discover");
    let err = lost.get_book(GetBookRequest { name: "n".into(), id: 1 }).await.expect_err("not gRPC here");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert!(err.message().contains("rest.listen"), "{err:?}");

    let _ = stop.send(());
    serving.await.expect("joins").expect("drains cleanly");
}

#[tokio::test]
async fn rest_listen_without_rest_routes_is_refused_before_serving() {
    use trellis_tests::proto::trellis::test::echo::v1::echo_server::EchoServer;
    let err = trellis::Server::builder()
        .add_service(EchoServer::new(trellis_tests::EchoService))
        .rest_listen("127.0.0.1:0".parse().expect("addr"))
        .bind()
        .await
        .expect("binds")
        .serve()
        .await
        .expect_err("no routes to serve");
    let text = err.to_string();
    assert!(text.contains("rest.listen") && text.contains("google.api.http"), "{text}");
}

#[tokio::test]
async fn openapi_describes_every_route() {
    let (addr, _stop) = serve().await;
    let got = curl(addr, "/openapi.json", &[]).await;
    assert_eq!(got.status, 200, "{got:?}");
    let doc = got.json();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/v1/{name}/books/{id}", "get"),
        ("/v1/books/{id}", "get"),
        ("/v1/books/{id}", "head"),
        ("/v1/books/{id}", "delete"),
        ("/v1/books/{book.id}", "patch"),
        ("/v1/{name}/books", "post"),
        ("/v1/files/{path}", "get"),
        ("/v1/books/{id}:archive", "post"),
        ("/v1/shelves/{shelf}/books", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} missing: {paths:?}");
    }
    let get = &paths["/v1/{name}/books/{id}"]["get"];
    assert_eq!(get["operationId"], "Library_GetBook");
    assert_eq!(get["tags"], serde_json::json!(["trellis.test.rest.v1.Library"]), "the serving service");
    assert_eq!(doc["tags"][0]["name"], "trellis.test.rest.v1.Library");
    let name = &get["parameters"][0];
    assert_eq!(
        (&name["name"], &name["in"], &name["schema"]["pattern"]),
        (&json("name"), &json("path"), &json("^shelves/[^/]+$"))
    );
    assert_eq!(get["parameters"][1]["schema"], serde_json::json!({ "type": "string", "format": "int64" }));

    let list = &paths["/v1/shelves/{shelf}/books"]["get"];
    let query: Vec<&str> = list["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(query, ["pageSize", "authors"]);
    assert!(list["responses"]["200"]["content"]["application/x-ndjson"].is_object(), "{list}");

    let create = &paths["/v1/{name}/books"]["post"];
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/trellis.test.rest.v1.Book"
    );
    let book = &doc["components"]["schemas"]["trellis.test.rest.v1.Book"]["properties"];
    assert_eq!(book["id"]["format"], "int64");
    assert_eq!(book["authors"]["type"], "array");
    assert_eq!(
        paths["/v1/books/{book.id}"]["patch"]["responses"]["200"]["content"]["application/json"]["schema"]["type"],
        "string"
    );

    // An independent validator agrees it is OpenAPI 3 (Python `openapi-spec-validator`).
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &got.body).expect("write");
    let mut checked = false;
    for python in ["python3", "/usr/bin/python3"] {
        let has = Command::new(python).args(["-c", "import openapi_spec_validator"]).output().await;
        if !has.is_ok_and(|out| out.status.success()) {
            continue;
        }
        let script = "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))";
        let out = Command::new(python).args(["-c", script]).arg(&file).output().await.expect("python runs");
        assert!(out.status.success(), "invalid OpenAPI: {}", String::from_utf8_lossy(&out.stderr));
        checked = true;
        break;
    }
    assert!(checked, "no python3 with openapi-spec-validator: pip install openapi-spec-validator");
}

fn json(text: &str) -> serde_json::Value {
    serde_json::Value::String(text.to_owned())
}

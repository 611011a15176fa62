//! `trellis-build` compiles `.proto` files into Trellis services and clients
//! from a `build.rs`, with no `protoc` on the machine.
//!
//! ```no_run
//! // in build.rs, `fn main`:
//! trellis_build::compile(&["proto/order/payment/v1/payment.proto"], &["proto"]);
//! ```
//!
//! ```ignore
//! // src/lib.rs
//! pub mod proto {
//!     trellis::include_protos!();
//! }
//! ```
//!
//! For every message, tonic and prost generate what they always do. For every
//! service, `trellis-build` adds:
//!
//! - `FOO_SERVICE_NAME`, the full protobuf name of the service;
//! - `FOO_DESCRIPTOR`, a [`ServiceDescriptor`] with each method's
//!   `idempotency_level`, streaming kind and call policy, used by the client
//!   stack to decide what is safe to retry, and the file descriptors served by
//!   reflection;
//! - `FooClient`, the typed client over Trellis's channel, with
//!   `FooClient::discover(&registry)` to connect by service name;
//! - an impl that lets `trellis::Server` add `FooServer::new(handler)` in one
//!   line, with health and reflection set up for it;
//! - `FOO_METHOD_HTTP_RULE`, for each method with a `google.api.http` route,
//!   and `FOO_OPENAPI`, the OpenAPI 3 document (JSON) of the service's routes,
//!   which the Trellis server serves at `/openapi.json`.
//!
//! Generated code refers to tonic and prost only through `trellis::codegen`,
//! so a service crate depends on `trellis` alone.
//!
//! A broken proto fails the build with `file:line:column: message`:
//!
//! ```text
//! error: proto/order/v1/order.proto:12:3: name 'Money' is not defined
//! ```
//!
//! # Call policy per method
//!
//! A method can carry its own call policy in the proto, through the
//! `(trellis.method)` option of `trellis/options.proto`. The import needs no
//! setup: `trellis-build` writes the file under the output directory and adds
//! that folder after your `includes`. Its messages generate no Rust code.
//!
//! ```proto
//! import "trellis/options.proto";
//!
//! service Accounts {
//!   rpc GetAccount(GetAccountRequest) returns (Account) {
//!     option idempotency_level = NO_SIDE_EFFECTS;
//!     option (trellis.method) = {
//!       timeout: "2s"                    // default deadline of a call (humantime)
//!       max_attempts: 4                  // attempts when retrying is safe; default 3, 1 = no retries
//!       hedge: { delay: "50ms" }         // a second attempt if no answer after 50 ms
//!       hash_key: "account_id"           // route by consistent hashing on this request field
//!     };
//!   }
//!   rpc Rename(RenameRequest) returns (Account) {
//!     option (trellis.method).timeout = "500ms";
//!     // Fails the build: Rename is not marked safe to repeat.
//!     option (trellis.method).hedge.delay = "50ms";
//!   }
//! }
//! ```
//!
//! Each method's policy lands in `FOO_DESCRIPTOR`, as the method's
//! [`MethodPolicy`]. The options are checked at build time, and a bad one
//! fails the build naming the file, line and method, and how to fix it:
//!
//! - `timeout` and `hedge.delay` must be positive durations (`"2s"`, `"250ms"`);
//! - `max_attempts` is at most 10; `hedge.max_attempts` is 2 to 4 (default 2);
//! - `hedge` needs a `delay`, and a method marked `NO_SIDE_EFFECTS` or
//!   `IDEMPOTENT`, since a hedged call may run twice;
//! - `hash_key` names a top-level, singular `string`, `bytes` or integer field
//!   of the request, and is not for client-streaming methods.
//!
//! ```text
//! error: proto/accounts/v1/accounts.proto:15:5: method accounts.v1.Accounts.Rename: hedging sends a call twice; mark the method `option idempotency_level = IDEMPOTENT;` (or NO_SIDE_EFFECTS), or remove the hedge
//! ```
//!
//! # REST routes per method
//!
//! A method can also say how it is reached over HTTP/JSON, with the
//! `google.api.http` option of `google/api/annotations.proto` (the
//! [`HttpRule`] of Google's API guidelines, as grpc-gateway and Envoy read
//! it). `trellis-build` ships that file and `google/api/http.proto` the same
//! way as `trellis/options.proto`: no setup, and no Rust code for them in
//! your crate.
//!
//! ```proto
//! import "google/api/annotations.proto";
//!
//! service Accounts {
//!   rpc GetAccount(GetAccountRequest) returns (Account) {
//!     option (google.api.http) = {
//!       get: "/v1/{name=tenants/*}/accounts/{account_id}"
//!       additional_bindings { get: "/v1/accounts/{account_id}" }
//!     };
//!   }
//!   rpc CreateAccount(CreateAccountRequest) returns (Account) {
//!     option (google.api.http) = { post: "/v1/accounts" body: "account" };
//!   }
//! }
//! ```
//!
//! Every rule is checked at build time, and a bad one fails the build with
//! `file:line:column: method ...: problem; fix`:
//!
//! - the path is `/` then segments: literals, `*` (one segment), `**` (the
//!   rest of the path, so only last), `{field}` or `{field=pattern}` with a
//!   pattern of literals, `*` and `**`, then an optional `:verb`;
//! - a path variable names a singular scalar or enum field of the request,
//!   through singular message fields (`{address.city}`), and binds it once;
//! - `body` is `*` or a top-level request field not bound by the path, and
//!   a GET or DELETE has none; `response_body` is a top-level response field;
//! - `additional_bindings` are one level deep, and a rule sets one HTTP method
//!   and no `selector`;
//! - no two routes of the compiled services match the same requests (the same
//!   HTTP method, and paths equal but for the names of their variables).
//!
//! ```text
//! error: proto/accounts/v1/accounts.proto:9:5: method accounts.v1.Accounts.CreateAccount: route `POST /v1/accounts` matches the same requests as `POST /v1/accounts` of method accounts.v1.Accounts.Import; change the path or the HTTP method of one of them
//! ```
//!
//! The checked rule, its path parsed into segments, is in the method's
//! [`MethodDescriptor`] (`http_rule()`) and in a constant per method,
//! `FOO_METHOD_HTTP_RULE` (`ACCOUNTS_GET_ACCOUNT_HTTP_RULE`, named after the
//! method's Rust name).
//!
//! # Method names
//!
//! Every valid proto compiles. A method is named in Rust as prost names it:
//! its proto name in `snake_case`, a Rust keyword made raw (`rpc Type` is
//! `r#type`) or, where Rust allows no raw form, given a trailing `_` (`rpc
//! Self` is `self_`). That name is a method of the generated client
//! `FooClient` and of the server trait `Foo`. When it is one of the names
//! below, or the name an earlier method of the same service already has
//! (`GetItem` and `getItem` are both `get_item`), it gets `_rpc` appended, as
//! many times as it takes to be unique:
//!
//! | name | defined by |
//! |---|---|
//! | `new`, `with_origin`, `with_interceptor`, `send_compressed`, `accept_compressed`, `max_decoding_message_size`, `max_encoding_message_size` | tonic's client (and its `FooServer`) |
//! | `connect` | tonic's client over tonic's own transport |
//! | `discover` | Trellis's client |
//! | `from_arc` | tonic's `FooServer` |
//! | `poll_ready`, `call` | `tower::Service`, which `FooServer` implements |
//! | `clone`, `clone_from`, `fmt` | `Clone` and `Debug`, which the client and `FooServer` implement and a handler usually derives |
//! | `get_ref`, `get_mut`, `into_inner` | kept free for wrapper accessors, so adding them never renames a method |
//!
//! ```proto
//! service Accounts {
//!   rpc New(Req) returns (Account);       // new_rpc: `new` is the client's constructor
//!   rpc Call(Req) returns (Account);      // call_rpc
//!   rpc Type(Req) returns (Account);      // r#type
//!   rpc GetItem(Req) returns (Item);      // get_item
//!   rpc getItem(Req) returns (Item);      // get_item_rpc: the name of an earlier method
//! }
//! ```
//!
//! Names that stay as they are are given out first: had the service also an
//! `rpc NewRpc`, that one would be `new_rpc` and `New` would be
//! `new_rpc_rpc`. The proto
//! name is untouched: the method's path on the wire, its
//! [`MethodDescriptor`] name, and a server-streaming method's response type
//! (`type NewStream`) keep it. The generated docs of a renamed method say why
//! it was renamed.
//!
//! [`ServiceDescriptor`]: https://docs.rs/trellis/latest/trellis/codegen/struct.ServiceDescriptor.html
//! [`MethodPolicy`]: https://docs.rs/trellis/latest/trellis/codegen/struct.MethodPolicy.html
//! [`MethodDescriptor`]: https://docs.rs/trellis/latest/trellis/codegen/struct.MethodDescriptor.html
//! [`HttpRule`]: https://docs.rs/trellis/latest/trellis/codegen/struct.HttpRule.html

mod error;
mod generator;
mod http;
mod include;
mod names;
mod openapi;
mod policy;

use std::path::{Path, PathBuf};

pub use error::Error;

/// The file, in the output directory, that `trellis::include_protos!()` includes.
pub const INCLUDE_FILE: &str = "trellis_protos.rs";

/// The file, in the output directory, holding the encoded `FileDescriptorSet`.
pub const DESCRIPTOR_SET_FILE: &str = "trellis_descriptor_set.bin";

/// Compiles `protos`, finding imports under `includes`, with the default
/// settings; on error, prints the error and fails the build script.
///
/// Paths are relative to the crate root (where `build.rs` runs). Use
/// [`configure`] for options, or to handle the error yourself.
pub fn compile(protos: &[impl AsRef<Path>], includes: &[impl AsRef<Path>]) {
    if let Err(err) = configure().compile(protos, includes) {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}

/// A [`Builder`] with the defaults: client and server, output in `OUT_DIR`.
pub fn configure() -> Builder {
    Builder { build_client: true, build_server: true, out_dir: None, emit_rerun_if_changed: true }
}

/// Options for a compilation. Made by [`configure`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    build_client: bool,
    build_server: bool,
    out_dir: Option<PathBuf>,
    emit_rerun_if_changed: bool,
}

impl Builder {
    /// Whether to generate clients (default: yes).
    pub fn build_client(mut self, enable: bool) -> Self {
        self.build_client = enable;
        self
    }

    /// Whether to generate servers (default: yes).
    pub fn build_server(mut self, enable: bool) -> Self {
        self.build_server = enable;
        self
    }

    /// Where to write the generated code (default: `$OUT_DIR`).
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Whether to print `cargo:rerun-if-changed` for every proto read
    /// (default: yes; turn off when not running inside a build script).
    pub fn emit_rerun_if_changed(mut self, enable: bool) -> Self {
        self.emit_rerun_if_changed = enable;
        self
    }

    /// Compiles `protos`, finding imports under `includes`.
    ///
    /// # Errors
    ///
    /// A proto that does not parse or type-check, a missing import, or an
    /// output directory that cannot be written.
    pub fn compile(self, protos: &[impl AsRef<Path>], includes: &[impl AsRef<Path>]) -> Result<(), Error> {
        let includes: Vec<PathBuf> = includes.iter().map(|p| p.as_ref().to_path_buf()).collect();
        let out_dir = match self.out_dir {
            Some(dir) => dir,
            None => std::env::var_os("OUT_DIR").map(PathBuf::from).ok_or_else(|| {
                Error::config("OUT_DIR is not set: call trellis-build from build.rs, or set `out_dir`")
            })?,
        };
        std::fs::create_dir_all(&out_dir).map_err(|e| Error::io(&out_dir, e))?;

        // The shipped protos (`trellis/options.proto`, `google/api/*.proto`)
        // come after the user's folders, which may hold copies of their own.
        let options_include = include::write(&out_dir)?;
        let search_path: Vec<&Path> =
            includes.iter().map(PathBuf::as_path).chain([options_include.as_path()]).collect();
        let mut compiler = protox::Compiler::new(search_path).map_err(|e| Error::proto(e, &includes))?;
        compiler.include_imports(true).include_source_info(true);
        compiler.open_files(protos.iter().map(AsRef::as_ref)).map_err(|e| Error::proto(e, &includes))?;

        if self.emit_rerun_if_changed {
            for file in compiler.files() {
                // The options file belongs to trellis-build, not to the crate
                // being built: nothing there for cargo to watch.
                if let Some(path) = file.path().filter(|path| !path.starts_with(&options_include)) {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
            for include in &includes {
                println!("cargo:rerun-if-changed={}", include.display());
            }
        }

        let pool = compiler.descriptor_pool();
        let policies = policy::read(&pool, &includes)?;
        let http_rules = http::read(&pool, &includes)?;
        let openapi = openapi::documents(&pool, &http_rules);

        let descriptor_path = out_dir.join(DESCRIPTOR_SET_FILE);
        std::fs::write(&descriptor_path, compiler.encode_file_descriptor_set())
            .map_err(|e| Error::io(&descriptor_path, e))?;
        let descriptor_set = descriptor_path
            .to_str()
            .ok_or_else(|| {
                Error::config(format!(
                    "output path `{}` is not valid UTF-8; choose another `out_dir`",
                    descriptor_path.display()
                ))
            })?
            .to_owned();

        let tonic = tonic_prost_build::configure()
            .build_client(self.build_client)
            .build_server(self.build_server)
            .build_transport(false)
            .codec_path(format!("{}::ProstCodec", generator::CODEGEN))
            .service_generator();

        let mut config = prost_build::Config::new();
        config
            .out_dir(&out_dir)
            .include_file(INCLUDE_FILE)
            .prost_path(format!("{}::prost", generator::CODEGEN))
            .prost_types_path(format!("{}::prost_types", generator::CODEGEN))
            .service_generator(Box::new(generator::TrellisGenerator {
                tonic,
                build_client: self.build_client,
                build_server: self.build_server,
                descriptor_set,
                policies,
                http_rules,
                openapi,
            }));
        // The options are read above; the messages of `trellis/options.proto`
        // and `google/api/*.proto` need no Rust code in the user's crate.
        let mut files = compiler.file_descriptor_set();
        include::drop_option_files(&mut files.file);
        config.compile_fds(files).map_err(|e| Error::io(&out_dir, e))
    }
}

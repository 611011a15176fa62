//! Test helpers for service authors: real servers in-process, found through
//! a registry of their own, with faults to inject and lift.
//!
//! [`TestServer::start`] serves your generated services on a free loopback
//! port, registers them in a fresh `local://` registry in a temporary
//! directory, and returns once a client can find them, so the generated
//! client's `discover` is all a test needs. [`Fleet::start`] does the same
//! for N instances sharing one registry. Each instance has a [`Faults`]
//! switch: make it slow, make it answer `UNAVAILABLE`, or make it swallow
//! calls, then lift the fault, while the test runs.
//!
//! ```no_run
//! # mod proto { pub struct GreeterServer<T>(T); }
//! use std::time::Duration;
//! use trellis::testing::{Fleet, TestServer};
//!
//! # async fn run() -> Result<(), trellis::Error> {
//! // One instance, and a client that finds it by service name:
//! let server = TestServer::start(|server| server /* .add_service(GreeterServer::new(Greeter)) */).await?;
//! // let mut client = GreeterClient::discover(server.registry())?;
//! // client.say_hello(HelloRequest { name: "Ada".into() }).await?;
//!
//! // Three instances; the second one fails every call until the fault is lifted:
//! let fleet = Fleet::start(3, |server, _index| server /* .add_service(...) */).await?;
//! fleet.instance(1).faults().set_unavailable(true);
//! // ... calls through GreeterClient::discover(fleet.registry()) go to the two others ...
//! fleet.instance(1).faults().lift();
//! fleet.instance(2).faults().set_delay(Duration::from_millis(200));
//! # drop(server); Ok(()) }
//! ```
//!
//! A complete, runnable example is the test that `trellis new` writes into
//! every new service (`tests/service.rs`); the tests of this module call the
//! `Echo` and `Deep` services of `tests/proto` the same way
//! (`tests/tests/testing.rs`).
//!
//! # Faults
//!
//! Faults apply to the application calls of the services added through the
//! builder; health and reflection keep answering, so a faulty instance still
//! looks alive to health checks, as a real slow or broken instance does.
//!
//! - [`Faults::set_delay`]: every call waits this long before its handler runs.
//! - [`Faults::set_unavailable`]: every call is answered `UNAVAILABLE` unrun.
//! - [`Faults::set_drop`]: every call is swallowed: the handler never runs and
//!   no answer comes until the caller gives up (its deadline) or the fault is
//!   lifted, when the call runs.
//!
//! # Time
//!
//! Everything waits on Tokio's clock, so tests may run with
//! `#[tokio::test(start_paused = true)]`: an injected delay of a minute then
//! takes no wall time.
//!
//! # Shutdown
//!
//! A test server shuts down like any Trellis server (`NOT_SERVING`,
//! deregistration, drain), with test timings: no propagation delay and a
//! drain of at most a second (change them with [`TestServerBuilder::configure`]).
//! [`TestServer::stop`] waits for that; dropping the server starts it and
//! returns at once.

mod faults;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::server::NamedService;

pub use faults::{Faults, Faulty};

use crate::descriptor::DescribedService;
use crate::error::Error;
use crate::registry::{Endpoint, Registry};
use crate::server::{Server, ServerBuilder};

/// How long [`TestServer::start`] waits for the registry to list the server.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);

/// The drain timeout test servers get unless configured otherwise.
const TEST_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// A Trellis server running in this process, for a test. Shuts down when
/// dropped.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    registry: Registry,
    faults: Faults,
    services: Vec<&'static str>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), Error>>>,
    _dir: Option<Arc<TempDir>>,
}

impl TestServer {
    /// Starts a server with the services `setup` adds, on a free loopback
    /// port, registered in a new `local://` registry of its own; returns once
    /// the registry lists it.
    ///
    /// # Errors
    ///
    /// When the temporary registry cannot be made, the server cannot bind or
    /// register, or the registry does not list it within 10 seconds.
    pub async fn start<F>(setup: F) -> Result<TestServer, Error>
    where
        F: FnOnce(TestServerBuilder) -> TestServerBuilder,
    {
        setup(TestServer::builder()).start().await
    }

    /// A builder, for servers that need more than [`start`](Self::start) offers.
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder {
            server: Server::builder().propagation_delay(Duration::ZERO).drain_timeout(TEST_DRAIN_TIMEOUT),
            faults: Faults::default(),
            registry: None,
            services: Vec::new(),
        }
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint the server registered.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::from(self.addr)
    }

    /// The registry the server is registered in: pass it to a generated
    /// client's `discover`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// This server's fault switch.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The full names of the services the server serves.
    pub fn services(&self) -> &[&'static str] {
        &self.services
    }

    /// Shuts the server down gracefully and waits until it has stopped.
    ///
    /// # Errors
    ///
    /// The error the server failed with, if it failed while serving.
    pub async fn stop(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(|e| Error::Serve(e.into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Configures a [`TestServer`]: the services it serves, and anything else a
/// [`ServerBuilder`] offers.
#[must_use]
pub struct TestServerBuilder {
    server: ServerBuilder,
    faults: Faults,
    registry: Option<(Registry, Option<Arc<TempDir>>)>,
    services: Vec<&'static str>,
}

impl std::fmt::Debug for TestServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServerBuilder")
            .field("server", &self.server)
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl TestServerBuilder {
    /// Adds a generated service, such as `GreeterServer::new(handler)`,
    /// behind this server's [`Faults`] switch.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: DescribedService
            + NamedService
            + tower_service::Service<
                http::Request<Body>,
                Response = http::Response<Body>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.services.push(S::NAME);
        self.server = self.server.add_service(Faulty::new(service, self.faults.clone()));
        self
    }

    /// Registers in `registry` instead of a new `local://` registry of its own.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some((registry, None));
        self
    }

    /// Changes the underlying [`ServerBuilder`], for example its drain
    /// timeout or concurrency limit. Leave the listen address, the registry
    /// and the shutdown signal to the test server.
    pub fn configure(mut self, f: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Self {
        self.server = f(self.server);
        self
    }

    /// Starts the server (see [`TestServer::start`]).
    ///
    /// # Errors
    ///
    /// As [`TestServer::start`].
    pub async fn start(self) -> Result<TestServer, Error> {
        let TestServerBuilder { server, faults, registry, services } = self;
        let (registry, dir) = match registry {
            Some(given) => given,
            None => {
                let (registry, dir) = own_registry()?;
                (registry, Some(dir))
            }
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let bound = server
            .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .registry(registry.clone())
            .shutdown_signal(async move {
                let _ = stopped.await;
            })
            .bind()
            .await?;
        let addr = bound.local_addr();
        let task = tokio::spawn(bound.serve());
        let server =
            TestServer { addr, registry, faults, services, stop: Some(stop), task: Some(task), _dir: dir };
        for service in &server.services {
            wait_until_listed(&server.registry, service, &server.endpoint()).await?;
        }
        Ok(server)
    }
}

/// Several instances of a service, registered in one registry.
#[derive(Debug)]
pub struct Fleet {
    instances: Vec<TestServer>,
    registry: Registry,
    _dir: Arc<TempDir>,
}

impl Fleet {
    /// Starts `n` instances, each with the services `setup` adds (it gets the
    /// instance's index, from 0), all registered in one new `local://`
    /// registry; returns once the registry lists all of them.
    ///
    /// # Errors
    ///
    /// As [`TestServer::start`], for any instance.
    pub async fn start<F>(n: usize, mut setup: F) -> Result<Fleet, Error>
    where
        F: FnMut(TestServerBuilder, usize) -> TestServerBuilder,
    {
        let (registry, dir) = own_registry()?;
        let mut instances = Vec::with_capacity(n);
        for index in 0..n {
            let builder = TestServer::builder().registry(registry.clone());
            let mut instance = setup(builder, index).start().await?;
            instance._dir = Some(dir.clone());
            instances.push(instance);
        }
        Ok(Fleet { instances, registry, _dir: dir })
    }

    /// The registry every instance is registered in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Instance `index`.
    ///
    /// # Panics
    ///
    /// If there are not that many instances.
    pub fn instance(&self, index: usize) -> &TestServer {
        &self.instances[index]
    }

    /// Every instance, in the order they started.
    pub fn instances(&self) -> &[TestServer] {
        &self.instances
    }

    /// How many instances are running.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether no instance is running.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// Shuts instance `index` down gracefully (it deregisters first) and
    /// waits until it has stopped; the others keep their indexes shifted down.
    ///
    /// # Errors
    ///
    /// The error the instance failed with, if it failed while serving.
    ///
    /// # Panics
    ///
    /// If there are not that many instances.
    pub async fn stop(&mut self, index: usize) -> Result<(), Error> {
        self.instances.remove(index).stop().await
    }
}

/// A new `local://` registry in a temporary directory.
fn own_registry() -> Result<(Registry, Arc<TempDir>), Error> {
    let dir = TempDir::new()?;
    let registry = Registry::from_url(&format!("local://{}", dir.path().display()))?;
    Ok((registry, Arc::new(dir)))
}

async fn wait_until_listed(registry: &Registry, service: &str, endpoint: &Endpoint) -> Result<(), Error> {
    let wait = async {
        let mut resolution = registry.resolve(service).await?;
        while !resolution.endpoints().contains(endpoint) {
            if resolution.changed().await.is_none() {
                return Err(Error::Serve(
                    format!(
                        "the registry {} stopped following {service} before listing {endpoint}",
                        registry.url()
                    )
                    .into(),
                ));
            }
        }
        Ok(())
    };
    tokio::time::timeout(REGISTRATION_TIMEOUT, wait).await.map_err(|_| {
        Error::Serve(
            format!(
                "{service} at {endpoint} was not listed in {} within {REGISTRATION_TIMEOUT:?}",
                registry.url()
            )
            .into(),
        )
    })?
}

/// A directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, Error> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "trellis-testing-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = base.join(name);
        std::fs::create_dir(&path).map_err(|e| {
            Error::Config(format!(
                "cannot create a test registry directory {}: {e}; set TMPDIR to a writable directory",
                path.display()
            ))
        })?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

//! The command line every Trellis service binary shares, and the [`Context`]
//! a service's setup code receives.

mod args;
mod health;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

use serde::de::DeserializeOwned;

use crate::client::Clients;
use crate::config::{Config, Layers, Unknown};
use crate::error::{BoxError, Error, error_chain};
use crate::metrics::Metrics;
use crate::registry::{Metadata, Registry};
use crate::server::{Server, ServerBuilder};
use crate::telemetry::LogFormat;

/// A service binary: parses the shared command line, loads configuration,
/// starts logging and a Tokio runtime, then runs your setup code.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     trellis::App::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
///         .about("Takes payments for orders")
///         .run(|ctx| async move {
///             // let store = Store::open(&ctx.section::<Settings>("payment")?.database)?;
///             ctx.server()
///                 // .add_service(OrderPaymentServer::new(Payments::new(store)))
///                 .serve()
///                 .await?;
///             Ok(())
///         })
/// }
/// ```
///
/// Every binary gets these flags:
///
/// ```text
/// --listen ADDR          where to listen (port 0 picks a free port)
/// --config FILE          a TOML file of settings
/// --registry URL         where services register and find each other
/// --log-format FORMAT    text or json
/// --admin-listen ADDR    serve /metrics, /healthz, /readyz and the status page there
/// --rest-listen ADDR     serve REST there instead of on the gRPC port
/// -s, --set KEY=VALUE    any setting, such as shutdown.drain_timeout=30s
/// -h, --help / -V, --version
/// ```
///
/// and a `health` subcommand, `NAME health [--addr HOST:PORT] [--service
/// NAME] [--timeout SECONDS]`, that asks a running server over gRPC whether
/// it is `SERVING` (exit status 0 if it is): a container's `HEALTHCHECK`
/// without a downloaded probe. Without `--addr` it asks the configured
/// `listen` address.
#[derive(Debug, Clone)]
#[must_use]
pub struct App {
    name: &'static str,
    version: &'static str,
    about: Option<&'static str>,
    sections: Option<&'static [&'static str]>,
    admin: Option<std::net::SocketAddr>,
}

impl App {
    /// An application called `name` at `version` (pass
    /// `env!("CARGO_PKG_NAME")` and `env!("CARGO_PKG_VERSION")`).
    pub fn new(name: &'static str, version: &'static str) -> Self {
        App { name, version, about: None, sections: None, admin: None }
    }

    /// One line for `--help`.
    pub fn about(mut self, about: &'static str) -> Self {
        self.about = Some(about);
        self
    }

    /// Names every section of the configuration the service reads itself
    /// with [`Context::section`], so that a misspelt section (`[paymnet]`)
    /// is rejected as soon as the configuration is loaded, before the setup
    /// code runs. Without this, unknown sections are rejected when the server
    /// from [`Context::server`] binds, or when the setup code returns without
    /// serving (see [`config`](crate::config#misspelt-keys)).
    pub fn sections(mut self, sections: &'static [&'static str]) -> Self {
        self.sections = Some(sections);
        self
    }

    /// Turns the admin listener on at `addr` when the configuration does not
    /// say where (`admin.listen`, `--admin-listen`); it is off otherwise.
    pub fn admin_listen_by_default(mut self, addr: std::net::SocketAddr) -> Self {
        self.admin = Some(addr);
        self
    }

    /// Runs with the process's own arguments. See [`run_with_args`](Self::run_with_args).
    pub fn run<F, Fut>(self, setup: F) -> ExitCode
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future<Output = Result<(), BoxError>>,
    {
        self.run_with_args(std::env::args_os(), setup)
    }

    /// Parses `args` (the first is the program name), loads configuration,
    /// starts logging, and runs `setup` on a new Tokio runtime. `--help` and
    /// `--version` print to stdout and exit with code 0. Errors are printed
    /// as one readable line and turned into a failing exit code: 2 for bad
    /// usage (with the usage line) or configuration, 1 for failures while
    /// running. When `setup` returns, sections of the configuration that
    /// nothing read are an error (exit code 2).
    pub fn run_with_args<I, T, F, Fut>(self, args: I, setup: F) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
        F: FnOnce(Context) -> Fut,
        Fut: Future<Output = Result<(), BoxError>>,
    {
        let args = match args::parse(args) {
            Ok(args) => args,
            Err(exit) => return exit.report(&self),
        };
        let ctx = match Context::from_args(self.name, self.version, &args, self.sections) {
            Ok(mut ctx) => {
                ctx.config.admin.listen = ctx.config.admin.listen.or(self.admin);
                ctx
            }
            Err(err) => {
                eprintln!("{}: error: {err}", self.name);
                return ExitCode::from(2);
            }
        };
        if let Some(health) = &args.health {
            return health::run(self.name, &ctx.config, health);
        }
        if let Err(err) = crate::telemetry::init(&ctx.config.log)
            .and_then(|()| crate::telemetry::init_export(&ctx.config.trace, self.name))
        {
            eprintln!("{}: error: {err}", self.name);
            return ExitCode::from(2);
        }
        let json_logs = ctx.config.log.format == LogFormat::Json;
        let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(err) => {
                eprintln!("{}: error: cannot start the Tokio runtime: {err}", self.name);
                return ExitCode::FAILURE;
            }
        };
        let sections = Arc::clone(&ctx.sections);
        let result = runtime.block_on(setup(ctx)).and_then(|()| Ok(sections.check()?));
        crate::telemetry::flush(std::time::Duration::from_secs(2));
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                let code = if err.downcast_ref::<Error>().is_some_and(|e| matches!(e, Error::Config(_))) {
                    ExitCode::from(2)
                } else {
                    ExitCode::FAILURE
                };
                let message = error_chain(err.as_ref());
                if json_logs {
                    tracing::error!("{message}");
                } else {
                    eprintln!("{}: error: {message}", self.name);
                }
                code
            }
        }
    }
}

/// What a service's setup code gets: its configuration, its registry, and a
/// server builder configured from them.
#[derive(Debug, Clone)]
pub struct Context {
    name: &'static str,
    version: &'static str,
    config: Config,
    layers: Layers,
    clients: Clients,
    sections: Arc<Sections>,
    metrics: Metrics,
}

/// The unknown top-level sections of the configuration, and the sections the
/// service read or named; shared by every clone of a [`Context`].
#[derive(Debug)]
struct Sections {
    unknown: Vec<Unknown>,
    named: Mutex<BTreeSet<String>>,
}

impl Sections {
    fn read(&self, key: &str) {
        let section = key.split('.').next().unwrap_or(key);
        self.named.lock().unwrap_or_else(PoisonError::into_inner).insert(section.to_owned());
    }

    /// Rejects the unknown sections that were neither read nor named.
    fn check(&self) -> Result<(), Error> {
        if self.unknown.is_empty() {
            return Ok(());
        }
        let named = self.named.lock().unwrap_or_else(PoisonError::into_inner);
        let named: Vec<&str> = named.iter().map(String::as_str).collect();
        crate::config::check_sections(&self.unknown, &named)
    }
}

impl Context {
    fn from_args(
        name: &'static str,
        version: &'static str,
        args: &args::Args,
        sections: Option<&'static [&'static str]>,
    ) -> Result<Self, Error> {
        let mut flags = Vec::new();
        for raw in &args.set {
            let (key, value) = raw.split_once('=').ok_or_else(|| {
                Error::Config(format!(
                    "--set `{raw}`: expected KEY=VALUE, such as shutdown.drain_timeout=30s"
                ))
            })?;
            flags.push((key.trim().to_owned(), value.to_owned()));
        }
        for (key, value) in [
            ("listen", &args.listen),
            ("registry", &args.registry),
            ("rest.listen", &args.rest_listen),
            ("admin.listen", &args.admin_listen),
            ("log.format", &args.log_format),
        ] {
            if let Some(value) = value {
                flags.push((key.to_owned(), value.clone()));
            }
        }
        let layers = Layers::load(args.config.as_deref(), flags, sections)?;
        let config = layers.config()?;
        let registry = Registry::from_url(config.registry.expose())?;
        let metrics = Metrics::new(name, version);
        let mut clients =
            Clients::new(registry).with_configs(config.clients.clone()).with_metrics(metrics.clone());
        if config.tls.is_set() {
            clients = clients.with_tls(config.tls.clone());
        }
        if let Some(zone) = &config.instance.zone {
            clients = clients.with_zone(zone.clone());
        }
        let own = sections.unwrap_or_default();
        let sections = Arc::new(Sections {
            unknown: layers.unknown(own)?,
            named: Mutex::new(own.iter().map(|s| (*s).to_owned()).collect()),
        });
        Ok(Context { name, version, config, layers, clients, sections, metrics })
    }

    /// The application's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The runtime's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The service's own settings from section `key` of the configuration
    /// (file section `[key]`, variables `TRELLIS_KEY__FIELD`, flags
    /// `--set key.field=VALUE`).
    ///
    /// Reading a section tells the runtime that it is the service's own, so
    /// it is not rejected as a misspelling (see
    /// [`config`](crate::config#misspelt-keys)).
    ///
    /// # Errors
    ///
    /// A value of the wrong type, or an unknown key when `T` denies unknown
    /// fields, with the key and where it came from.
    pub fn section<T: DeserializeOwned>(&self, key: &str) -> Result<T, Error> {
        self.sections.read(key);
        self.layers.section(key)
    }

    /// The registry named by `registry`.
    pub fn registry(&self) -> &Registry {
        self.clients.registry()
    }

    /// The registry and the `[clients."SERVICE"]` settings, which generated
    /// clients take: `OrderPaymentClient::discover(&ctx)` is the same as
    /// `OrderPaymentClient::discover(ctx.clients())`.
    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    /// The process's metrics, which the server and every channel made from
    /// this context count into, and the admin listener serves.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A server builder set up from the configuration.
    ///
    /// Its [`bind`](ServerBuilder::bind) and [`serve`](ServerBuilder::serve)
    /// fail with [`Error::Config`] if the configuration has a top-level
    /// section that is not the runtime's and that the service has not read
    /// with [`section`](Self::section) by then, naming where it was set and
    /// the nearest known key.
    pub fn server(&self) -> ServerBuilder {
        let instance = &self.config.instance;
        let metadata = Metadata {
            version: Some(instance.version.clone().unwrap_or_else(|| self.version.to_owned())),
            zone: instance.zone.clone(),
            weight: instance.weight,
            ..Metadata::default()
        };
        let mut server = Server::builder()
            .listen(self.config.listen)
            .shutdown_config(self.config.shutdown)
            .faults(self.config.faults)
            .max_concurrent_calls(self.config.server.max_concurrent_calls)
            .http2(self.config.server.http2)
            .message_limits(self.config.server.messages)
            .access_log(self.config.log.access)
            .registry(self.registry().clone())
            .metadata(metadata)
            .config_check({
                let sections = Arc::clone(&self.sections);
                move || sections.check()
            });
        if self.config.tls.is_set() {
            server = server.tls(self.config.tls.clone());
        }
        if let Some(advertise) = &self.config.advertise {
            server = server.advertise(advertise.clone());
        }
        server = server.metrics(self.metrics.clone());
        if let Some(admin) = self.config.admin.listen {
            server = server.admin_listen(admin);
        }
        if let Some(rest) = self.config.rest.listen {
            server = server.rest_listen(rest);
        }
        server
    }
}

impl From<&Context> for Clients {
    fn from(ctx: &Context) -> Self {
        ctx.clients.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn argv(flags: &[&str]) -> Vec<String> {
        std::iter::once("svc").chain(flags.iter().copied()).map(str::to_owned).collect()
    }

    #[test]
    fn an_unread_section_fails_when_setup_returns() {
        let app = || App::new("svc", "0.1.0");
        let code = app().run_with_args(argv(&["--set", "nosuch.key=1"]), |_ctx| async { Ok(()) });
        assert_eq!(code, ExitCode::from(2));

        let code = app().run_with_args(argv(&["--set", "nosuch.key=1"]), |ctx| async move {
            let value: BTreeSet<String> =
                ctx.section::<std::collections::BTreeMap<String, i64>>("nosuch")?.into_keys().collect();
            assert_eq!(value, BTreeSet::from(["key".to_owned()]));
            Ok(())
        });
        assert_eq!(code, ExitCode::SUCCESS);
    }

    #[test]
    fn named_sections_are_checked_before_setup() {
        let ran = Arc::new(AtomicBool::new(false));
        let setup = |ran: Arc<AtomicBool>| {
            move |_ctx: Context| async move {
                ran.store(true, Ordering::SeqCst);
                Ok(())
            }
        };
        let app = || App::new("svc", "0.1.0").sections(&["payment"]);
        let code = app().run_with_args(argv(&["--set", "paymnt.database=x"]), setup(Arc::clone(&ran)));
        assert_eq!(code, ExitCode::from(2));
        assert!(!ran.load(Ordering::SeqCst), "setup ran with a misspelt section");

        let code = app().run_with_args(argv(&["--set", "payment.database=x"]), setup(Arc::clone(&ran)));
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(ran.load(Ordering::SeqCst));
    }

    #[test]
    fn an_unknown_key_fails_before_setup() {
        let code = App::new("svc", "0.1.0")
            .run_with_args(argv(&["--set", "registy=static://"]), |_ctx| async { panic!("setup ran") });
        assert_eq!(code, ExitCode::from(2));
    }

    #[test]
    fn log_format_takes_text_or_json_and_names_them_otherwise() {
        let parsed = args::parse(argv(&["--log-format", "json"])).unwrap();
        let ctx = Context::from_args("svc", "0.1.0", &parsed, None).unwrap();
        assert_eq!(ctx.config.log.format, LogFormat::Json);

        let err = args::parse(argv(&["--log-format", "xml"])).unwrap_err();
        let text = err.text(&App::new("svc", "0.1.0"));
        assert!(text.starts_with("svc: error: invalid value 'xml' for '--log-format <FORMAT>'"), "{text}");
        assert!(text.contains("possible values: text, json"), "{text}");
    }

    #[test]
    fn every_flag_reaches_the_configuration() {
        let parsed = args::parse(argv(&[
            "--listen=127.0.0.1:7001",
            "--admin-listen",
            "127.0.0.1:7002",
            "--rest-listen",
            "127.0.0.1:7003",
            "--registry",
            "static://a=127.0.0.1:1",
            "--log-format=json",
            "-s",
            "shutdown.drain_timeout=7s",
        ]))
        .unwrap();
        let config = Context::from_args("svc", "0.1.0", &parsed, None).unwrap().config;
        assert_eq!(config.listen.to_string(), "127.0.0.1:7001");
        assert_eq!(config.admin.listen.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:7002"));
        assert_eq!(config.rest.listen.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:7003"));
        assert_eq!(config.registry.expose(), "static://a=127.0.0.1:1");
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.shutdown.drain_timeout, std::time::Duration::from_secs(7));
    }

    #[test]
    fn help_version_and_usage_errors_exit_before_setup() {
        let run = |flags: &[&str]| {
            App::new("svc", "0.1.0").run_with_args(argv(flags), |_ctx| async { panic!("setup ran") })
        };
        assert_eq!(run(&["--help"]), ExitCode::SUCCESS);
        assert_eq!(run(&["health", "--help"]), ExitCode::SUCCESS);
        assert_eq!(run(&["--version"]), ExitCode::SUCCESS);
        assert_eq!(run(&["--lisen", "127.0.0.1:0"]), ExitCode::from(2));
        assert_eq!(run(&["--listen"]), ExitCode::from(2));
        assert_eq!(run(&["serve"]), ExitCode::from(2));
    }

    #[tokio::test]
    async fn the_server_binds_only_once_every_section_is_read() {
        let parsed =
            args::parse(argv(&["--set", "shutdwn.drain_timeout=1s", "--set", "payment.database=x"])).unwrap();
        let ctx = Context::from_args("svc", "0.1.0", &parsed, None).unwrap();

        let err = ctx.server().bind().await.unwrap_err();
        let Error::Config(message) = err else { panic!("expected a configuration error, got {err}") };
        assert!(
            message.contains("`shutdwn` (from the command line): unknown section; did you mean `shutdown`?"),
            "{message}"
        );
        assert!(message.contains("`payment` (from the command line): unknown section"), "{message}");

        // A section read after the builder was made, but before binding,
        // counts; the misspelling does not go away.
        let server = ctx.server();
        ctx.section::<std::collections::BTreeMap<String, String>>("payment").unwrap();
        let Error::Config(message) = server.bind().await.unwrap_err() else {
            panic!("expected a config error")
        };
        assert!(!message.contains("`payment`") && message.contains("`shutdwn`"), "{message}");

        ctx.section::<std::collections::BTreeMap<String, String>>("shutdwn").unwrap();
        let bound = ctx.server().bind().await.unwrap();
        assert!(bound.local_addr().ip().is_loopback());
    }
}

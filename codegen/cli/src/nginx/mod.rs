//! `trellis nginx`: an Nginx configuration that fronts services, with the
//! instances a registry lists: an `upstream` per service, a `grpc_pass`
//! location per service path, passive health through `max_fails`; and for
//! the services with REST routes (`google.api.http`, read from an instance's
//! `/openapi.json`), a plain HTTP/1.1 listener with a location per route.

mod rest;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use trellis::Registry;

use crate::error::Error;
use rest::RestRoute;

/// How long to wait for the registry's first answer about a service.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Arguments of `trellis nginx`.
#[derive(Debug, clap::Args)]
pub(crate) struct NginxArgs {
    /// The registry to read instances from, such as local:// or etcd://10.0.0.5:2379
    #[arg(long, value_name = "URL")]
    registry: String,
    /// Full service names, such as greeter.v1.Greeter
    #[arg(value_name = "SERVICE", required = true)]
    services: Vec<String>,
    /// The address Nginx listens on (HTTP/2, plaintext)
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    listen: String,
    /// The address Nginx serves the services' REST routes on (HTTP/1.1, plaintext)
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8081")]
    rest_listen: String,
    /// Route gRPC only: do not read the services' REST routes
    #[arg(long)]
    no_rest: bool,
    /// Write the configuration here instead of to standard output
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// A whole nginx.conf (events, http, pid and temp paths relative to the
    /// prefix) instead of the part to include in an `http` block
    #[arg(long)]
    full: bool,
    /// Failed attempts before an instance is passed over for --fail-timeout
    #[arg(long, default_value_t = 1)]
    max_fails: u32,
    /// How long a failed instance is passed over, in seconds
    #[arg(long, default_value_t = 10)]
    fail_timeout: u32,
    /// Keep running: rewrite the file and reload Nginx whenever instances change (needs --output)
    #[arg(long, requires = "output")]
    watch: bool,
    /// The command that reloads Nginx after a rewrite, run with `sh -c`
    #[arg(long, value_name = "COMMAND", default_value = "nginx -s reload")]
    reload: String,
}

/// The instances of one service.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    pub(crate) service: String,
    pub(crate) endpoints: Vec<String>,
    /// Its REST routes; `None` until an instance has told them.
    pub(crate) rest: Option<Vec<RestRoute>>,
}

/// `trellis nginx`.
pub(crate) fn run(args: &NginxArgs) -> Result<ExitCode, Error> {
    for service in &args.services {
        check_service(service)?;
    }
    check_listen("--listen", &args.listen)?;
    check_listen("--rest-listen", &args.rest_listen)?;
    let registry = Registry::from_url(&args.registry).map_err(|e| Error::usage(e.to_string()))?;
    crate::runtime()?.block_on(async {
        let mut resolutions = Vec::new();
        for service in &args.services {
            let resolution = tokio::time::timeout(RESOLVE_TIMEOUT, registry.resolve(service))
                .await
                .map_err(|_| Error::msg(format!("{} did not answer about {service} within {RESOLVE_TIMEOUT:?}", args.registry)))?
                .map_err(|e| Error::msg(format!("cannot resolve {service}: {e}")))?;
            resolutions.push(resolution);
        }
        let mut upstreams: Vec<Upstream> = resolutions
            .iter()
            .map(|r| Upstream {
                service: r.service().to_owned(),
                endpoints: r.endpoints().iter().map(ToString::to_string).collect(),
                rest: args.no_rest.then(Vec::new),
            })
            .collect();
        if !args.watch
            && let Some(empty) = upstreams.iter().find(|u| u.endpoints.is_empty())
        {
            return Err(Error::msg(format!(
                "{} lists no instance of {}; start one, check the name (a full name such as greeter.v1.Greeter), \
                 or use --watch to wait for instances",
                args.registry, empty.service
            )));
        }
        if let Err(problem) = learn_routes(&mut upstreams).await {
            if !args.watch {
                return Err(Error::msg(problem));
            }
            eprintln!("trellis: {problem}; trying again when instances change");
        }
        emit(args, &upstreams)?;
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        // Each resolution reports its changes, with the instances after them.
        let (tx, mut changes) = tokio::sync::mpsc::channel::<(usize, Vec<String>)>(16);
        for (index, mut resolution) in resolutions.into_iter().enumerate() {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(instances) = resolution.changed().await {
                    let endpoints: BTreeSet<String> = instances.iter().map(|i| i.endpoint.to_string()).collect();
                    if tx.send((index, endpoints.into_iter().collect())).await.is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut last = fingerprint(&upstreams);
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Some((index, endpoints)) => upstreams[index].endpoints = endpoints,
                    None => return Err(Error::msg(format!("{} stopped answering; nginx keeps the last file", args.registry))),
                },
                () = trellis::server::termination_signal() => return Ok(ExitCode::SUCCESS),
            }
            // Changes come in bursts (an instance leaves, another comes): take them all.
            while let Ok((index, endpoints)) = changes.try_recv() {
                upstreams[index].endpoints = endpoints;
            }
            let now = fingerprint(&upstreams);
            if now == last {
                continue;
            }
            last = now;
            if let Err(problem) = learn_routes(&mut upstreams).await {
                eprintln!("trellis: {problem}; trying again when instances change");
            }
            emit(args, &upstreams)?;
            reload(&args.reload).await;
        }
    })
}

/// Reads the REST routes of each service not known yet from its instances;
/// refuses two services claiming the same route.
async fn learn_routes(upstreams: &mut [Upstream]) -> Result<(), String> {
    let mut problems = Vec::new();
    for upstream in upstreams.iter_mut() {
        if upstream.rest.is_some() || upstream.endpoints.is_empty() {
            continue;
        }
        match rest::fetch(&upstream.service, &upstream.endpoints).await {
            Ok(routes) => upstream.rest = Some(routes),
            Err(problem) => problems.push(format!(
                "cannot read the REST routes of {} ({problem}); check the instances serve HTTP/1.1 on their \
                 gRPC port, or pass --no-rest to route gRPC only",
                upstream.service
            )),
        }
    }
    let mut owners: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for upstream in upstreams.iter() {
        for route in upstream.rest.iter().flatten() {
            if let Some(other) = owners.insert(&route.path, &upstream.service)
                && other != upstream.service
            {
                problems.push(format!(
                    "{other} and {} both serve the REST path {}; change one's google.api.http rule",
                    upstream.service, route.path
                ));
            }
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

fn fingerprint(upstreams: &[Upstream]) -> Vec<BTreeSet<String>> {
    upstreams.iter().map(|u| u.endpoints.iter().cloned().collect()).collect()
}

fn emit(args: &NginxArgs, upstreams: &[Upstream]) -> Result<(), Error> {
    let listen = Listen { grpc: &args.listen, rest: &args.rest_listen };
    let mut text = render_with(upstreams, listen, args.max_fails, args.fail_timeout);
    if args.full {
        text = full_config(&text);
    }
    match &args.output {
        Some(path) => {
            crate::manifest::write_file(path, &text)?;
            let count: usize = upstreams.iter().map(|u| u.endpoints.len()).sum();
            eprintln!(
                "trellis: wrote {} ({count} instance(s) of {} service(s))",
                path.display(),
                upstreams.len()
            );
            Ok(())
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

async fn reload(command: &str) {
    match tokio::process::Command::new("sh").arg("-c").arg(command).status().await {
        Ok(status) if status.success() => eprintln!("trellis: reloaded nginx ({command})"),
        Ok(status) => eprintln!("trellis: `{command}` failed ({status}); nginx keeps its old configuration"),
        Err(e) => eprintln!("trellis: cannot run `{command}`: {e}"),
    }
}

/// Where Nginx listens: gRPC over HTTP/2 and REST over HTTP/1.1 (a
/// plaintext Nginx listener speaks one or the other).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listen<'a> {
    pub(crate) grpc: &'a str,
    pub(crate) rest: &'a str,
}

/// The part of the configuration for an `http` block, with default passive health.
pub(crate) fn render(upstreams: &[Upstream], listen: Listen<'_>) -> String {
    render_with(upstreams, listen, 1, 10)
}

fn render_with(upstreams: &[Upstream], listen: Listen<'_>, max_fails: u32, fail_timeout: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Rendered by `trellis nginx`; passive health: an instance that fails {max_fails} time(s)"
    );
    let _ = writeln!(out, "# is passed over for {fail_timeout}s, and the call goes to the next one.");
    let upstream_block = |out: &mut String, name: &str, upstream: &Upstream| {
        let _ = writeln!(out, "upstream {name} {{");
        if upstream.endpoints.is_empty() {
            let _ = writeln!(out, "    # no instances yet: calls fail with 502 until some register");
            let _ = writeln!(out, "    server 127.0.0.1:9 down;");
        }
        for endpoint in &upstream.endpoints {
            let _ =
                writeln!(out, "    server {endpoint} max_fails={max_fails} fail_timeout={fail_timeout}s;");
        }
        let _ = writeln!(out, "    keepalive 16;");
        let _ = writeln!(out, "}}");
    };
    for upstream in upstreams {
        upstream_block(&mut out, &upstream_name(&upstream.service), upstream);
    }
    // REST upstreams of their own: the idle HTTP/1.1 connections Nginx keeps
    // must not be handed to grpc_pass, nor its HTTP/2 ones to proxy_pass.
    let with_rest: Vec<&Upstream> =
        upstreams.iter().filter(|u| u.rest.as_ref().is_some_and(|r| !r.is_empty())).collect();
    for upstream in &with_rest {
        upstream_block(&mut out, &format!("rest_{}", upstream_name(&upstream.service)), upstream);
    }
    let _ = writeln!(out, "server {{");
    let _ = writeln!(out, "    listen {} http2;", listen.grpc);
    let _ = writeln!(out, "    # gRPC calls can be long (server streams); let the deadlines decide.");
    let _ = writeln!(out, "    grpc_read_timeout 1h;");
    let _ = writeln!(out, "    grpc_send_timeout 1h;");
    let _ = writeln!(out, "    client_max_body_size 0;");
    for upstream in upstreams {
        let _ = writeln!(out, "    location ^~ /{}/ {{", upstream.service);
        let _ = writeln!(out, "        grpc_pass grpc://{};", upstream_name(&upstream.service));
        let _ =
            writeln!(out, "        # Connection errors and timeouts go to the next instance (never a call");
        let _ = writeln!(
            out,
            "        # that reached a handler: gRPC calls are POSTs, which Nginx does not repeat)."
        );
        let _ = writeln!(out, "        grpc_next_upstream error timeout;");
        let _ = writeln!(out, "        grpc_next_upstream_tries 3;");
        let _ = writeln!(out, "    }}");
    }
    let _ = writeln!(out, "}}");
    if with_rest.is_empty() {
        return out;
    }
    let _ = writeln!(out, "server {{");
    let _ = writeln!(
        out,
        "    # REST/JSON (google.api.http routes), HTTP/1.1: each route to the service that serves it."
    );
    let _ = writeln!(out, "    listen {};", listen.rest);
    let _ = writeln!(out, "    client_max_body_size 4m;");
    for upstream in &with_rest {
        for route in upstream.rest.iter().flatten() {
            let _ = writeln!(out, "    # {} {}: {}", route.methods.join(" "), route.path, upstream.service);
            let _ = writeln!(out, "    location ~ \"{}\" {{", route.regex);
            let _ = writeln!(out, "        proxy_pass http://rest_{};", upstream_name(&upstream.service));
            let _ = writeln!(out, "        proxy_http_version 1.1;");
            let _ = writeln!(out, "        proxy_set_header Connection \"\";");
            let _ = writeln!(out, "        proxy_set_header Host $host;");
            let _ = writeln!(
                out,
                "        # Server streams answer line by line, as long as their deadline allows."
            );
            let _ = writeln!(out, "        proxy_buffering off;");
            let _ = writeln!(out, "        proxy_read_timeout 1h;");
            let _ = writeln!(
                out,
                "        # Only connection errors go to the next instance: a POST that reached one is not repeated."
            );
            let _ = writeln!(out, "        proxy_next_upstream error timeout;");
            let _ = writeln!(out, "    }}");
        }
    }
    let _ = writeln!(out, "}}");
    out
}

/// A whole nginx.conf around `http`, every path relative to the prefix
/// (`nginx -p DIR -c nginx.conf`).
fn full_config(http: &str) -> String {
    let indented: String =
        http.lines().map(|l| if l.is_empty() { "\n".to_owned() } else { format!("    {l}\n") }).collect();
    format!(
        "# A whole nginx.conf: run `nginx -p DIR -c nginx.conf -e stderr -g 'daemon off;'`; paths are relative to DIR.\n\
         worker_processes 1;\n\
         pid nginx.pid;\n\
         error_log error.log warn;\n\
         events {{\n    worker_connections 1024;\n}}\n\
         http {{\n    log_format trellis '$remote_addr [$time_local] \"$request\" $status $request_time \
         upstream=$upstream_addr upstream_status=$upstream_status';\n    access_log access.log trellis;\n    client_body_temp_path client_body_temp;\n    proxy_temp_path proxy_temp;\n    \
         fastcgi_temp_path fastcgi_temp;\n    uwsgi_temp_path uwsgi_temp;\n    scgi_temp_path scgi_temp;\n{indented}}}\n"
    )
}

fn upstream_name(service: &str) -> String {
    service.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

fn check_service(service: &str) -> Result<(), Error> {
    let ok = service.contains('.')
        && service
            .split('.')
            .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "`{service}` is not a full gRPC service name; give PACKAGE.SERVICE, such as greeter.v1.Greeter"
        )))
    }
}

fn check_listen(flag: &str, listen: &str) -> Result<(), Error> {
    let port = listen.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok());
    match port {
        Some(port) if port != 0 => Ok(()),
        _ => Err(Error::usage(format!(
            "{flag} `{listen}` is not HOST:PORT with a fixed port, such as 127.0.0.1:8080"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_upstream_and_location_per_service() {
        let upstreams = [
            Upstream {
                service: "a.v1.A".into(),
                endpoints: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
                rest: Some(vec![RestRoute {
                    regex: "^/v1/as/[^/]+$".into(),
                    methods: vec!["GET".into()],
                    path: "/v1/as/{id}".into(),
                }]),
            },
            Upstream { service: "b.v1.B".into(), endpoints: vec![], rest: None },
        ];
        let text = render(&upstreams, Listen { grpc: "127.0.0.1:8080", rest: "127.0.0.1:8081" });
        assert!(text.contains(
            "upstream a_v1_A {\n    server 127.0.0.1:1 max_fails=1 fail_timeout=10s;\n    server 127.0.0.1:2"
        ));
        assert!(text.contains("location ^~ /a.v1.A/ {\n        grpc_pass grpc://a_v1_A;"));
        assert!(text.contains("upstream rest_a_v1_A {\n    server 127.0.0.1:1"), "{text}");
        assert!(text.contains("listen 127.0.0.1:8081;"), "{text}");
        assert!(text.contains("    # GET /v1/as/{id}: a.v1.A\n    location ~ \"^/v1/as/[^/]+$\" {\n        proxy_pass http://rest_a_v1_A;"), "{text}");
        assert!(!text.contains("rest_b_v1_B"), "no REST block for a service without routes: {text}");
        assert!(text.contains("server 127.0.0.1:9 down;"), "an empty upstream is still valid");
        assert!(text.contains("listen 127.0.0.1:8080 http2;"));
        assert!(check_service("Greeter").is_err());
        assert!(check_listen("--listen", "127.0.0.1:0").is_err());
    }
}

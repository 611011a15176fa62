//! `trellis doctor`: checks a service crate, its config and its deployment
//! files, and prints each problem with its fix.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use trellis::codegen::prost::Message as _;
use trellis::codegen::prost_types::FileDescriptorSet;

use crate::deploy::DeployValues;
use crate::error::Error;

/// How long the registry may take to answer.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(3);

/// Arguments of `trellis doctor`.
#[derive(Debug, clap::Args)]
pub(crate) struct DoctorArgs {
    /// The service crate [default: .]
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// The config file to check [default: DIR/config.toml]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// One finding.
#[derive(Debug)]
struct Finding {
    check: &'static str,
    problem: Option<(String, String)>,
    ok: String,
}

impl Finding {
    fn ok(check: &'static str, ok: impl Into<String>) -> Self {
        Finding { check, problem: None, ok: ok.into() }
    }

    fn problem(check: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding { check, problem: Some((problem.into(), fix.into())), ok: String::new() }
    }
}

/// `trellis doctor`.
pub(crate) fn run(args: &DoctorArgs) -> Result<ExitCode, Error> {
    let dir = &args.dir;
    let cargo = dir.join("Cargo.toml");
    let manifest: toml::Table = std::fs::read_to_string(&cargo)
        .map_err(|e| {
            Error::usage(format!("{} is not a crate: cannot read {}: {e}", dir.display(), cargo.display()))
        })?
        .parse()
        .map_err(|e| Error::usage(format!("{} is not valid TOML: {e}", cargo.display())))?;
    let name = manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str)
        .ok_or_else(|| {
            Error::usage(format!(
                "{} has no [package] name: point doctor at a service crate",
                cargo.display()
            ))
        })?
        .to_owned();
    // The sections the service reads itself: `[package.metadata.trellis]
    // sections = [...]` when the crate lists them, else the one `trellis new`
    // writes, named after the crate.
    let listed: Option<Vec<String>> = manifest
        .get("package")
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("trellis"))
        .and_then(|t| t.get("sections"))
        .and_then(toml::Value::as_array)
        .map(|sections| sections.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect());
    let sections = listed.unwrap_or_else(|| vec![name.replace('-', "_")]);
    let mut findings = Vec::new();

    let services = match compile_protos(dir, None) {
        Ok(services) if services.is_empty() => {
            findings.push(Finding::problem(
                "protos",
                "no service is defined under proto/",
                "add one with `trellis add proto NAME`",
            ));
            Vec::new()
        }
        Ok(services) => {
            findings.push(Finding::ok("protos", format!("compile, policies valid: {}", services.join(", "))));
            services
        }
        Err(err) => {
            findings.push(Finding::problem("protos", err.to_string(), "fix the proto at the line named"));
            Vec::new()
        }
    };

    let config_path = args.config.clone().unwrap_or_else(|| dir.join("config.toml"));
    let config_text = std::fs::read_to_string(&config_path).ok();
    let mut values = None;
    match &config_text {
        None => findings.push(Finding::problem(
            "config",
            format!("{} does not exist", config_path.display()),
            "pass the service's config file with --config",
        )),
        Some(text) => {
            let own: Vec<&str> = sections.iter().map(String::as_str).collect();
            match trellis::config::check_file(&config_path, &own) {
                Ok(()) => findings
                    .push(Finding::ok("config keys", format!("all known in {}", config_path.display()))),
                Err(problem) => findings.push(Finding::problem(
                    "config keys",
                    format!("{}: {problem}", config_path.display()),
                    "correct the key, or move the service's own settings under its section",
                )),
            }
            match DeployValues::from_config(&config_path, text) {
                Ok(v) => values = Some(v),
                Err(err) => {
                    findings.push(Finding::problem("config values", err.to_string(), "see the message"))
                }
            }
            let table: toml::Table = text.parse().unwrap_or_default();
            let registry =
                table.get("registry").and_then(toml::Value::as_str).unwrap_or("local://").to_owned();
            findings.push(check_registry(&registry, services.first().map(String::as_str)));
            if let Some(listen) = table.get("listen").and_then(toml::Value::as_str) {
                findings.push(check_listen(listen));
            }
        }
    }

    if let (Some(values), Some(config_text)) = (&values, &config_text) {
        findings.extend(check_dockerfile(dir, &name, values));
        findings.extend(check_kubernetes(dir, values, &services, config_text));
    }

    let mut problems = 0;
    println!("trellis doctor: {name} ({})", dir.display());
    for finding in &findings {
        match &finding.problem {
            None => println!("  ok       {:<14} {}", finding.check, finding.ok),
            Some((problem, fix)) => {
                problems += 1;
                println!("  PROBLEM  {:<14} {problem}", finding.check);
                println!("           {:<14} fix: {fix}", "");
            }
        }
    }
    if problems == 0 {
        println!("no problems");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{problems} problem(s)");
        Ok(ExitCode::FAILURE)
    }
}

/// Compiles the protos under `dir/proto` (plus `extra`, a path and text
/// about to be added) as the crate's build would, and returns the full
/// names of the services they define (gRPC's own excepted).
pub(crate) fn compile_protos(dir: &Path, extra: Option<(&str, &str)>) -> Result<Vec<String>, Error> {
    let scratch =
        tempfile::tempdir().map_err(|e| Error::msg(format!("cannot make a temporary folder: {e}")))?;
    let proto_dir = if let Some((path, text)) = extra {
        // A copy of proto/ with the new file in it.
        let copy = scratch.path().join("proto");
        copy_dir(&dir.join("proto"), &copy)?;
        let target = scratch.path().join(path);
        crate::manifest::write_file(&target, text)?;
        copy
    } else {
        dir.join("proto")
    };
    let mut protos = Vec::new();
    find_protos(&proto_dir, &mut protos)?;
    if protos.is_empty() {
        return Ok(Vec::new());
    }
    protos.sort();
    let out = scratch.path().join("out");
    trellis_build::configure()
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .compile(&protos, &[&proto_dir])
        .map_err(|e| Error::msg(e.to_string()))?;
    let bytes = std::fs::read(out.join(trellis_build::DESCRIPTOR_SET_FILE))
        .map_err(|e| Error::msg(format!("trellis-build wrote no descriptor set: {e}")))?;
    let set = FileDescriptorSet::decode(bytes.as_slice())
        .map_err(|e| Error::msg(format!("cannot read the descriptor set: {e}")))?;
    let mut services = Vec::new();
    for file in &set.file {
        let package = file.package();
        if package.starts_with("grpc.") || package == "trellis" || package.starts_with("google.") {
            continue;
        }
        for service in &file.service {
            services.push(format!("{package}.{}", service.name()));
        }
    }
    services.sort();
    services.dedup();
    Ok(services)
}

fn find_protos(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read", dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| Error::io("read", dir, e))?.path();
        if path.is_dir() {
            find_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(to).map_err(|e| Error::io("create", to, e))?;
    let Ok(entries) = std::fs::read_dir(from) else { return Ok(()) };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            std::fs::copy(&path, &target).map_err(|e| Error::io("copy", &path, e))?;
        }
    }
    Ok(())
}

fn check_registry(url: &str, service: Option<&str>) -> Finding {
    let registry = match trellis::Registry::from_url(url) {
        Ok(registry) => registry,
        Err(err) => {
            return Finding::problem(
                "registry",
                err.to_string(),
                "set `registry` to a URL the service can use",
            );
        }
    };
    let service = service.unwrap_or("grpc.health.v1.Health").to_owned();
    let answer = crate::runtime().and_then(|rt| {
        rt.block_on(async {
            match tokio::time::timeout(REGISTRY_TIMEOUT, registry.resolve(&service)).await {
                Ok(Ok(resolution)) => Ok(resolution.endpoints().len()),
                Ok(Err(err)) => Err(Error::msg(err.to_string())),
                Err(_) => Err(Error::msg(format!("no answer within {REGISTRY_TIMEOUT:?}"))),
            }
        })
    });
    match answer {
        Ok(n) => Finding::ok("registry", format!("{url} answers ({n} instance(s) of {service} now)")),
        Err(err) => Finding::problem(
            "registry",
            format!("{url} cannot be reached: {err}"),
            "start the registry, or point `registry` (or TRELLIS_REGISTRY) at one that runs",
        ),
    }
}

fn check_listen(listen: &str) -> Finding {
    let Ok(addr) = listen.parse::<std::net::SocketAddr>() else {
        return Finding::problem(
            "listen",
            format!("`{listen}` is not HOST:PORT"),
            "write it as \"0.0.0.0:50051\"",
        );
    };
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Finding::ok("listen", format!("{addr} is free")),
        Err(err) => Finding::problem(
            "listen",
            format!("cannot listen on {addr}: {err}"),
            "stop what listens there (`ss -ltnp`), or change `listen`",
        ),
    }
}

fn check_dockerfile(dir: &Path, name: &str, values: &DeployValues) -> Vec<Finding> {
    let path = dir.join("Dockerfile");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return vec![Finding::problem(
            "Dockerfile",
            "there is no Dockerfile",
            "restore it with `trellis upgrade`",
        )];
    };
    let mut findings = Vec::new();
    let exposed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .collect();
    let port = values.port.to_string();
    if exposed.iter().any(|p| p.trim_end_matches("/tcp") == port) {
        findings.push(Finding::ok("Dockerfile", format!("EXPOSE {port} as config.toml listens")));
    } else {
        findings.push(Finding::problem(
            "Dockerfile",
            format!("EXPOSE {} but config.toml listens on port {port}", exposed.join(" ")),
            format!("write `EXPOSE {port}`"),
        ));
    }
    let healthcheck =
        text.lines().skip_while(|l| !l.trim_start().starts_with("HEALTHCHECK")).take(3).collect::<String>();
    if !healthcheck.contains("health") || !healthcheck.contains(&format!(":{port}")) {
        findings.push(Finding::problem(
            "Dockerfile",
            format!("the HEALTHCHECK does not ask `{name} health` on port {port}"),
            format!("use HEALTHCHECK CMD [\"/usr/local/bin/{name}\", \"health\", \"--addr\", \"127.0.0.1:{port}\"]"),
        ));
    }
    findings
}

fn check_kubernetes(dir: &Path, values: &DeployValues, services: &[String], config: &str) -> Vec<Finding> {
    use serde::Deserialize as _;
    let path = dir.join("deploy/kubernetes.yaml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return vec![Finding::problem(
            "kubernetes",
            "deploy/kubernetes.yaml is missing",
            "restore it with `trellis upgrade`",
        )];
    };
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        match serde_norway::Value::deserialize(doc) {
            Ok(value) => docs.push(value),
            Err(err) => {
                return vec![Finding::problem(
                    "kubernetes",
                    format!("deploy/kubernetes.yaml is not valid YAML: {err}"),
                    "fix the YAML at the line named",
                )];
            }
        }
    }
    let kind = |k: &str| docs.iter().find(|d| d["kind"].as_str() == Some(k));
    let mut findings = Vec::new();
    let port = u64::from(values.port);
    let Some(deployment) = kind("Deployment") else {
        return vec![Finding::problem(
            "kubernetes",
            "no Deployment in deploy/kubernetes.yaml",
            "restore it with `trellis upgrade`",
        )];
    };
    let pod = &deployment["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    if grace > values.shutdown_secs() {
        findings.push(Finding::ok(
            "kubernetes",
            format!("terminationGracePeriodSeconds {grace} > shutdown {}s", values.shutdown_secs()),
        ));
    } else {
        findings.push(Finding::problem(
            "kubernetes",
            format!(
                "terminationGracePeriodSeconds is {grace}, but shutdown.propagation_delay + shutdown.drain_timeout \
                 take {}s: Kubernetes would kill the pod while it drains",
                values.shutdown_secs()
            ),
            format!("set terminationGracePeriodSeconds: {}", values.grace_secs()),
        ));
    }
    let container = &pod["containers"][0];
    let container_port = container["ports"][0]["containerPort"].as_u64();
    if container_port != Some(port) {
        findings.push(Finding::problem(
            "kubernetes",
            format!("containerPort is {container_port:?}, but config.toml listens on {port}"),
            format!("set containerPort: {port}"),
        ));
    }
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let grpc = &container[probe]["grpc"];
        if grpc.is_null() {
            findings.push(Finding::problem(
                "kubernetes",
                format!("{probe} is not a gRPC probe"),
                "give it `grpc: {port: ...}`",
            ));
            continue;
        }
        if grpc["port"].as_u64() != Some(port) {
            findings.push(Finding::problem(
                "kubernetes",
                format!("{probe} probes port {:?}, but config.toml listens on {port}", grpc["port"].as_u64()),
                format!("set {probe}.grpc.port: {port}"),
            ));
        }
    }
    let ready = container["readinessProbe"]["grpc"]["service"].as_str().unwrap_or("");
    if !services.is_empty() && !services.iter().any(|s| s == ready) {
        findings.push(Finding::problem(
            "kubernetes",
            format!("readinessProbe asks for service `{ready}`, which the protos do not define"),
            format!("set readinessProbe.grpc.service: \"{}\"", services[0]),
        ));
    }
    match kind("ConfigMap").and_then(|c| c["data"]["config.toml"].as_str()) {
        Some(held) if held.trim_end() == config.trim_end() => {
            findings.push(Finding::ok("kubernetes", "the ConfigMap holds config.toml as it is"));
        }
        Some(_) => findings.push(Finding::problem(
            "kubernetes",
            "the ConfigMap's config.toml differs from config.toml",
            "copy config.toml into the ConfigMap (trellis upgrade does it if you have not edited the manifests)",
        )),
        None => findings.push(Finding::problem("kubernetes", "no ConfigMap with config.toml", "restore it with `trellis upgrade`")),
    }
    findings
}

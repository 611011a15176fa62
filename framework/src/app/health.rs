//! `NAME health [--addr HOST:PORT] [--service NAME] [--timeout SECONDS]`:
//! every service binary asks a running server over gRPC
//! (`grpc.health.v1.Health/Check`) whether it is `SERVING`, so a container's
//! `HEALTHCHECK` needs no downloaded probe tool. Exit status 0 if it is, 1
//! if it is not or cannot be asked, 2 for bad usage.
//!
//! Without `--addr` it asks the address the configuration says the server
//! listens on (`listen`, from the same `--config`, `TRELLIS_*` and flags
//! given before `health`), on loopback when that is every interface, over
//! TLS when `[tls]` makes the server serve TLS.

use std::process::ExitCode;
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::args::Health;
use crate::config::Config;
use crate::registry::{Endpoint, Scheme};

/// Runs `NAME health` with its flags and the loaded `config`.
pub(super) fn run(name: &str, config: &Config, health: &Health) -> ExitCode {
    let check = match Check::from(config, health) {
        Ok(check) => check,
        Err(message) => {
            eprintln!("{name} health: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{name} health: cannot start the Tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let what = if check.service.is_empty() { "the server".to_owned() } else { check.service.clone() };
    match runtime.block_on(check.ask(config)) {
        Ok(ServingStatus::Serving) => {
            println!("{}: {what} is SERVING", check.endpoint);
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("{}: {what} is {}", check.endpoint, status.as_str_name());
            ExitCode::FAILURE
        }
        Err(message) => {
            eprintln!("{name} health: {}: {message}", check.endpoint);
            ExitCode::FAILURE
        }
    }
}

/// What to ask, and whom.
#[derive(Debug)]
struct Check {
    endpoint: Endpoint,
    service: String,
    timeout: Duration,
}

impl Check {
    fn from(config: &Config, health: &Health) -> Result<Check, String> {
        let raw = &health.timeout;
        let timeout = raw
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(Err(format!("--timeout `{raw}` is not a positive number of seconds")), |s| {
                Ok(Duration::from_secs_f64(s))
            })?;
        let endpoint = match &health.addr {
            Some(addr) => parse_addr(addr)?,
            None => {
                let listen = config.listen;
                if listen.port() == 0 {
                    return Err(format!(
                        "no address to ask: `listen` is {listen}, a port picked when the server starts; \
                         pass --addr HOST:PORT, or set listen (--listen, TRELLIS_LISTEN, --config) as the server has it"
                    ));
                }
                let ip = match listen.ip() {
                    std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
                    ip => ip,
                };
                Endpoint::from(std::net::SocketAddr::new(ip, listen.port()))
            }
        };
        let scheme = if config.tls.serves_tls() { Scheme::Https } else { Scheme::Http };
        Ok(Check { endpoint: endpoint.with_scheme(scheme), service: health.service.clone(), timeout })
    }

    async fn ask(&self, config: &Config) -> Result<ServingStatus, String> {
        let tls = config.tls.is_set().then_some(&config.tls);
        let channel = crate::transport::Connection::new(&self.endpoint, tls).map_err(|e| e.to_string())?;
        let mut client = HealthClient::new(channel);
        let request = HealthCheckRequest { service: self.service.clone() };
        let answer = tokio::time::timeout(self.timeout, client.check(request))
            .await
            .map_err(|_| format!("no answer within {:?}; is the server running there?", self.timeout))?;
        match answer {
            Ok(reply) => Ok(reply.into_inner().status()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(ServingStatus::ServiceUnknown),
            Err(status) => Err(format!("cannot ask: {}; is the server running there?", status.message())),
        }
    }
}

/// `HOST:PORT`, with an IPv6 host in brackets.
fn parse_addr(addr: &str) -> Result<Endpoint, String> {
    let bad = || format!("--addr `{addr}` is not HOST:PORT, such as 127.0.0.1:50051");
    if let Ok(socket) = addr.parse::<std::net::SocketAddr>() {
        return Ok(Endpoint::from(socket));
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || host.contains(['/', ' ', '[', ']']) {
        return Err(bad());
    }
    Ok(Endpoint::new(host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_host_and_port() {
        assert_eq!(parse_addr("127.0.0.1:50051").unwrap(), Endpoint::new("127.0.0.1", 50051));
        assert_eq!(parse_addr("[::1]:7").unwrap(), Endpoint::new("::1", 7));
        assert_eq!(parse_addr("svc.local:8080").unwrap(), Endpoint::new("svc.local", 8080));
        for bad in ["", "nohost", ":80", "host:port", "host:99999", "a b:1"] {
            let err = parse_addr(bad).unwrap_err();
            assert!(err.contains("HOST:PORT"), "{bad}: {err}");
        }
    }
}

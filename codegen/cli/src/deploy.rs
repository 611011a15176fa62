//! The deployment values derived from a service's config file: the port
//! containers expose and probe, and the grace period Kubernetes must allow
//! for the shutdown the config asks for.

use std::path::Path;
use std::time::Duration;

use crate::error::Error;

/// Seconds added to `propagation_delay + drain_timeout` for the process to
/// exit after draining.
pub(crate) const GRACE_MARGIN_SECS: u64 = 5;

/// What the deployment files take from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeployValues {
    pub(crate) port: u16,
    pub(crate) propagation_delay: Duration,
    pub(crate) drain_timeout: Duration,
}

impl DeployValues {
    /// The values of the config file `text` (read from `path`, for messages).
    pub(crate) fn from_config(path: &Path, text: &str) -> Result<Self, Error> {
        let table: toml::Table =
            text.parse().map_err(|e| Error::usage(format!("{} is not valid TOML: {e}", path.display())))?;
        let listen = match table.get("listen") {
            None => "127.0.0.1:0",
            Some(toml::Value::String(listen)) => listen.as_str(),
            Some(other) => {
                return Err(Error::usage(format!(
                    "{}: `listen` is {}, not a string; write it as listen = \"0.0.0.0:50051\"",
                    path.display(),
                    other.type_str()
                )));
            }
        };
        let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
            Error::usage(format!(
                "{}: `listen = \"{listen}\"` is not HOST:PORT with an IP address, such as \"0.0.0.0:50051\"",
                path.display()
            ))
        })?;
        if addr.port() == 0 {
            return Err(Error::usage(format!(
                "{}: `listen = \"{listen}\"` picks a free port at random, which containers cannot expose or \
                 probe; set a fixed port, such as listen = \"0.0.0.0:50051\"",
                path.display()
            )));
        }
        let shutdown = table.get("shutdown").and_then(toml::Value::as_table);
        let duration = |key: &str, default: Duration| -> Result<Duration, Error> {
            match shutdown.and_then(|s| s.get(key)) {
                None => Ok(default),
                Some(toml::Value::String(raw)) => humantime::parse_duration(raw).map_err(|e| {
                    Error::usage(format!(
                        "{}: `shutdown.{key} = \"{raw}\"`: {e}; write a duration such as \"10s\" or \"500ms\"",
                        path.display()
                    ))
                }),
                Some(_) => Err(Error::usage(format!(
                    "{}: `shutdown.{key}` must be a duration string, such as \"10s\"",
                    path.display()
                ))),
            }
        };
        Ok(DeployValues {
            port: addr.port(),
            propagation_delay: duration("propagation_delay", Duration::from_secs(1))?,
            drain_timeout: duration("drain_timeout", Duration::from_secs(10))?,
        })
    }

    /// What `terminationGracePeriodSeconds` must be at least: the shutdown
    /// the config asks for, rounded up to seconds.
    pub(crate) fn shutdown_secs(&self) -> u64 {
        (self.propagation_delay + self.drain_timeout).as_secs_f64().ceil() as u64
    }

    /// `terminationGracePeriodSeconds`: the shutdown plus a margin.
    pub(crate) fn grace_secs(&self) -> u64 {
        self.shutdown_secs() + GRACE_MARGIN_SECS
    }
}

/// A duration as the config writes it (`1s`, `1500ms`).
pub(crate) fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_from_the_config() {
        let text = "listen = \"0.0.0.0:7000\"\n[shutdown]\npropagation_delay = \"2s\"\ndrain_timeout = \"30500ms\"\n";
        let values = DeployValues::from_config(Path::new("config.toml"), text).unwrap();
        assert_eq!(values.port, 7000);
        assert_eq!(values.shutdown_secs(), 33);
        assert_eq!(values.grace_secs(), 38);
        assert_eq!(format_duration(values.drain_timeout), "30s500ms");
    }

    #[test]
    fn a_random_port_cannot_be_deployed() {
        let err = DeployValues::from_config(Path::new("c.toml"), "").unwrap_err().to_string();
        assert!(err.contains("set a fixed port"), "{err}");
        let err = DeployValues::from_config(
            Path::new("c.toml"),
            "listen = \"0.0.0.0:1\"\n[shutdown]\ndrain_timeout = \"soon\"",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("shutdown.drain_timeout"), "{err}");
    }
}

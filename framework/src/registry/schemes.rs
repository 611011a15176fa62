//! The scheme table: which URL scheme opens which backend, and the form of
//! each scheme's URLs that error messages quote. The one module that names
//! every backend.

use std::sync::Arc;

use super::types::Backend;
use super::url::{Target, redact};
use crate::error::Error;

/// One kind of registry.
struct Kind {
    /// What comes before `://`.
    scheme: &'static str,
    /// Every accepted form, options included.
    form: &'static str,
    open: Open,
}

/// How a kind is opened in this build.
enum Open {
    /// By this constructor.
    #[allow(dead_code, reason = "unused when every optional backend is off")]
    With(fn(&Target<'_>) -> Result<Arc<dyn Backend>, Error>),
    /// Not at all: it needs this cargo feature of `trellis`.
    #[allow(dead_code, reason = "unused when every optional backend is on")]
    Needs(&'static str),
}

/// `Open::With(constructor)` when `feature` is on, `Open::Needs(feature)` otherwise.
macro_rules! gated {
    ($feature:literal, $backend:path) => {{
        #[cfg(feature = $feature)]
        let open = Open::With(|target| Ok(Arc::new(<$backend>::parse(target)?)));
        #[cfg(not(feature = $feature))]
        let open = Open::Needs($feature);
        open
    }};
}

/// Every kind, in the order error messages list them.
fn kinds() -> [Kind; 6] {
    [
        Kind {
            scheme: "local",
            form: "local://[DIR][?ttl=3s&poll=100ms]",
            open: Open::With(|target| Ok(Arc::new(super::local::Local::parse(target)?))),
        },
        Kind {
            scheme: "etcd",
            form: "etcd://HOST:PORT[,HOST:PORT...][?ttl=3s&prefix=/trellis]",
            open: gated!("etcd", super::etcd::Etcd),
        },
        Kind {
            scheme: "consul",
            form: "consul://HOST:PORT[?ttl=10s&check=ttl|grpc&deregister_after=1m&interval=200ms&wait=30s&token=...]",
            open: gated!("consul", super::consul::Consul),
        },
        Kind {
            scheme: "eureka",
            form: "eureka://HOST:PORT/PATH[?ttl=30s&interval=5s], PATH such as /eureka or /eureka/v2",
            open: gated!("eureka", super::eureka::Eureka),
        },
        Kind {
            scheme: "dns",
            form: "dns://[SERVER:PORT/]NAME[:PORT][?interval=5s]",
            // NAME:PORT in every build; SRV names and servers of its own need the `dns` feature.
            open: Open::With(|target| Ok(Arc::new(super::dns::Dns::parse(target)?))),
        },
        Kind {
            scheme: "static",
            form: "static://SERVICE=HOST:PORT[,HOST:PORT...][;SERVICE=...]",
            open: Open::With(|target| Ok(Arc::new(super::fixed::Fixed::parse(target)?))),
        },
    ]
}

/// Every accepted form, for errors about a URL whose scheme is unknown.
fn expected() -> String {
    let forms: Vec<_> = kinds().iter().map(|kind| kind.form).collect();
    format!("expected one of {}", forms.join(", "))
}

/// Opens the backend `url` names, without contacting it.
pub(super) fn open(url: &str) -> Result<Arc<dyn Backend>, Error> {
    let shown = redact(url);
    let err = |reason: String| Error::Registry { url: shown.clone().into_owned(), reason };
    let (scheme, rest) =
        url.split_once("://").ok_or_else(|| err(format!("not a URL (no `scheme://`); {}", expected())))?;
    let kinds = kinds();
    let kind = kinds
        .iter()
        .find(|kind| kind.scheme == scheme)
        .ok_or_else(|| err(format!("unknown registry scheme `{scheme}`; {}", expected())))?;
    match kind.open {
        Open::With(open) => open(&Target { url: &shown, rest, form: kind.form }),
        Open::Needs(feature) => Err(err(format!(
            "{scheme}:// needs the `{feature}` cargo feature of trellis, which is off in this build; \
             enable it: trellis = {{ version = \"0.1\", features = [\"{feature}\"] }}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_malformed_urls_say_what_is_expected() {
        for (url, needle) in [
            ("zookeeper://x:1", "unknown registry scheme `zookeeper`"),
            ("127.0.0.1:5", "no `scheme://`"),
            ("", "no `scheme://`"),
        ] {
            let msg = open(url).unwrap_err().to_string();
            for kind in kinds() {
                assert!(msg.contains(kind.form), "{url}: {msg} lacks {}", kind.form);
            }
            assert!(msg.contains(needle) && msg.contains(url), "{url}: {msg}");
        }
    }

    #[test]
    fn every_scheme_opens_or_names_its_feature() {
        for (url, feature, on) in [
            ("etcd://127.0.0.1:2379", "etcd", cfg!(feature = "etcd")),
            ("consul://127.0.0.1:8500", "consul", cfg!(feature = "consul")),
            ("eureka://127.0.0.1:8761/eureka", "eureka", cfg!(feature = "eureka")),
            ("dns://127.0.0.1:53/a.example:1", "dns", cfg!(feature = "dns")),
        ] {
            match open(url) {
                Ok(_) => assert!(on, "{url} opened without the `{feature}` feature"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(!on, "{url}: {msg}");
                    assert!(
                        msg.contains(url) && msg.contains(&format!("`{feature}` cargo feature")),
                        "{msg}"
                    );
                }
            }
        }
        assert!(open("local://").is_ok() && open("static://").is_ok());
    }

    #[test]
    fn a_backend_error_quotes_its_scheme_form_and_hides_secrets() {
        let msg = open("local:///tmp?color=red&token=hunter2").unwrap_err().to_string();
        assert!(msg.contains("local://[DIR][?ttl=3s&poll=100ms]"), "{msg}");
        assert!(msg.contains("token=REDACTED") && !msg.contains("hunter2"), "{msg}");
    }
}

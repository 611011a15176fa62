//! Reading registry URLs: the parts every backend's URL shares. A leaf: it
//! names no backend (the scheme table in `schemes.rs` does).

use super::types::Endpoint;
use crate::error::Error;

/// A registry URL handed to the backend its scheme names.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target<'a> {
    /// The whole URL as it may be shown: secrets replaced (see [`redact`]).
    pub(super) url: &'a str,
    /// What follows `scheme://`, secrets included.
    pub(super) rest: &'a str,
    /// The accepted form of this scheme's URLs, such as
    /// `etcd://HOST:PORT[,HOST:PORT...]`, for error messages.
    pub(super) form: &'static str,
}

impl Target<'_> {
    /// An error about this URL: `reason`, then what is expected.
    pub(super) fn error(&self, reason: impl std::fmt::Display) -> Error {
        Error::Registry { url: self.url.to_owned(), reason: format!("{reason}; expected {}", self.form) }
    }

    /// The part before `?` and the `key=value` query pairs.
    pub(super) fn query(&self) -> (&str, Vec<(&str, &str)>) {
        query(self.rest)
    }
}

/// Query keys whose values are secrets, never shown.
const SECRETS: &[&str] = &["token", "password", "secret"];

/// A registry URL as the configuration holds it: shown (`Debug`,
/// `Display`) with its secrets replaced by `REDACTED`, the password of a
/// `user:password@` and every `token=`, `password=` or `secret=` value.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct RegistryUrl(String);

impl RegistryUrl {
    /// The URL itself, secrets included, to open the registry with.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for RegistryUrl {
    fn from(url: &str) -> Self {
        RegistryUrl(url.to_owned())
    }
}

impl From<String> for RegistryUrl {
    fn from(url: String) -> Self {
        RegistryUrl(url)
    }
}

impl std::fmt::Debug for RegistryUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*redact(&self.0), f)
    }
}

impl std::fmt::Display for RegistryUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

/// `url` with the password of its `user:password@` part and the value of
/// every secret query key (`token=...`) replaced by `REDACTED`, so the URL
/// can be logged and put in errors.
pub(crate) fn redact(url: &str) -> std::borrow::Cow<'_, str> {
    let userinfo = redact_userinfo(url);
    match redact_query(&userinfo) {
        std::borrow::Cow::Borrowed(_) => userinfo,
        std::borrow::Cow::Owned(owned) => owned.into(),
    }
}

/// `scheme://user:password@host` as `scheme://user:REDACTED@host`, in each
/// comma-separated address.
fn redact_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else { return url.into() };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if !authority.contains('@') {
        return url.into();
    }
    let hosts: Vec<String> = authority
        .split(',')
        .map(|host| match host.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:{}@{host}", crate::secret::REDACTED),
                None => format!("{}@{host}", crate::secret::REDACTED),
            },
            None => host.to_owned(),
        })
        .collect();
    format!("{scheme}://{}{tail}", hosts.join(",")).into()
}

fn redact_query(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((base, query)) = url.split_once('?') else { return url.into() };
    if !query
        .split('&')
        .any(|pair| SECRETS.iter().any(|k| pair.split_once('=').is_some_and(|(key, _)| key == *k)))
    {
        return url.into();
    }
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if SECRETS.contains(&key) => format!("{key}=REDACTED"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", pairs.join("&")).into()
}

/// Splits `rest` into its part before `?` and its `key=value` query pairs.
pub(super) fn query(rest: &str) -> (&str, Vec<(&str, &str)>) {
    match rest.split_once('?') {
        None => (rest, Vec::new()),
        Some((path, query)) => {
            let pairs =
                query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, "")));
            (path, pairs.collect())
        }
    }
}

/// Parses `HOST:PORT` (`[v6]:PORT` for IPv6).
pub(crate) fn parse_endpoint(addr: &str) -> Result<Endpoint, String> {
    // A `user:password@` part is never shown.
    let shown = match addr.rsplit_once('@') {
        Some((_, host)) => format!("{}@{host}", crate::secret::REDACTED),
        None => addr.to_owned(),
    };
    let bad =
        |why: &str| format!("`{shown}` is not HOST:PORT ({why}), such as 127.0.0.1:50051 or [::1]:50051");
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("port 0 cannot be connected to"));
    }
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6,
        None if host.contains(':') => return Err(bad("an IPv6 address needs brackets")),
        None => host,
    };
    if host.is_empty() || host.contains(['/', ' ', '[', ']', '?', '&', ';', ',']) {
        return Err(bad("bad host"));
    }
    Ok(Endpoint::new(host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_ipv6_and_reject_garbage() {
        assert_eq!(parse_endpoint("[::1]:5").unwrap().to_string(), "[::1]:5");
        assert_eq!(parse_endpoint("db.internal:80").unwrap().host(), "db.internal");
        for bad in ["x", "x:0", "x:70000", ":5", "a b:5", "::1", "::1:80"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_are_redacted_and_nothing_else() {
        assert_eq!(redact("consul://h:1?token=s3cret&wait=5s"), "consul://h:1?token=REDACTED&wait=5s");
        assert_eq!(redact("consul://h:1?dc=a&token=x"), "consul://h:1?dc=a&token=REDACTED");
        assert_eq!(redact("consul://h:1?tokens=x"), "consul://h:1?tokens=x");
        assert_eq!(redact("etcd://root:pa55@h:1,h:2"), "etcd://root:REDACTED@h:1,h:2");
        assert_eq!(
            redact("etcd://a:x@h:1,b:y@h:2?password=z"),
            "etcd://a:REDACTED@h:1,b:REDACTED@h:2?password=REDACTED"
        );
        assert_eq!(redact("etcd://tok@h:1/p?q=1"), "etcd://REDACTED@h:1/p?q=1");
        let url = RegistryUrl::from("consul://h:1?token=s3cret");
        assert_eq!(format!("{url} {url:?}"), "consul://h:1?token=REDACTED \"consul://h:1?token=REDACTED\"");
        assert_eq!(url.expose(), "consul://h:1?token=s3cret");
        assert_eq!(redact("local:///tmp/x"), "local:///tmp/x");
    }
}

//! Addresses to listen on, written `HOST:PORT`: the serde codec every
//! `listen` setting uses (`#[serde(with = "crate::listen")]`), so a bad one
//! is refused with examples of good ones.

use std::net::{SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Deserializer, Serializer};

pub(crate) fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(addr)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let raw = String::deserialize(d)?;
    if let Ok(addr) = raw.parse() {
        return Ok(addr);
    }
    raw.to_socket_addrs().ok().and_then(|mut addrs| addrs.next()).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "`{raw}` is not an address to listen on; expected HOST:PORT such as \
             127.0.0.1:50051, 0.0.0.0:8080 or [::]:0 (port 0 picks a free port)"
        ))
    })
}

/// The same, for an optional address (`admin.listen`, `rest.listen`).
pub(crate) mod optional {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => super::serialize(addr, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super")] SocketAddr);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(addr)| addr))
    }
}

//! Reading an admin listener: a plain HTTP GET, and the series of a
//! Prometheus text-format scrape.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` from `addr` over HTTP/1.0: the status code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let head = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.ok().flatten()
}

/// One scrape of `/metrics`.
#[derive(Debug, Clone)]
pub struct Scrape(pub String);

impl Scrape {
    /// Scrapes `addr`'s `/metrics`.
    ///
    /// # Panics
    ///
    /// If the admin listener does not answer 200.
    pub async fn of(addr: SocketAddr) -> Scrape {
        match get(addr, "/metrics").await {
            Some((200, body)) => Scrape(body),
            other => panic!("GET http://{addr}/metrics: {other:?}"),
        }
    }

    /// The sum of the series named `name` that have every label in
    /// `labels` (0 when there is none).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name, labels).iter().map(|(_, v)| v).sum()
    }

    /// The series named `name` with every label in `labels`: their label
    /// text and value.
    pub fn series(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(String, f64)> {
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (series_name, label_text) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                let labels: Vec<&str> = label_text.split(',').collect();
                (series_name == name && wanted.iter().all(|w| labels.contains(&w.as_str())))
                    .then(|| Some((label_text.to_owned(), value.parse().ok()?)))
                    .flatten()
            })
            .collect()
    }
}

//! `local://[DIR][?ttl=3s&poll=100ms]`: the embedded default registry.
//!
//! Instances on one machine find each other through a directory: each
//! registered instance is a small JSON file, `DIR/<service>/<id>.json`, whose
//! modification time is its heartbeat. The registering process touches it
//! every third of the TTL; readers scan the directory every `poll` and ignore
//! entries older than the TTL. So a clean shutdown (which deletes the file)
//! is seen within one poll, and a process killed with SIGKILL disappears
//! within the TTL. Files left by dead processes are removed by readers after
//! a minute. Nothing needs to run; the default directory is
//! `$TMPDIR/trellis-registry-<uid>`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::poll::{Pace, Source, follow, renew};
use super::types::{AbortOnDrop, Backend, BoxFuture, DEFAULT_TTL, Instance, Lease, Resolution, unreachable};
use super::url::Target;
use crate::error::Error;

/// How often readers scan the directory.
const DEFAULT_POLL: Duration = Duration::from_millis(100);

/// How long a stale entry stays before a reader deletes it.
const STALE_GRACE: Duration = Duration::from_secs(60);

/// The `local://` backend.
#[derive(Debug)]
pub(super) struct Local {
    url: String,
    dir: PathBuf,
    ttl: Duration,
    poll: Duration,
}

impl Local {
    pub(super) fn parse(target: &Target<'_>) -> Result<Self, Error> {
        let err = |reason: String| target.error(reason);
        let (path, pairs) = target.query();
        let mut local = Local {
            url: target.url.to_owned(),
            dir: if path.is_empty() { default_dir() } else { PathBuf::from(path) },
            ttl: DEFAULT_TTL,
            poll: DEFAULT_POLL,
        };
        for (key, value) in pairs {
            let duration = || {
                humantime::parse_duration(value).ok().filter(|d| !d.is_zero()).ok_or_else(|| {
                    err(format!("`{key}={value}`: expected a positive duration such as 3s or 100ms"))
                })
            };
            match key {
                "ttl" => local.ttl = duration()?,
                "poll" => local.poll = duration()?,
                _ => return Err(err(format!("unknown option `{key}`; local:// takes `ttl` and `poll`"))),
            }
        }
        Ok(local)
    }

    fn service_dir(&self, service: &str) -> PathBuf {
        self.dir.join(service)
    }
}

/// `$TMPDIR/trellis-registry-<uid>`: one per user, shared by their services.
fn default_dir() -> PathBuf {
    #[cfg(unix)]
    let owner = nix::unistd::Uid::effective().to_string();
    #[cfg(not(unix))]
    let owner = std::env::var("USERNAME").unwrap_or_else(|_| "default".to_owned());
    std::env::temp_dir().join(format!("trellis-registry-{owner}"))
}

/// Writes `contents` to `path` atomically: readers see the old file or the new one.
fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

/// Renews the entry at `path`: touches it, or writes it again if a reader
/// removed it while this process could not renew it.
fn heartbeat(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(file) => file.set_modified(SystemTime::now()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_atomic(path, contents),
        Err(e) => Err(e),
    }
}

/// What a scan found: the live instances, and the entries that could not
/// be read, with why.
type Scanned = (Vec<Instance>, Vec<(PathBuf, String)>);

/// The live instances in `dir`: entries renewed within `ttl`. Deletes entries
/// stale for longer than [`STALE_GRACE`].
fn scan(dir: &Path, ttl: Duration) -> std::io::Result<Scanned> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(e),
    };
    let now = SystemTime::now();
    let (mut instances, mut unreadable) = (Vec::new(), Vec::new());
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|ext| ext != "json") {
            continue;
        }
        // Entries vanish while we look: that is a deregistration, not an error.
        let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) else { continue };
        let age = now.duration_since(modified).unwrap_or_default();
        if age > ttl {
            if age > ttl + STALE_GRACE {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else { continue };
        match serde_json::from_slice::<Instance>(&bytes) {
            Ok(instance) => instances.push(instance),
            Err(e) => unreadable.push((path, e.to_string())),
        }
    }
    Ok((instances, unreadable))
}

/// A registration in a `local://` directory.
#[derive(Debug)]
struct LocalLease {
    path: PathBuf,
    _heartbeat: AbortOnDrop,
}

impl Lease for LocalLease {
    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        // Dropping stops the heartbeat and removes the entry.
        drop(self);
        Box::pin(async { Ok(()) })
    }
}

impl Drop for LocalLease {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), "cannot remove registry entry: {e}");
        }
    }
}

impl Backend for Local {
    fn register(&self, instance: Instance) -> BoxFuture<'_, Result<Box<dyn Lease>, Error>> {
        Box::pin(async move {
            let dir = self.service_dir(&instance.service);
            let path = dir.join(format!("{}.json", instance.id));
            let contents = serde_json::to_vec(&instance).map_err(|e| Error::Registry {
                url: self.url.clone(),
                reason: format!("cannot encode entry: {e}"),
            })?;
            let fix = "check that the directory is writable, or choose another with local://DIR";
            let written = {
                let (dir, path, contents) = (dir.clone(), path.clone(), contents.clone());
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dir)?;
                    write_atomic(&path, &contents)
                })
                .await
            };
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(unreachable(&self.url, format!("cannot write {}: {e}", path.display()), fix));
                }
                Err(e) => return Err(unreachable(&self.url, e, fix)),
            }
            let what = format!("renewing {} in {}", instance.service, self.url);
            let entry = path.clone();
            let heartbeat = renew(what, self.ttl / 3, move || {
                let (entry, contents) = (entry.clone(), contents.clone());
                async move {
                    match tokio::task::spawn_blocking(move || heartbeat(&entry, &contents)).await {
                        Ok(renewed) => renewed.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            });
            Ok(Box::new(LocalLease { path, _heartbeat: heartbeat }) as Box<dyn Lease>)
        })
    }

    fn resolve(&self, service: &str) -> BoxFuture<'_, Result<Resolution, Error>> {
        let source = Scan { dir: self.service_dir(service), ttl: self.ttl, warned: HashSet::new() };
        let (service, what) = (service.to_owned(), format!("resolving {service} in {}", self.url));
        Box::pin(async move {
            let dir = source.dir.clone();
            follow(service, what, Pace::every(self.poll), source).await.map_err(|e| {
                unreachable(&self.url, format!("cannot read {}: {e}", dir.display()), "check the directory")
            })
        })
    }
}

/// The live entries of one service's directory.
#[derive(Debug)]
struct Scan {
    dir: PathBuf,
    ttl: Duration,
    /// Unreadable entries already warned about.
    warned: HashSet<PathBuf>,
}

impl Source for Scan {
    type Error = String;

    async fn fetch(&mut self) -> Result<Option<Vec<Instance>>, String> {
        let (dir, ttl) = (self.dir.clone(), self.ttl);
        match tokio::task::spawn_blocking(move || scan(&dir, ttl)).await {
            Ok(Ok((instances, unreadable))) => {
                for (path, why) in unreadable {
                    if !self.warned.contains(&path) {
                        tracing::warn!(path = %path.display(), "skipping a registry entry that cannot be read: {why}");
                        self.warned.insert(path);
                    }
                }
                Ok(Some(instances))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::types::{Endpoint, Metadata};

    fn parse(url: &str) -> Result<Local, Error> {
        Local::parse(&Target { url, rest: &url["local://".len()..], form: "local://[DIR]" })
    }

    fn local(dir: &Path, query: &str) -> Local {
        parse(&format!("local://{}{query}", dir.display())).unwrap()
    }

    fn instance(port: u16) -> Instance {
        Instance::new("t.v1.T", Endpoint::new("127.0.0.1", port), Metadata::default())
    }

    #[tokio::test]
    async fn registered_instances_are_resolved_and_removed_on_deregister() {
        let dir = tempfile::tempdir().unwrap();
        let registry = local(dir.path(), "?poll=10ms");
        let mut resolution = registry.resolve("t.v1.T").await.unwrap();
        assert!(resolution.current().is_empty());

        let a = registry.register(instance(1)).await.unwrap();
        let _b = registry.register(instance(2)).await.unwrap();
        while resolution.current().len() < 2 {
            resolution.changed().await.unwrap();
        }
        a.deregister().await.unwrap();
        while resolution.current().len() != 1 {
            resolution.changed().await.unwrap();
        }
        assert_eq!(resolution.current()[0].endpoint.port(), 2);
        // The eager first answer: a new resolution sees the instance at once.
        let fresh = registry.resolve("t.v1.T").await.unwrap();
        assert_eq!(fresh.current().len(), 1);
    }

    #[test]
    fn stale_entries_are_ignored_then_collected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        std::fs::write(&path, serde_json::to_vec(&instance(3)).unwrap()).unwrap();
        assert_eq!(scan(dir.path(), DEFAULT_TTL).unwrap().0.len(), 1);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(10)).unwrap();
        assert!(scan(dir.path(), DEFAULT_TTL).unwrap().0.is_empty());
        assert!(path.exists(), "kept during the grace period");
        file.set_modified(SystemTime::now() - STALE_GRACE - Duration::from_secs(10)).unwrap();
        assert!(scan(dir.path(), DEFAULT_TTL).unwrap().0.is_empty());
        assert!(!path.exists(), "collected after the grace period");
    }

    #[test]
    fn options_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ok = local(dir.path(), "?ttl=1s&poll=50ms");
        assert_eq!((ok.ttl, ok.poll), (Duration::from_secs(1), Duration::from_millis(50)));
        for bad in ["?ttl=soon", "?ttl=0s", "?color=red"] {
            let url = format!("local://{}{bad}", dir.path().display());
            let msg = parse(&url).unwrap_err().to_string();
            assert!(msg.contains(&url), "{msg}");
        }
        assert!(parse("local://").unwrap().dir.ends_with(default_dir().file_name().unwrap()));
    }

    #[tokio::test]
    async fn an_unwritable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let registry = local(&file, "");
        let msg = registry.register(instance(4)).await.unwrap_err().to_string();
        assert!(msg.contains("unreachable") && msg.contains(&file.display().to_string()), "{msg}");
    }
}

//! Durable shipment records in a SQLite file.
//!
//! Every instance of the service may open the same file at once: the
//! database runs in WAL mode with `synchronous=FULL`, so a shipment is on
//! disk before [`ShipmentStore::ship`] returns, and each shipment is created
//! inside a `BEGIN IMMEDIATE` transaction, so concurrent requests with one
//! idempotency key, from any process, ship once.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS shipments (
    tracking_id     TEXT PRIMARY KEY NOT NULL,
    order_id        TEXT UNIQUE NOT NULL,
    name            TEXT NOT NULL,
    line1           TEXT NOT NULL,
    line2           TEXT NOT NULL,
    city            TEXT NOT NULL,
    postal_code     TEXT NOT NULL,
    country         TEXT NOT NULL,
    idempotency_key TEXT UNIQUE NOT NULL,
    created_at_ms   INTEGER NOT NULL
)";

/// The columns [`from_row`] reads, in order.
macro_rules! columns {
    () => {
        "tracking_id, order_id, name, line1, line2, city, postal_code, country, created_at_ms"
    };
}

/// What can go wrong in the shipment store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The idempotency key was first used for a shipment with another order
    /// or address.
    #[error("idempotency key `{key}` was already used for a different request")]
    IdempotencyKeyReused {
        /// The reused key.
        key: String,
    },

    /// The order was already shipped, under another idempotency key.
    #[error("order `{order_id}` already has shipment `{existing_id}`")]
    AlreadyExists {
        /// The order.
        order_id: String,
        /// The tracking id of its existing shipment.
        existing_id: String,
    },

    /// The directory for the database file could not be created.
    #[error(
        "cannot create the directory for database `{}`: {source}; check that the parent directory exists and is writable",
        path.display()
    )]
    CreateDir {
        /// The database file.
        path: PathBuf,
        /// Why creating its directory failed.
        #[source]
        source: std::io::Error,
    },

    /// The database file could not be opened or set up.
    #[error(
        "cannot open database `{}`: {source}; check that the path is a SQLite file (or absent) and its directory is writable",
        path.display()
    )]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why opening failed.
        #[source]
        source: rusqlite::Error,
    },

    /// A query failed on an open database.
    #[error("shipment database `{}` failed: {source}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// Why the query failed.
        #[source]
        source: rusqlite::Error,
    },
}

/// The result of a write that honours idempotency keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<T> {
    /// The stored record: new, or the one first stored under the key.
    pub record: T,
    /// Whether the key was seen before, so nothing was written.
    pub replayed: bool,
}

/// Where a shipment goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Address {
    /// The recipient.
    pub name: String,
    /// The street address.
    pub line1: String,
    /// More of the street address; may be empty.
    pub line2: String,
    /// The city.
    pub city: String,
    /// The postal code; may be empty.
    pub postal_code: String,
    /// The ISO 3166-1 alpha-2 country code.
    pub country: String,
}

/// A shipment to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewShipment {
    /// The order to ship; it gets at most one shipment.
    pub order_id: String,
    /// Where to ship it.
    pub address: Address,
    /// The client's key; a repeat with the same key returns the first shipment.
    pub idempotency_key: String,
}

/// A stored shipment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipmentRecord {
    /// `trk_` and 20 hex digits.
    pub tracking_id: String,
    /// The order shipped.
    pub order_id: String,
    /// Where it goes.
    pub address: Address,
    /// When the shipment was created, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// Shipments in a SQLite file that several processes may share.
///
/// Cloning is cheap and shares the connection. The methods block, so call
/// them from `tokio::task::spawn_blocking` in async code.
#[derive(Clone)]
pub struct ShipmentStore {
    path: Arc<Path>,
    conn: Arc<Mutex<Connection>>,
}

impl fmt::Debug for ShipmentStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShipmentStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl ShipmentStore {
    /// Opens the database at `path`, creating it, its directory and its
    /// table if missing.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| StoreError::CreateDir { path: path.to_owned(), source })?;
        }
        let conn = connect(path).map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
        Ok(ShipmentStore { path: path.into(), conn: Arc::new(Mutex::new(conn)) })
    }

    /// Creates the shipment `s`, or returns the one first created with its
    /// idempotency key.
    ///
    /// Fails with [`StoreError::IdempotencyKeyReused`] if the key was used
    /// for another order or address, and with [`StoreError::AlreadyExists`]
    /// if the order was shipped under another key.
    pub fn ship(&self, s: &NewShipment) -> Result<Outcome<ShipmentRecord>, StoreError> {
        // SQLite errors end the closure; conflicts are its `Ok(Err(..))`.
        self.with_conn(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let by_key = concat!("SELECT ", columns!(), " FROM shipments WHERE idempotency_key = ?1");
            if let Some(record) = tx.query_row(by_key, [&s.idempotency_key], from_row).optional()? {
                return Ok(if record.order_id == s.order_id && record.address == s.address {
                    Ok(Outcome { record, replayed: true })
                } else {
                    Err(StoreError::IdempotencyKeyReused { key: s.idempotency_key.clone() })
                });
            }
            let existing: Option<String> = tx
                .query_row("SELECT tracking_id FROM shipments WHERE order_id = ?1", [&s.order_id], |row| row.get(0))
                .optional()?;
            if let Some(existing_id) = existing {
                return Ok(Err(StoreError::AlreadyExists { order_id: s.order_id.clone(), existing_id }));
            }
            let record = ShipmentRecord {
                tracking_id: new_id("trk_", &s.idempotency_key),
                order_id: s.order_id.clone(),
                address: s.address.clone(),
                created_at_ms: now_ms(),
            };
            let a = &record.address;
            tx.execute(
                "INSERT INTO shipments
                     (tracking_id, order_id, name, line1, line2, city, postal_code, country, idempotency_key, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    record.tracking_id,
                    record.order_id,
                    a.name,
                    a.line1,
                    a.line2,
                    a.city,
                    a.postal_code,
                    a.country,
                    s.idempotency_key,
                    record.created_at_ms,
                ],
            )?;
            tx.commit()?;
            Ok(Ok(Outcome { record, replayed: false }))
        })?
    }

    /// The shipment for `order_id`, if any.
    pub fn get(&self, order_id: &str) -> Result<Option<ShipmentRecord>, StoreError> {
        self.with_conn(|conn| {
            conn.query_row(
                concat!("SELECT ", columns!(), " FROM shipments WHERE order_id = ?1"),
                [order_id],
                from_row,
            )
            .optional()
        })
    }

    /// How many shipments are stored.
    pub fn count(&self) -> Result<u64, StoreError> {
        // COUNT(*) is never negative.
        self.with_conn(|conn| {
            conn.query_row("SELECT COUNT(*) FROM shipments", [], |row| row.get(0)).map(i64::unsigned_abs)
        })
    }

    /// Runs `op` on the connection, naming the file in its errors.
    fn with_conn<T>(&self, op: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        op(&mut conn).map_err(|source| StoreError::Sqlite { path: self.path.to_path_buf(), source })
    }
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // First, so that the statements below wait for other processes' locks.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Switching a new file to WAL fails at once, without waiting, while
    // another process switches it too, so retry until the busy timeout.
    let deadline = Instant::now() + BUSY_TIMEOUT;
    while let Err(err) = conn.pragma_update(None, "journal_mode", "WAL") {
        if err.sqlite_error_code() != Some(ErrorCode::DatabaseBusy) || Instant::now() >= deadline {
            return Err(err);
        }
        thread::sleep(Duration::from_millis(10));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<ShipmentRecord> {
    Ok(ShipmentRecord {
        tracking_id: row.get(0)?,
        order_id: row.get(1)?,
        address: Address {
            name: row.get(2)?,
            line1: row.get(3)?,
            line2: row.get(4)?,
            city: row.get(5)?,
            postal_code: row.get(6)?,
            country: row.get(7)?,
        },
        created_at_ms: row.get(8)?,
    })
}

/// `prefix` and 20 hex digits, hashed from `key`, the time and the process.
fn new_id(prefix: &str, key: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    let seed = RandomState::new();
    let [hi, lo] = [0u8, 1].map(|salt| seed.hash_one((key, nanos, std::process::id(), salt)));
    format!("{prefix}{hi:016x}{:04x}", lo >> 48)
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::*;

    fn address() -> Address {
        Address {
            name: "Ada Lovelace".into(),
            line1: "12 St James's Square".into(),
            line2: String::new(),
            city: "London".into(),
            postal_code: "SW1Y 4JH".into(),
            country: "GB".into(),
        }
    }

    fn shipment(order_id: &str, key: &str) -> NewShipment {
        NewShipment { order_id: order_id.into(), address: address(), idempotency_key: key.into() }
    }

    fn temp_store() -> (tempfile::TempDir, ShipmentStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ShipmentStore::open(&dir.path().join("nested/shipments.sqlite3")).unwrap();
        (dir, store)
    }

    #[test]
    fn ship_then_get_roundtrips_and_survives_reopen() {
        let (dir, store) = temp_store();
        let outcome = store.ship(&shipment("o1", "k1")).unwrap();
        assert!(!outcome.replayed);
        let record = outcome.record;
        assert!(record.tracking_id.starts_with("trk_"));
        assert_eq!(record.tracking_id.len(), 24);
        assert!(record.tracking_id[4..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(record.order_id, "o1");
        assert_eq!(record.address, address());
        assert!(record.created_at_ms > 1_600_000_000_000);

        assert_eq!(store.get("o1").unwrap(), Some(record.clone()));
        assert_eq!(store.get("o2").unwrap(), None);
        drop(store);
        let reopened = ShipmentStore::open(&dir.path().join("nested/shipments.sqlite3")).unwrap();
        assert_eq!(reopened.get("o1").unwrap(), Some(record));
    }

    #[test]
    fn tracking_ids_differ_between_shipments() {
        let (_dir, store) = temp_store();
        let a = store.ship(&shipment("o1", "k1")).unwrap().record;
        let b = store.ship(&shipment("o2", "k2")).unwrap().record;
        assert_ne!(a.tracking_id, b.tracking_id);
        assert_eq!(store.count().unwrap(), 2);
    }

    #[test]
    fn same_key_same_request_replays() {
        let (_dir, store) = temp_store();
        let first = store.ship(&shipment("o1", "k1")).unwrap();
        let again = store.ship(&shipment("o1", "k1")).unwrap();
        assert!(again.replayed);
        assert_eq!(again.record, first.record);
        assert_eq!(store.count().unwrap(), 1);
    }

    #[test]
    fn same_key_different_request_is_rejected() {
        let (_dir, store) = temp_store();
        store.ship(&shipment("o1", "k1")).unwrap();
        for changed in [
            NewShipment { address: Address { line2: "Flat 2".into(), ..address() }, ..shipment("o1", "k1") },
            NewShipment { address: Address { country: "IE".into(), ..address() }, ..shipment("o1", "k1") },
            shipment("o2", "k1"),
        ] {
            let err = store.ship(&changed).unwrap_err();
            assert!(matches!(&err, StoreError::IdempotencyKeyReused { key } if key == "k1"), "{err:?}");
            assert_eq!(err.to_string(), "idempotency key `k1` was already used for a different request");
        }
        assert_eq!(store.count().unwrap(), 1);
    }

    #[test]
    fn second_shipment_for_an_order_is_rejected() {
        let (_dir, store) = temp_store();
        let first = store.ship(&shipment("o1", "k1")).unwrap().record;
        let err = store.ship(&shipment("o1", "k2")).unwrap_err();
        match &err {
            StoreError::AlreadyExists { order_id, existing_id } => {
                assert_eq!(order_id, "o1");
                assert_eq!(existing_id, &first.tracking_id);
            }
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        assert!(err.to_string().contains(&first.tracking_id));
        assert_eq!(store.count().unwrap(), 1);
    }

    #[test]
    fn concurrent_processes_with_one_key_ship_once() {
        const WRITERS: usize = 8;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.sqlite3");
        let barrier = Barrier::new(WRITERS);
        let outcomes: Vec<Outcome<ShipmentRecord>> = thread::scope(|scope| {
            let handles: Vec<_> = (0..WRITERS)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        let store = ShipmentStore::open(&path);
                        barrier.wait();
                        store.and_then(|store| store.ship(&shipment("o1", "k1")))
                    })
                })
                .collect();
            handles.into_iter().map(|handle| handle.join().unwrap().unwrap()).collect()
        });
        let id = &outcomes[0].record.tracking_id;
        assert!(outcomes.iter().all(|o| &o.record.tracking_id == id));
        assert_eq!(outcomes.iter().filter(|o| !o.replayed).count(), 1);
        assert_eq!(ShipmentStore::open(&path).unwrap().count().unwrap(), 1);
    }

    #[test]
    fn open_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let under_file = file.join("shipments.sqlite3");
        let err = ShipmentStore::open(&under_file).unwrap_err();
        assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&under_file.display().to_string()), "{message}");
        assert!(message.contains("writable"), "{message}");

        let err = ShipmentStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&format!("cannot open database `{}`", dir.path().display())), "{message}");
    }
}

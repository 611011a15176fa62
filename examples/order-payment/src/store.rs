//! Durable payment records in a SQLite file.
//!
//! Every instance of the service may open the same file at once: the
//! database runs in WAL mode with `synchronous=FULL`, so a payment is on disk
//! before [`PaymentStore::pay`] returns, and each payment is taken inside a
//! `BEGIN IMMEDIATE` transaction, so concurrent requests with one idempotency
//! key, from any process, charge once.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS payments (
    payment_id      TEXT PRIMARY KEY NOT NULL,
    order_id        TEXT UNIQUE NOT NULL,
    amount_minor    INTEGER NOT NULL,
    currency        TEXT NOT NULL,
    idempotency_key TEXT UNIQUE NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('captured', 'refunded')),
    created_at_ms   INTEGER NOT NULL
)";

/// The columns [`from_row`] reads, in order.
macro_rules! columns {
    () => {
        "payment_id, order_id, amount_minor, currency, state, created_at_ms"
    };
}

/// What can go wrong in the payment store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The idempotency key was first used for a payment with another order,
    /// amount or currency.
    #[error("idempotency key `{key}` was already used for a different request")]
    IdempotencyKeyReused {
        /// The reused key.
        key: String,
    },

    /// The order was already paid, under another idempotency key.
    #[error("order `{order_id}` already has payment `{existing_id}`")]
    AlreadyExists {
        /// The order.
        order_id: String,
        /// Its existing payment.
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
    #[error("payment database `{}` failed: {source}", path.display())]
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

/// A payment to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPayment {
    /// The order to pay for; it gets at most one payment.
    pub order_id: String,
    /// The amount in minor units (cents).
    pub amount_minor: i64,
    /// The ISO 4217 currency code.
    pub currency: String,
    /// The client's key; a repeat with the same key returns the first payment.
    pub idempotency_key: String,
}

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentState {
    /// The money was taken.
    Captured,
    /// The money was given back.
    Refunded,
}

impl PaymentState {
    fn as_str(self) -> &'static str {
        match self {
            PaymentState::Captured => "captured",
            PaymentState::Refunded => "refunded",
        }
    }
}

impl FromSql for PaymentState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "captured" => Ok(PaymentState::Captured),
            "refunded" => Ok(PaymentState::Refunded),
            other => Err(FromSqlError::Other(format!("unknown payment state `{other}`").into())),
        }
    }
}

/// A stored payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    /// `pay_` and 20 hex digits.
    pub payment_id: String,
    /// The order paid for.
    pub order_id: String,
    /// The amount in minor units (cents).
    pub amount_minor: i64,
    /// The ISO 4217 currency code.
    pub currency: String,
    /// Captured or refunded.
    pub state: PaymentState,
    /// When the payment was taken, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// Payments in a SQLite file that several processes may share.
///
/// Cloning is cheap and shares the connection. The methods block, so call
/// them from `tokio::task::spawn_blocking` in async code.
#[derive(Clone)]
pub struct PaymentStore {
    path: Arc<Path>,
    conn: Arc<Mutex<Connection>>,
}

impl fmt::Debug for PaymentStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaymentStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl PaymentStore {
    /// Opens the database at `path`, creating it, its directory and its
    /// table if missing.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| StoreError::CreateDir { path: path.to_owned(), source })?;
        }
        let conn = connect(path).map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
        Ok(PaymentStore { path: path.into(), conn: Arc::new(Mutex::new(conn)) })
    }

    /// Takes the payment `p`, or returns the one first taken with its
    /// idempotency key.
    ///
    /// Fails with [`StoreError::IdempotencyKeyReused`] if the key was used
    /// for another order, amount or currency, and with
    /// [`StoreError::AlreadyExists`] if the order was paid under another key.
    pub fn pay(&self, p: &NewPayment) -> Result<Outcome<PaymentRecord>, StoreError> {
        // SQLite errors end the closure; conflicts are its `Ok(Err(..))`.
        self.with_conn(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let by_key = concat!("SELECT ", columns!(), " FROM payments WHERE idempotency_key = ?1");
            if let Some(record) = tx.query_row(by_key, [&p.idempotency_key], from_row).optional()? {
                let same = record.order_id == p.order_id
                    && record.amount_minor == p.amount_minor
                    && record.currency == p.currency;
                return Ok(if same {
                    Ok(Outcome { record, replayed: true })
                } else {
                    Err(StoreError::IdempotencyKeyReused { key: p.idempotency_key.clone() })
                });
            }
            let existing: Option<String> = tx
                .query_row("SELECT payment_id FROM payments WHERE order_id = ?1", [&p.order_id], |row| row.get(0))
                .optional()?;
            if let Some(existing_id) = existing {
                return Ok(Err(StoreError::AlreadyExists { order_id: p.order_id.clone(), existing_id }));
            }
            let record = PaymentRecord {
                payment_id: new_id("pay_", &p.idempotency_key),
                order_id: p.order_id.clone(),
                amount_minor: p.amount_minor,
                currency: p.currency.clone(),
                state: PaymentState::Captured,
                created_at_ms: now_ms(),
            };
            tx.execute(
                "INSERT INTO payments (payment_id, order_id, amount_minor, currency, idempotency_key, state, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    record.payment_id,
                    record.order_id,
                    record.amount_minor,
                    record.currency,
                    p.idempotency_key,
                    record.state.as_str(),
                    record.created_at_ms,
                ],
            )?;
            tx.commit()?;
            Ok(Ok(Outcome { record, replayed: false }))
        })?
    }

    /// The payment for `order_id`, if any.
    pub fn get(&self, order_id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        self.with_conn(|conn| {
            conn.query_row(
                concat!("SELECT ", columns!(), " FROM payments WHERE order_id = ?1"),
                [order_id],
                from_row,
            )
            .optional()
        })
    }

    /// Refunds the payment for `order_id` and returns it, or `None` if the
    /// order has no payment. Refunding twice changes nothing.
    pub fn refund(&self, order_id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        self.with_conn(|conn| {
            conn.query_row(
                concat!("UPDATE payments SET state = 'refunded' WHERE order_id = ?1 RETURNING ", columns!()),
                [order_id],
                from_row,
            )
            .optional()
        })
    }

    /// How many payments are stored.
    pub fn count(&self) -> Result<u64, StoreError> {
        // COUNT(*) is never negative.
        self.with_conn(|conn| {
            conn.query_row("SELECT COUNT(*) FROM payments", [], |row| row.get(0)).map(i64::unsigned_abs)
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

fn from_row(row: &Row<'_>) -> rusqlite::Result<PaymentRecord> {
    Ok(PaymentRecord {
        payment_id: row.get(0)?,
        order_id: row.get(1)?,
        amount_minor: row.get(2)?,
        currency: row.get(3)?,
        state: row.get(4)?,
        created_at_ms: row.get(5)?,
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

    fn payment(order_id: &str, key: &str) -> NewPayment {
        NewPayment {
            order_id: order_id.into(),
            amount_minor: 1250,
            currency: "EUR".into(),
            idempotency_key: key.into(),
        }
    }

    fn temp_store() -> (tempfile::TempDir, PaymentStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = PaymentStore::open(&dir.path().join("nested/payments.sqlite3")).unwrap();
        (dir, store)
    }

    #[test]
    fn pay_then_get_roundtrips_and_survives_reopen() {
        let (dir, store) = temp_store();
        let outcome = store.pay(&payment("o1", "k1")).unwrap();
        assert!(!outcome.replayed);
        let record = outcome.record;
        assert!(record.payment_id.starts_with("pay_"));
        assert_eq!(record.payment_id.len(), 24);
        assert!(record.payment_id[4..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(record.order_id, "o1");
        assert_eq!(record.amount_minor, 1250);
        assert_eq!(record.currency, "EUR");
        assert_eq!(record.state, PaymentState::Captured);
        assert!(record.created_at_ms > 1_600_000_000_000);

        assert_eq!(store.get("o1").unwrap(), Some(record.clone()));
        assert_eq!(store.get("o2").unwrap(), None);
        drop(store);
        let reopened = PaymentStore::open(&dir.path().join("nested/payments.sqlite3")).unwrap();
        assert_eq!(reopened.get("o1").unwrap(), Some(record));
    }

    #[test]
    fn same_key_same_request_replays() {
        let (_dir, store) = temp_store();
        let first = store.pay(&payment("o1", "k1")).unwrap();
        let again = store.pay(&payment("o1", "k1")).unwrap();
        assert!(again.replayed);
        assert_eq!(again.record, first.record);
        assert_eq!(store.count().unwrap(), 1);
    }

    #[test]
    fn same_key_different_request_is_rejected() {
        let (_dir, store) = temp_store();
        store.pay(&payment("o1", "k1")).unwrap();
        for changed in [
            NewPayment { amount_minor: 999, ..payment("o1", "k1") },
            NewPayment { currency: "USD".into(), ..payment("o1", "k1") },
            payment("o2", "k1"),
        ] {
            let err = store.pay(&changed).unwrap_err();
            assert!(matches!(&err, StoreError::IdempotencyKeyReused { key } if key == "k1"), "{err:?}");
            assert_eq!(err.to_string(), "idempotency key `k1` was already used for a different request");
        }
        assert_eq!(store.count().unwrap(), 1);
    }

    #[test]
    fn second_payment_for_an_order_is_rejected() {
        let (_dir, store) = temp_store();
        let first = store.pay(&payment("o1", "k1")).unwrap().record;
        let err = store.pay(&payment("o1", "k2")).unwrap_err();
        match &err {
            StoreError::AlreadyExists { order_id, existing_id } => {
                assert_eq!(order_id, "o1");
                assert_eq!(existing_id, &first.payment_id);
            }
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        assert!(err.to_string().contains(&first.payment_id));
        assert_eq!(store.count().unwrap(), 1);
    }

    #[test]
    fn refund_is_idempotent() {
        let (_dir, store) = temp_store();
        assert_eq!(store.refund("o1").unwrap(), None);
        let paid = store.pay(&payment("o1", "k1")).unwrap().record;
        let refunded = store.refund("o1").unwrap().unwrap();
        assert_eq!(refunded, PaymentRecord { state: PaymentState::Refunded, ..paid.clone() });
        assert_eq!(store.refund("o1").unwrap(), Some(refunded.clone()));
        assert_eq!(store.get("o1").unwrap(), Some(refunded.clone()));
        // A replayed Pay reports the current state and does not charge again.
        let again = store.pay(&payment("o1", "k1")).unwrap();
        assert!(again.replayed);
        assert_eq!(again.record, refunded);
        assert_eq!(store.count().unwrap(), 1);
    }

    #[test]
    fn concurrent_processes_with_one_key_charge_once() {
        const WRITERS: usize = 8;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.sqlite3");
        let barrier = Barrier::new(WRITERS);
        let outcomes: Vec<Outcome<PaymentRecord>> = thread::scope(|scope| {
            let handles: Vec<_> = (0..WRITERS)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        let store = PaymentStore::open(&path);
                        barrier.wait();
                        store.and_then(|store| store.pay(&payment("o1", "k1")))
                    })
                })
                .collect();
            handles.into_iter().map(|handle| handle.join().unwrap().unwrap()).collect()
        });
        let id = &outcomes[0].record.payment_id;
        assert!(outcomes.iter().all(|o| &o.record.payment_id == id));
        assert_eq!(outcomes.iter().filter(|o| !o.replayed).count(), 1);
        assert_eq!(PaymentStore::open(&path).unwrap().count().unwrap(), 1);
    }

    #[test]
    fn open_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let under_file = file.join("payments.sqlite3");
        let err = PaymentStore::open(&under_file).unwrap_err();
        assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&under_file.display().to_string()), "{message}");
        assert!(message.contains("writable"), "{message}");

        let err = PaymentStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&format!("cannot open database `{}`", dir.path().display())), "{message}");
    }
}

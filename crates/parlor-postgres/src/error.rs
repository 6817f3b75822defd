//! How PostgreSQL and pool failures become domain errors.
//!
//! Every storage failure reaches clients as `unavailable` (retryable), like the SQLite
//! store: the cause is logged here, where it happens. The writer additionally needs to
//! know whether a failed transaction is worth retrying as a whole (a concurrent
//! duplicate from another node, a deadlock) or whether the database is gone.

use deadpool_postgres::PoolError;
use parlor_core::error::Error;
use tokio_postgres::error::SqlState;

/// Logs a failed statement and maps it to `unavailable`.
pub fn db_err(e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        tracing::error!(
            code = db.code().code(),
            error = db.message(),
            "postgres statement failed"
        );
    } else if is_connection_error(&e) {
        tracing::warn!(error = %e, "postgres unreachable");
    } else {
        tracing::error!(error = %e, "postgres statement failed");
    }
    Error::unavailable()
}

/// Logs a failure to obtain a pooled connection and maps it to `unavailable`.
pub fn pool_err(e: PoolError) -> Error {
    tracing::warn!(error = %e, "no postgres connection");
    Error::unavailable()
}

/// The connection itself failed (as opposed to a statement being refused).
pub fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        None => true,
        Some(code) => {
            code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
        }
    }
}

/// A transaction that failed only because of another concurrent one; running it again
/// is expected to succeed (or to see what the other one committed).
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(code) if *code == SqlState::UNIQUE_VIOLATION
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::LOCK_NOT_AVAILABLE
    )
}

/// Shorthand for statements whose failure is an `unavailable` answer.
pub trait DbResult<T> {
    fn db(self) -> Result<T, Error>;
}

impl<T> DbResult<T> for Result<T, tokio_postgres::Error> {
    fn db(self) -> Result<T, Error> {
        self.map_err(db_err)
    }
}

impl<T> DbResult<T> for Result<T, PoolError> {
    fn db(self) -> Result<T, Error> {
        self.map_err(pool_err)
    }
}

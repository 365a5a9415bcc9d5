//! What a store call can fail with, in the store's own words: no driver type
//! crosses this boundary, so callers match on meanings, not on sqlx or
//! rusqlite variants.

/// Storage failures. Anything here is the service's problem, not the client's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached, or the pool has no connection to give.
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    /// The database refused or could not run a statement.
    #[error("database error: {message}")]
    Database {
        message: String,
        /// Why, as the database says it: PostgreSQL's SQLSTATE (`40P01`), or
        /// SQLite's extended result code as a number. Decides whether the
        /// transaction is worth running again (`is_conflict`).
        code: Option<String>,
    },
    #[error("migration failed: {0}")]
    Migrate(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Too many lists at once (`ListBudget`): the client should come back
    /// shortly. Point reads are never refused this way.
    #[error("the store is busy: {0}")]
    Busy(String),
}

impl StoreError {
    /// A transaction that lost to a concurrent one (deadlock, serialization
    /// failure, a unique index another transaction filled first): running
    /// it again sees the winner and decides anew.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Self::Database { code: Some(code), .. } if matches!(code.as_str(), "40P01" | "40001" | "23505")
        )
    }
}

impl From<sqlx::Error> for StoreError {
    /// Connection-level failures become `Unavailable` (503
    /// `storage_unavailable`); the rest keep the database's code.
    fn from(error: sqlx::Error) -> Self {
        let connection_lost = match &error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed => true,
            // Class 08: connection exception; 57P01..57P03: the server is
            // shutting down or starting; 53300: too many connections.
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                code.starts_with("08") || code.starts_with("57P0") || code == "53300"
            }),
            _ => false,
        };
        if connection_lost {
            return Self::Unavailable(error.to_string());
        }
        let code = match &error {
            sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
            _ => None,
        };
        Self::Database {
            message: error.to_string(),
            code,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        let code = match &error {
            rusqlite::Error::SqliteFailure(failure, _) => Some(failure.extended_code.to_string()),
            _ => None,
        };
        Self::Database {
            message: error.to_string(),
            code,
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(error.to_string())
    }
}

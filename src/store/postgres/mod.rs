//! The shared backend: PostgreSQL, for several instances on one database.

mod bus;

pub use bus::PgBus;

pub mod domain;
pub mod engine;
pub mod kinds;
pub mod notify;
pub mod store;

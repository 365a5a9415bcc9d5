pub mod domain;
pub mod kinds;
pub mod store;

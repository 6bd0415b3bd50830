//! Views: the handlers and view models of one area each. A view imports the spine (`state`, `auth`,
//! `render`, `error`, `theme`), never another view; only the route table and `lib.rs` import views.

pub mod account;
pub mod admin;
pub mod classes;
pub mod connect;
pub mod portal;

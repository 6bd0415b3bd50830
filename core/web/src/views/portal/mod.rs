//! The portal: the student's pages (home, VM list, portal, sign-in page, reload status, static files)
//! in [`pages`], and the JSON API with its Server-Sent Events in [`api`].

pub mod api;
pub mod pages;

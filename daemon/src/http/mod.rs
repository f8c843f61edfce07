//! Everything HTTP: the API under `/api/v1`, its route policy and the
//! embedded dashboard. The only module that knows axum.

pub mod api;
pub mod policy;
pub mod web;

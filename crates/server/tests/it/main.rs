//! The real router on port 0, a fresh SQLite database per test, the built-in model.

mod access;
mod api;
mod controls;
mod events;
mod fake_imagga;
mod helpers;
mod hostile;
mod idempotency;
mod imagga;
mod interop;
mod metrics;
mod models;
mod openapi;
mod ops;
mod queue;
mod quotas;
mod search;
mod upload_budget;
mod wait;
mod webhooks;

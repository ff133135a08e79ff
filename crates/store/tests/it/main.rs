//! Integration tests of the store, written against the [`Store`] trait so that every backend can
//! run the same suite. Each test opens a fresh database.

mod common;

mod actions;
mod blobs;
mod controls;
mod copy;
mod delete;
mod events;
mod group_commit;
mod idempotency;
mod leases;
mod list;
mod models;
mod nodes;
mod objects;
mod outcomes;
mod queue;
mod races;
mod search;
mod sqlite;
mod tokens;
mod webhooks;

//! The types every other module speaks: the streaming body, the request-path
//! error with its origin, retry safety and source chain, the boxed service
//! and future every layer returns, and the request/response extensions that
//! carry facts between layers (which endpoint answered, which to avoid, how
//! many retries it took), and the executor hyper's HTTP/2 connections spawn
//! their stream tasks on. Nothing here depends on any other weft module.

pub mod body;
pub mod error;
pub mod executor;
pub mod extensions;
pub mod service;

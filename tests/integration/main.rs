//! Integration tests: one binary (one link step) with a module per area.

mod bad_input;
mod lifecycle;
mod overload;
mod proxy;
mod support;
mod tcp;

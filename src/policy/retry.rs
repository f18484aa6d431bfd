//! A route's compiled retry policy: which outcomes are retried, how often,
//! with which delays, and which requests may be sent twice at all.
//!
//! Conditions follow Envoy's `retry_on` names (underscores or hyphens):
//! `connect_failure`, `reset`, `5xx`, `gateway_error` (502, 503, 504),
//! `retriable_4xx` (409), and single status codes written as strings
//! ("503"). An error weft produced itself matches the status weft would
//! answer with (connect failure 503, reset 502, per-try timeout 504), so
//! "503" also retries connect failures, like Envoy's `5xx` does.
//! Overload rejections (`x-weft-overloaded`, from this weft or the next hop)
//! are never retried: they say the upstream already has too much to do.

use http::Method;
use tokio::time::Duration;

use super::backoff::BackoffConfig;
use crate::config::schema::RetryConfig;
use crate::core::error::{ErrorKind, ProxyError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    ConnectFailure,
    Reset,
    ServerError,
    GatewayError,
    Retriable4xx,
    Status(u16),
}

impl Condition {
    fn parse(name: &str) -> Option<Self> {
        let normalized = name.replace('-', "_");
        Some(match normalized.as_str() {
            "connect_failure" => Self::ConnectFailure,
            "reset" => Self::Reset,
            "5xx" => Self::ServerError,
            "gateway_error" => Self::GatewayError,
            "retriable_4xx" => Self::Retriable4xx,
            code => Self::Status(code.parse().ok().filter(|c| (100..=599).contains(c))?),
        })
    }

    fn matches_status(self, status: u16) -> bool {
        match self {
            Self::ConnectFailure | Self::Reset => false,
            Self::ServerError => (500..=599).contains(&status),
            Self::GatewayError => matches!(status, 502..=504),
            Self::Retriable4xx => status == 409,
            Self::Status(code) => code == status,
        }
    }

    fn matches_error(self, kind: ErrorKind, status: u16) -> bool {
        match (self, kind) {
            (Self::ConnectFailure, ErrorKind::ConnectFailed) | (Self::Reset, ErrorKind::UpstreamReset) => true,
            (_, ErrorKind::ConnectFailed | ErrorKind::UpstreamReset | ErrorKind::Timeout) => {
                self.matches_status(status)
            }
            // No endpoint, bad request, overload: another try cannot help.
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_retries: u32,
    conditions: Vec<Condition>,
    pub per_try_timeout: Option<Duration>,
    pub backoff: BackoffConfig,
    pub replay_buffer_bytes: u64,
    pub idempotent_only: bool,
}

impl RetryPolicy {
    /// Compiles `config`; an error is (key below `retry`, message).
    pub fn compile(config: &RetryConfig) -> Result<Self, (String, String)> {
        let mut conditions = Vec::with_capacity(config.retry_on.len());
        for (i, name) in config.retry_on.iter().enumerate() {
            let condition = Condition::parse(name).ok_or_else(|| {
                (
                    format!("retry_on[{i}]"),
                    format!(
                        "unknown condition {name:?}; use connect_failure, reset, 5xx, gateway_error, retriable_4xx or a status code such as \"503\""
                    ),
                )
            })?;
            conditions.push(condition);
        }
        if config.per_try_timeout.is_some_and(|t| t.is_zero()) {
            return Err(("per_try_timeout".into(), "must be above 0".into()));
        }
        if config.backoff.base > config.backoff.max {
            return Err(("backoff.base".into(), "must not exceed backoff.max".into()));
        }
        Ok(Self {
            max_retries: config.max_retries,
            conditions,
            per_try_timeout: config.per_try_timeout,
            backoff: BackoffConfig {
                base: config.backoff.base,
                max: config.backoff.max,
            },
            replay_buffer_bytes: config.replay_buffer_bytes,
            idempotent_only: config.idempotent_only,
        })
    }

    /// Whether a response with `status` should be tried again.
    pub fn retries_status(&self, method: &Method, status: u16) -> bool {
        (is_idempotent(method) || !self.idempotent_only) && self.conditions.iter().any(|c| c.matches_status(status))
    }

    /// Whether a failed try should be tried again.
    pub fn retries_error(&self, method: &Method, error: &ProxyError) -> bool {
        // Only a request the upstream never saw may be repeated if it is not idempotent.
        let may_repeat = is_idempotent(method) || !self.idempotent_only || error.retry_safe();
        let status = error.status().as_u16();
        may_repeat && self.conditions.iter().any(|c| c.matches_error(error.kind(), status))
    }
}

/// RFC 9110 section 9.2.2.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retry_on: &str) -> RetryPolicy {
        let config: RetryConfig = serde_yaml_ng::from_str(&format!("{{ retry_on: {retry_on} }}")).unwrap();
        RetryPolicy::compile(&config).unwrap()
    }

    fn error(kind: ErrorKind) -> ProxyError {
        ProxyError::new(kind, "")
    }

    #[test]
    fn conditions_match_statuses_and_errors() {
        let get = Method::GET;
        let gateway = policy("[gateway_error]");
        assert!(gateway.retries_status(&get, 503) && !gateway.retries_status(&get, 500));
        assert!(gateway.retries_error(&get, &error(ErrorKind::Timeout)));
        assert!(gateway.retries_error(&get, &error(ErrorKind::ConnectFailed)));
        let reset_only = policy("[reset]");
        assert!(reset_only.retries_error(&get, &error(ErrorKind::UpstreamReset)));
        assert!(!reset_only.retries_error(&get, &error(ErrorKind::ConnectFailed)));
        assert!(!reset_only.retries_status(&get, 502));
        let codes = policy("[\"503\", retriable-4xx, 5xx]");
        assert!(codes.retries_status(&get, 409) && codes.retries_status(&get, 599));
        let overloaded = error(ErrorKind::Overloaded(crate::core::error::Overload::Circuit));
        assert!(!codes.retries_error(&get, &overloaded));
        assert!(!codes.retries_error(&get, &error(ErrorKind::NoEndpoint)));
    }

    #[test]
    fn non_idempotent_methods_only_after_connect_failures() {
        let all = policy("[5xx]");
        assert!(!all.retries_status(&Method::POST, 503));
        assert!(!all.retries_error(&Method::POST, &error(ErrorKind::UpstreamReset)));
        assert!(all.retries_error(&Method::POST, &error(ErrorKind::ConnectFailed)));
        let config: RetryConfig = serde_yaml_ng::from_str("{ retry_on: [5xx], idempotent_only: false }").unwrap();
        let any = RetryPolicy::compile(&config).unwrap();
        assert!(any.retries_status(&Method::POST, 503));
    }

    #[test]
    fn unknown_conditions_name_their_key() {
        let config: RetryConfig = serde_yaml_ng::from_str("{ retry_on: [reset, \"5o3\"] }").unwrap();
        assert_eq!(RetryPolicy::compile(&config).unwrap_err().0, "retry_on[1]");
    }
}

//! The Matrix-style errors edgepush answers with, and their one mapping to
//! status and `errcode`.

use serde_json::json;

/// An error answered to the homeserver as `{"errcode", "error"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all (or not UTF-8).
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not a valid notification; the message names the field.
    #[error("{0}")]
    BadJson(String),
    /// Body over `MAX_BODY_BYTES`, or more devices than `MAX_DEVICES`.
    #[error("{0}")]
    TooLarge(String),
    /// No such endpoint (404).
    #[error("unrecognized request: {0}")]
    Unrecognized(String),
    /// A known endpoint, the wrong method (405).
    #[error("method {method} not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// Some device could not be delivered now; the homeserver should retry.
    #[error("{0}")]
    Upstream(String),
    /// Every device of the notify is over the per-pushkey rate limit (429,
    /// with `retry_after_ms` and a `Retry-After` header).
    #[error("every device of this notification is over its rate limit; retry later")]
    LimitExceeded { retry_after_ms: u64 },
}

impl ApiError {
    /// The HTTP status and Matrix `errcode` of each error: the only place they are decided.
    pub fn status_errcode(&self) -> (u16, &'static str) {
        match self {
            Self::NotJson(_) => (400, "M_NOT_JSON"),
            Self::BadJson(_) => (400, "M_BAD_JSON"),
            Self::TooLarge(_) => (413, "M_TOO_LARGE"),
            Self::Unrecognized(_) => (404, "M_UNRECOGNIZED"),
            Self::MethodNotAllowed { .. } => (405, "M_UNRECOGNIZED"),
            Self::Upstream(_) => (502, "M_UNKNOWN"),
            Self::LimitExceeded { .. } => (429, "M_LIMIT_EXCEEDED"),
        }
    }

    /// The status and JSON body to answer with.
    pub fn to_reply(&self) -> Reply {
        let (status, errcode) = self.status_errcode();
        let body = match self {
            Self::LimitExceeded { retry_after_ms } => {
                json!({ "errcode": errcode, "error": self.to_string(), "retry_after_ms": retry_after_ms })
            }
            _ => json!({ "errcode": errcode, "error": self.to_string() }),
        };
        Reply { status, body }
    }
}

/// A JSON answer: what the worker shell turns into a `Response`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Reply {
    pub fn ok(body: serde_json::Value) -> Self {
        Self { status: 200, body }
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        e.to_reply()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_status_and_errcode() {
        let cases = [
            (ApiError::NotJson("x".into()), 400, "M_NOT_JSON"),
            (ApiError::BadJson("x".into()), 400, "M_BAD_JSON"),
            (ApiError::TooLarge("x".into()), 413, "M_TOO_LARGE"),
            (ApiError::Unrecognized("/x".into()), 404, "M_UNRECOGNIZED"),
            (
                ApiError::MethodNotAllowed { method: "PUT".into(), path: "/health".into() },
                405,
                "M_UNRECOGNIZED",
            ),
            (ApiError::Upstream("x".into()), 502, "M_UNKNOWN"),
            (ApiError::LimitExceeded { retry_after_ms: 60_000 }, 429, "M_LIMIT_EXCEEDED"),
        ];
        for (err, status, code) in cases {
            let reply = err.to_reply();
            assert_eq!(reply.status, status, "{err:?}");
            assert_eq!(reply.body["errcode"], code, "{err:?}");
            assert!(reply.body["error"].as_str().is_some_and(|s| !s.is_empty()));
        }
        assert_eq!(ApiError::LimitExceeded { retry_after_ms: 60_000 }.to_reply().body["retry_after_ms"], 60_000);
    }
}

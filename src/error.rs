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
        Reply { status, body, error: Some(self.clone()) }
    }
}

/// A JSON answer: what the worker shell turns into a `Response`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
    /// The error the body words, if it is one: the log and the metrics read
    /// its `errcode` and words from here, never back out of `body`.
    pub error: Option<ApiError>,
}

impl Reply {
    pub fn ok(body: serde_json::Value) -> Self {
        Self { status: 200, body, error: None }
    }

    /// An answer that is not an error, whatever its status (`/health`'s 503).
    pub fn with_status(status: u16, body: serde_json::Value) -> Self {
        Self { status, body, error: None }
    }

    /// The Matrix `errcode` of an error answer.
    pub fn errcode(&self) -> Option<&'static str> {
        self.error.as_ref().map(|e| e.status_errcode().1)
    }

    /// How long the homeserver is asked to wait (`M_LIMIT_EXCEEDED`).
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self.error {
            Some(ApiError::LimitExceeded { retry_after_ms }) => Some(retry_after_ms),
            _ => None,
        }
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

    #[test]
    fn the_typed_error_says_what_the_body_says() {
        let errors = [
            ApiError::NotJson("x".into()),
            ApiError::BadJson("devices: missing".into()),
            ApiError::TooLarge("x".into()),
            ApiError::Unrecognized("/x".into()),
            ApiError::MethodNotAllowed { method: "PUT".into(), path: "/health".into() },
            ApiError::Upstream("1 device(s) failed".into()),
            ApiError::LimitExceeded { retry_after_ms: 60_000 },
        ];
        for err in errors {
            let reply = err.to_reply();
            assert_eq!(reply.errcode(), reply.body["errcode"].as_str(), "{err:?}");
            let words = reply.error.as_ref().map(ToString::to_string);
            assert_eq!(words.as_deref(), reply.body["error"].as_str(), "{err:?}");
            assert_eq!(reply.retry_after_ms(), reply.body["retry_after_ms"].as_u64(), "{err:?}");
        }
        let ok = Reply::ok(json!({"rejected": []}));
        assert_eq!((ok.errcode(), ok.retry_after_ms()), (None, None));
        assert_eq!(Reply::with_status(503, json!({"status": "degraded"})).errcode(), None, "a degraded /health is no Matrix error");
    }
}

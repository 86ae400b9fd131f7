//! What the JSON APIs share: the refusal type (a status, a reason code, details), and
//! readers of request bodies that name the bad field.

use crate::store::StoreError;
use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::{Map, Value, json};

/// A refused request: its status, a reason code, and details merged into the JSON body
/// (`{"status": "REJECTED", "reason": …, …}`).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    reason: &'static str,
    detail: Value,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

impl ApiError {
    /// Its HTTP status.
    pub(crate) const fn status(&self) -> StatusCode {
        self.status
    }
}

impl actix_web::ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = json!({ "status": "REJECTED", "reason": self.reason });
        if let (Value::Object(b), Value::Object(d)) = (&mut body, &self.detail) {
            b.extend(d.clone());
        }
        HttpResponse::build(self.status).json(body)
    }
}

pub(crate) fn answer(status: StatusCode, reason: &'static str, detail: Value) -> ApiError {
    ApiError {
        status,
        reason,
        detail,
    }
}

pub(crate) fn bad_field(field: &str, message: &str) -> ApiError {
    answer(
        StatusCode::BAD_REQUEST,
        "BAD_FIELD",
        json!({ "field": field, "message": message }),
    )
}

/// A JSON object with only the `allowed` keys.
pub(crate) fn object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad_field("body", &format!("not JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(bad_field("body", "a JSON object is expected"));
    };
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad_field(k, "unknown field"));
    }
    Ok(map)
}

/// A required text field: not blank, at most `max` bytes; trimmed.
pub(crate) fn text(map: &Map<String, Value>, field: &str, max: usize) -> Result<String, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Err(bad_field(field, "required")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(bad_field(field, "blank")),
        Some(Value::String(s)) if s.len() > max => {
            Err(bad_field(field, &format!("at most {max} bytes")))
        }
        Some(Value::String(s)) => Ok(s.trim().to_owned()),
        Some(_) => Err(bad_field(field, "a string is expected")),
    }
}

/// An optional positive integer field.
pub(crate) fn positive(map: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(bad_field(field, "a positive integer is expected")),
        },
    }
}

pub(crate) fn store_failed(e: &str) -> ApiError {
    tracing::warn!(error = e, "API: store failed");
    answer(
        StatusCode::SERVICE_UNAVAILABLE,
        "STORE_UNAVAILABLE",
        Value::Null,
    )
}

/// Runs a store call on the store runtime; a refusal of the store is 409, any other
/// failure 503.
pub(crate) async fn on_store<T, F>(rt: &tokio::runtime::Handle, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
{
    match rt.spawn(work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(StoreError::Refused(m))) => Err(answer(
            StatusCode::CONFLICT,
            "REFUSED",
            json!({ "message": m }),
        )),
        Ok(Err(e)) => Err(store_failed(&e.to_string())),
        Err(e) => Err(store_failed(&e.to_string())),
    }
}

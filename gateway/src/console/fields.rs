//! Request bodies, JSON or an HTML form, read field by field: a bad one is answered 400
//! naming the field, before anything is written. A form's answer is a redirect back to
//! the page it came from.

use crate::httpapi::{ApiError, bad_field};
use actix_web::HttpRequest;
use serde_json::{Map, Value};

/// Longest free-text field (reasons, evidence, names), in bytes.
pub(crate) const TEXT_BYTES_MAX: usize = 2_000;

/// The fields of a body.
#[derive(Debug)]
pub(crate) struct Fields {
    map: Map<String, Value>,
    /// The body was a form (answer with a redirect).
    pub(crate) form: bool,
}

impl Fields {
    /// Reads `body` as the request's content type says; only `allowed` fields (and a
    /// form's `csrf` and `back`) may appear.
    pub(crate) fn parse(
        req: &HttpRequest,
        body: &[u8],
        allowed: &[&str],
    ) -> Result<Self, ApiError> {
        let form = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let map = if form {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
                .map_err(|e| bad_field("body", &format!("not a form: {e}")))?;
            let mut map = Map::new();
            for (k, v) in pairs {
                if k == "csrf" || k == "back" {
                    continue;
                }
                // An empty form field is an absent one.
                if !v.is_empty() {
                    map.insert(k, Value::String(v));
                }
            }
            map
        } else if body.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            match serde_json::from_slice(body) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err(bad_field("body", "a JSON object is expected")),
                Err(e) => return Err(bad_field("body", &format!("not JSON: {e}"))),
            }
        };
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad_field(k, "unknown field"));
        }
        Ok(Self { map, form })
    }

    /// A required text field: not blank, at most `max` bytes; trimmed.
    pub(crate) fn text(&self, field: &str, max: usize) -> Result<String, ApiError> {
        self.opt_text(field, max)?
            .ok_or_else(|| bad_field(field, "required"))
    }

    /// An optional text field.
    pub(crate) fn opt_text(&self, field: &str, max: usize) -> Result<Option<String>, ApiError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Err(bad_field(field, "blank")),
            Some(Value::String(s)) if s.len() > max => {
                Err(bad_field(field, &format!("at most {max} bytes")))
            }
            Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(_) => Err(bad_field(field, "a string is expected")),
        }
    }

    /// A required integer in `min..=max` (a JSON number, or digits in a form).
    pub(crate) fn int(&self, field: &str, min: i64, max: i64) -> Result<i64, ApiError> {
        self.opt_int(field, min, max)?
            .ok_or_else(|| bad_field(field, "required"))
    }

    /// An optional integer in `min..=max`.
    pub(crate) fn opt_int(&self, field: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        let v = match self.map.get(field) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
            Some(_) => None,
        };
        match v {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(bad_field(
                field,
                &format!("an integer from {min} to {max} is expected"),
            )),
        }
    }

    /// A required boolean (`true`/`false`; a form's `true`, `false`, `on`).
    pub(crate) fn bool(&self, field: &str) -> Result<bool, ApiError> {
        match self.map.get(field) {
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) if s == "true" || s == "on" => Ok(true),
            Some(Value::String(s)) if s == "false" => Ok(false),
            None | Some(Value::Null) => Err(bad_field(field, "required")),
            Some(_) => Err(bad_field(field, "true or false is expected")),
        }
    }

    /// An optional boolean.
    pub(crate) fn opt_bool(&self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.bool(field).map(Some),
        }
    }

    /// One of `choices`.
    pub(crate) fn choice(
        &self,
        field: &str,
        choices: &[&'static str],
    ) -> Result<&'static str, ApiError> {
        let t = self.text(field, 64)?;
        choices
            .iter()
            .copied()
            .find(|c| *c == t)
            .ok_or_else(|| bad_field(field, &format!("one of {} is expected", choices.join(", "))))
    }

    /// The fields as JSON (for an application's facts).
    pub(crate) fn into_map(self) -> Map<String, Value> {
        self.map
    }
}

/// A path segment as an integer in `min..=max`, else 400 naming it.
pub(crate) fn path_int(req: &HttpRequest, name: &str, min: i64, max: i64) -> Result<i64, ApiError> {
    req.match_info()
        .get(name)
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| bad_field(name, &format!("an integer from {min} to {max} is expected")))
}

/// A `yyyymmdd` path segment.
pub(crate) fn path_date(req: &HttpRequest) -> Result<wenxiao_protocol::BusinessDate, ApiError> {
    let v = path_int(req, "date", 20_000_101, 29_991_231)?;
    u32::try_from(v)
        .ok()
        .and_then(|v| wenxiao_protocol::BusinessDate::new(v).ok())
        .ok_or_else(|| bad_field("date", "a calendar date yyyymmdd is expected"))
}

/// A query parameter.
pub(crate) fn query(req: &HttpRequest, name: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

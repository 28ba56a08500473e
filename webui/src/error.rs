//! How a refused command becomes an HTTP answer.

use crate::backend::{CommandError, FieldError};
use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};

/// The HTTP status for each kind of refusal.
pub fn status_of(err: &CommandError) -> StatusCode {
    match err {
        CommandError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        CommandError::NotFound { .. } => StatusCode::NOT_FOUND,
        CommandError::Conflict { .. } => StatusCode::CONFLICT,
        CommandError::Remote { .. } => StatusCode::BAD_GATEWAY,
        CommandError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A [`CommandError`] as a JSON API answer: the status from [`status_of`], the error as body
/// (`{"kind":"invalid","fields":[{"field":..,"message":..}]}` and so on).
#[derive(Debug)]
pub struct ApiError(pub CommandError);

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (status_of(&self.0), Json(self.0)).into_response()
    }
}

/// Field errors of a form, plus the messages that belong to no field of the page.
#[derive(Debug, Clone, Default)]
pub struct FormErrors {
    fields: Vec<FieldError>,
    /// Shown above the form: a refusal that is not about one field (409, 502, 500), or a field
    /// error whose field the page does not show.
    pub general: Vec<String>,
}

impl FormErrors {
    pub fn none() -> Self {
        FormErrors::default()
    }

    /// Sorts `err` onto the fields the page shows (`page_fields`); the rest goes to `general`.
    pub fn from_error(err: CommandError, page_fields: &[&str]) -> Self {
        let mut out = FormErrors::default();
        match err {
            CommandError::Invalid { fields } => {
                for f in fields {
                    if page_fields.contains(&f.field.as_str()) {
                        out.fields.push(f);
                    } else {
                        out.general.push(format!("{}: {}", f.field, f.message));
                    }
                }
            }
            other => out.general.push(other.to_string()),
        }
        out
    }

    /// One message above the form.
    pub fn general(message: impl Into<String>) -> Self {
        FormErrors {
            fields: Vec::new(),
            general: vec![message.into()],
        }
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        FormErrors {
            fields: vec![FieldError {
                field: field.to_owned(),
                message: message.into(),
            }],
            general: Vec::new(),
        }
    }

    /// The message for one field (the first, if the backend gave several).
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.field == field)
            .map(|f| f.message.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.general.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_go_to_general() {
        let err = CommandError::Invalid {
            fields: vec![
                FieldError {
                    field: "hostname".into(),
                    message: "bad".into(),
                },
                FieldError {
                    field: "elsewhere".into(),
                    message: "worse".into(),
                },
            ],
        };
        let e = FormErrors::from_error(err, &["hostname"]);
        assert_eq!(e.get("hostname"), Some("bad"));
        assert_eq!(e.get("elsewhere"), None);
        assert_eq!(e.general, vec!["elsewhere: worse".to_owned()]);
    }

    #[test]
    fn statuses() {
        let c = |m: &str| CommandError::Conflict { message: m.into() };
        assert_eq!(status_of(&c("x")), StatusCode::CONFLICT);
        assert_eq!(
            status_of(&CommandError::field("a", "b")),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status_of(&CommandError::Remote {
                message: "x".into()
            }),
            StatusCode::BAD_GATEWAY
        );
    }
}

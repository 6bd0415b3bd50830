//! The one error of this crate: a field of a timetable or quota that is wrong, and why.

/// `field: message`, e.g. `weekly[1].end: the slot ends at 09:00 but starts at 10:00: …`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field, as the JSON body spells it (`weekly[1].end`, `zone`).
    pub field: String,
    /// What is wrong with it, in a sentence.
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

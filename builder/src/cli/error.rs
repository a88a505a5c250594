//! The CLI's error: a message and an exit code (2 bad input, 1 failure), made from any
//! library error through [`Classify`].

use crate::error::Classify;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Failed(String),
}

impl CommandError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::BadInput(_) => 2,
            CommandError::Failed(_) => 1,
        }
    }
}

impl<E: Classify> From<E> for CommandError {
    fn from(e: E) -> Self {
        if e.is_bad_input() {
            CommandError::BadInput(e.to_string())
        } else {
            CommandError::Failed(e.to_string())
        }
    }
}

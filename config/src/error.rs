//! Load errors: every ill-formed input problem, each naming file, line, object and field.

use std::fmt;
use std::path::PathBuf;

/// One problem found while reading the input. Bad *references* are never problems: they
/// are statuses. Problems are things the Kubernetes API server itself would reject.
#[derive(Debug, thiserror::Error)]
pub enum LoadProblem {
    /// A file or directory could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Unreadable {
        /// The path that failed.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML (or JSON).
    #[error(
        "{}:{line}{}: YAML syntax error: {message}",
        file.display(),
        column.map(|c| format!(":{c}")).unwrap_or_default()
    )]
    Syntax {
        /// File holding the document.
        file: PathBuf,
        /// 1-based line of the error in the file (where the parser found it).
        line: usize,
        /// 1-based column of the error, when the parser gives one.
        column: Option<usize>,
        /// The parser's message; any position in it is a file line too.
        message: String,
    },
    /// A document parsed as YAML but is not a valid object of its kind (wrong field type,
    /// missing required field, value out of range).
    #[error("{}:{line}: {kind} {object}: field {field}: {message}", file.display())]
    Invalid {
        /// File holding the document.
        file: PathBuf,
        /// 1-based line of the error (or of the document when the field has no position).
        line: usize,
        /// `apiVersion` and `kind` of the object, e.g. `gateway.networking.k8s.io/v1 Gateway`.
        kind: String,
        /// `namespace/name` of the object (`?` when absent).
        object: String,
        /// Field path, e.g. `spec.listeners[0].port`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Every problem of one load, in input order. `Display` prints one line per problem.
#[derive(Debug)]
pub struct LoadError {
    /// The problems, at least one.
    pub problems: Vec<LoadProblem>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.problems
            .first()
            .map(|p| p as &(dyn std::error::Error + 'static))
    }
}

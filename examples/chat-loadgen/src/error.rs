//! The load generator's error type.

/// What stopped a run. Failures of single sends or connections do not stop a run; they are
/// counted in the report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad options.
    #[error("{0}")]
    Usage(String),
    /// Creating users, logging in or opening the sockets failed.
    #[error("{what}")]
    Setup {
        /// What was being done, with the server's answer when there was one.
        what: String,
        /// The cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Writing the JSON report failed.
    #[error("writing {path}: {source}")]
    Output {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Drawing or writing the plot failed.
    #[error("plotting {path}: {what}")]
    Plot {
        /// The file.
        path: String,
        /// What went wrong.
        what: String,
    },
}

impl Error {
    pub(crate) fn setup(what: String, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Setup {
            what: format!("{what}: {source}"),
            source: Some(Box::new(source)),
        }
    }
}

/// A result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

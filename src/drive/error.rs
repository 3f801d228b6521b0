//! `FsError`: every way a filesystem operation fails, and the one place that maps them to errno.

use crate::blobstore::BlobStoreError;

/// Errors of the filesystem core. Variants that POSIX names map to their errno; the rest
/// carry what went wrong for the log and map to `EIO`.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("name too long")]
    NameTooLong,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("permission denied")]
    Access,
    #[error("read-only file system")]
    ReadOnly,
    #[error("bad file handle")]
    BadHandle,
    #[error("no such attribute")]
    NoAttr,
    #[error("attribute value or list does not fit the buffer")]
    Range,
    #[error("too many links")]
    TooManyLinks,
    #[error("file too large")]
    TooBig,
    #[error("operation not supported")]
    NotSupported,
    #[error("no space left on the local disk that holds the drive's data directory")]
    NoSpace,
    #[error("local disk: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("metadata database: {0}")]
    Schema(String),
    #[error("blob store: {0}")]
    Store(#[from] BlobStoreError),
    #[error("data of inode {ino} at offset {offset} does not match its recorded hash")]
    Corrupt { ino: u64, offset: u64 },
    #[error("the drive is shutting down")]
    ShuttingDown,
}

impl FsError {
    /// The errno a FUSE reply carries for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::NotPermitted => libc::EPERM,
            FsError::Access => libc::EACCES,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle => libc::EBADF,
            FsError::NoAttr => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::TooBig => libc::EFBIG,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::NoSpace => libc::ENOSPC,
            FsError::Db(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull =>
            {
                libc::ENOSPC
            }
            // The local disk's own errno tells the program the truth (ENOSPC, EDQUOT, EFBIG…).
            FsError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            FsError::Store(BlobStoreError::NotFound { .. }) => libc::EIO,
            FsError::Db(_)
            | FsError::Schema(_)
            | FsError::Store(_)
            | FsError::Corrupt { .. }
            | FsError::ShuttingDown => libc::EIO,
        }
    }

    /// Errors a program causes (ENOENT on lookup, EEXIST…) are routine; the rest deserve a log
    /// line.
    pub fn is_routine(&self) -> bool {
        !matches!(
            self,
            FsError::Io { .. }
                | FsError::Db(_)
                | FsError::Schema(_)
                | FsError::Store(_)
                | FsError::Corrupt { .. }
                | FsError::ShuttingDown
        )
    }
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> FsError {
    let context = context.into();
    move |source| FsError::Io { context, source }
}

pub type FsResult<T> = Result<T, FsError>;

//! Where the lines go: stdout or a file. A line is written whole or not at
//! all: when a write fails part way (a full disk), the part already written
//! is cut off again, so a reader never sees half a record.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    mem::ManuallyDrop,
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The reader went away (EPIPE): not an error for a pipeline like
    /// `oomtrace run | head -1`.
    #[error("output closed")]
    Closed,
    /// Printed once, with its cause in the message (not as a `source`, which
    /// would print it twice).
    #[error("writing {target}: {error}")]
    Io { target: String, error: io::Error },
}

impl WriteError {
    /// Whether the destination may take lines again later: a full disk or
    /// quota (space can come back), a file past its size limit (until it
    /// is rotated). Other errors (EIO from a /proc file, EBADF, EINVAL) say
    /// the destination cannot take records at all.
    pub fn may_pass(&self) -> bool {
        match self {
            Self::Closed => false,
            Self::Io { error, .. } => matches!(
                error.raw_os_error(),
                Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG | libc::EAGAIN | libc::EINTR)
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "{0} is a FIFO with no reader: start its reader first, or pipe stdout instead \
         (`oomtrace run | READER`)"
    )]
    FifoWithoutReader(PathBuf),
    #[error("cannot open {path}: {error}")]
    Open { path: PathBuf, error: io::Error },
}

pub struct Destination {
    /// The open file; for stdout, fd 1 (never closed here).
    out: ManuallyDrop<File>,
    /// The file's path; None for stdout.
    path: Option<PathBuf>,
}

impl Destination {
    pub fn stdout() -> Self {
        // SAFETY: fd 1 stays open for the life of the process (Rust's runtime
        // opens /dev/null there if it was closed), and ManuallyDrop keeps this
        // File from closing it.
        let out = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
        Self { out, path: None }
    }

    /// Appends to `path`, creating it (mode 0644) if needed. A FIFO without
    /// a reader is an error rather than a silent wait before anything is
    /// traced.
    pub fn file(path: &Path) -> Result<Self, OpenError> {
        let file = open_append(path)?;
        Ok(Self {
            out: ManuallyDrop::new(file),
            path: Some(path.to_path_buf()),
        })
    }

    /// What the records go to, for messages.
    pub fn target(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => "stdout".to_string(),
        }
    }

    /// True when records go to stdout and stdout is /dev/null: the shell
    /// redirected it there, or it was closed at start (`oomtrace run >&-`),
    /// which Rust's runtime turns into /dev/null. Either way nothing is kept.
    pub fn discards_everything(&self) -> bool {
        self.path.is_none()
            && self
                .out
                .metadata()
                .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == libc::makedev(1, 3))
    }

    /// Opens `--output` again (after logrotate moved it away, on SIGHUP).
    /// False for stdout, which has nothing to reopen.
    pub fn reopen(&mut self) -> Result<bool, OpenError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let file = open_append(path)?;
        let old = std::mem::replace(&mut self.out, ManuallyDrop::new(file));
        drop(ManuallyDrop::into_inner(old));
        Ok(true)
    }

    /// Writes one line, which ends with its newline, whole or not at all.
    pub fn write_line(&mut self, line: &[u8]) -> Result<(), WriteError> {
        let mut written = 0;
        while written < line.len() {
            match self.out.write(&line[written..]) {
                Ok(0) => return Err(self.failed(written, io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(WriteError::Closed),
                Err(e) => return Err(self.failed(written, e)),
            }
        }
        Ok(())
    }

    /// A write failed after `written` bytes of the line: cut them off again
    /// where the destination is a file (a pipe or terminal cannot take bytes
    /// back; there a write of a line up to PIPE_BUF, 4 KiB, is atomic).
    fn failed(&mut self, written: usize, error: io::Error) -> WriteError {
        if written > 0 {
            let cut = self
                .out
                .metadata()
                .ok()
                .filter(|m| m.is_file())
                .and_then(|m| m.len().checked_sub(written as u64))
                .map(|len| self.out.set_len(len));
            match cut {
                Some(Ok(())) => {}
                Some(Err(e)) => log::error!(
                    "{}: could not cut off a partly written line ({e}); the next line \
                     follows the fragment",
                    self.target()
                ),
                None => log::error!(
                    "{}: a line was cut short by: {error}; the next line follows the fragment",
                    self.target()
                ),
            }
        }
        WriteError::Io {
            target: self.target(),
            error,
        }
    }
}

impl AsRawFd for Destination {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.out.as_raw_fd()
    }
}

/// Opens for appending without blocking on a FIFO that has no reader
/// (O_NONBLOCK makes that open fail with ENXIO), then makes writes
/// blocking again.
fn open_append(path: &Path) -> Result<File, OpenError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| match error.raw_os_error() {
            Some(libc::ENXIO) => OpenError::FifoWithoutReader(path.to_path_buf()),
            _ => OpenError::Open {
                path: path.to_path_buf(),
                error,
            },
        })?;
    // SAFETY: fcntl on an fd this function owns.
    let cleared = unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        flags >= 0 && libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if !cleared {
        return Err(OpenError::Open {
            path: path.to_path_buf(),
            error: io::Error::last_os_error(),
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_without_reader_is_an_error_not_a_wait() {
        let dir = std::env::temp_dir().join(format!("oomtrace-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("c string");
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        match Destination::file(&fifo) {
            Err(OpenError::FifoWithoutReader(p)) => assert_eq!(p, fifo),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened a FIFO without a reader"),
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn errors_print_their_cause_once() {
        let e = WriteError::Io {
            target: "x".into(),
            error: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        let text = format!("{:#}", anyhow::Error::new(e));
        assert_eq!(text.matches("No space left").count(), 1, "{text}");
    }
}

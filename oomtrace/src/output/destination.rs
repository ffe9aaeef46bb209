//! Where the lines go: stdout or a file. Each line is written whole and
//! flushed at once, so a reader (or a crash) never sees half a line.

use std::{
    fs::OpenOptions,
    io::{self, Write},
    path::Path,
};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The reader went away (EPIPE): not an error for a pipeline like
    /// `oomtrace run | head -1`.
    #[error("output closed")]
    Closed,
    #[error("writing output: {0}")]
    Io(#[source] io::Error),
}

pub struct Destination {
    out: Box<dyn Write + Send>,
}

impl Destination {
    pub fn stdout() -> Self {
        Self {
            out: Box::new(io::stdout()),
        }
    }

    /// Appends to `path`, creating it (mode 0644) if needed.
    pub fn file(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            out: Box::new(file),
        })
    }

    /// Writes one line, which ends with its newline.
    pub fn write_line(&mut self, line: &[u8]) -> Result<(), WriteError> {
        self.out
            .write_all(line)
            .and_then(|()| self.out.flush())
            .map_err(|e| match e.kind() {
                io::ErrorKind::BrokenPipe => WriteError::Closed,
                _ => WriteError::Io(e),
            })
    }
}

//! Where `oomtrace report` reads from: files (plain or gzip, detected by
//! their magic bytes, so that rotated `*.gz` and `*-json.log.1` read
//! alike), directories (recursively, in name order) and stdin, each as a
//! stream of lines no longer than [`MAX_LINE`].

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use flate2::bufread::MultiGzDecoder;

/// The longest line read, in bytes (1 MiB). A record is a few KiB; a
/// longer line is skipped and counted, and never held whole in memory.
pub const MAX_LINE: usize = 1 << 20;

/// Each variant prints its cause in its own message and marks none as
/// `#[source]` (anyhow's `{:#}` would print it twice).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: {error}")]
    Open { path: String, error: io::Error },
    #[error("{path}: listing the directory: {error}")]
    List { path: String, error: io::Error },
}

/// One input as named on the command line, or found under a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Stdin,
    File(PathBuf),
}

impl Source {
    /// As `file:line:` messages name it.
    pub fn name(&self) -> String {
        match self {
            Self::Stdin => "-".to_string(),
            Self::File(path) => path.display().to_string(),
        }
    }
}

/// The sources behind the command line's arguments: `-` (or nothing) is
/// stdin, a directory is every regular file under it (symlinks to files
/// followed, symlinked directories not, so that no loop is walked), in
/// name order.
pub fn expand(args: &[PathBuf]) -> Result<Vec<Source>, InputError> {
    if args.is_empty() {
        return Ok(vec![Source::Stdin]);
    }
    let mut out = Vec::new();
    for arg in args {
        if arg.as_os_str() == "-" {
            out.push(Source::Stdin);
            continue;
        }
        let meta = std::fs::metadata(arg).map_err(|error| InputError::Open {
            path: arg.display().to_string(),
            error,
        })?;
        if meta.is_dir() {
            walk(arg, &mut out)?;
        } else {
            out.push(Source::File(arg.clone()));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<Source>) -> Result<(), InputError> {
    let list = |error| InputError::List {
        path: dir.display().to_string(),
        error,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(list)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(list)?;
    entries.sort();
    for path in entries {
        let Ok(link) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if link.is_dir() {
            walk(&path, out)?;
        } else if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            out.push(Source::File(path));
        }
    }
    Ok(())
}

/// Opens a source as a buffered stream of its (decompressed) bytes.
pub fn open(source: &Source) -> Result<Box<dyn BufRead>, InputError> {
    let raw: Box<dyn Read> = match source {
        Source::Stdin => Box::new(io::stdin().lock()),
        Source::File(path) => Box::new(File::open(path).map_err(|error| InputError::Open {
            path: path.display().to_string(),
            error,
        })?),
    };
    let mut reader = BufReader::with_capacity(1 << 16, raw);
    let gzip = reader
        .fill_buf()
        .map_err(|error| InputError::Open {
            path: source.name(),
            error,
        })?
        .starts_with(&[0x1f, 0x8b]);
    if gzip {
        Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            MultiGzDecoder::new(reader),
        )))
    } else {
        Ok(Box::new(reader))
    }
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line (in the buffer, without its newline). The last line of a
    /// stream may lack one.
    Whole,
    /// A line longer than the maximum: its bytes were skipped up to its
    /// newline, and the buffer is empty.
    TooLong,
    Eof,
}

/// Reads one line into `buf` (cleared first), holding at most `max`
/// bytes of it: a longer line is read through to its end and dropped.
#[cfg(test)]
pub fn read_line(input: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    buf.clear();
    append_line(input, buf, max)
}

/// Reads one line onto the end of `buf` (without its newline), holding at
/// most `max` bytes of it: a longer line is read through to its end and
/// dropped, and `buf` is left as it was. On an error, `buf` may hold a
/// part of the line.
pub fn append_line(input: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    let start = buf.len();
    let mut too_long = false;
    let mut any = false;
    loop {
        let available = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(match (any, too_long) {
                (false, _) => Line::Eof,
                (true, true) => Line::TooLong,
                (true, false) => Line::Whole,
            });
        }
        any = true;
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if !too_long {
            if buf.len() - start + chunk.len() > max {
                too_long = true;
                buf.truncate(start);
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let used = done.unwrap_or(available.len());
        input.consume(used);
        if done.is_some() {
            return Ok(if too_long { Line::TooLong } else { Line::Whole });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn lines(mut input: &[u8], max: usize) -> Vec<Result<String, String>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            match read_line(&mut input, &mut buf, max) {
                Ok(Line::Eof) => return out,
                Ok(Line::Whole) => out.push(Ok(String::from_utf8_lossy(&buf).into_owned())),
                Ok(Line::TooLong) => out.push(Err("too long".into())),
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[test]
    fn lines_longer_than_the_maximum_are_skipped_whole() {
        let long = "x".repeat(100);
        let input = format!("a\n{long}\nb\n\nlast");
        let got = lines(input.as_bytes(), 10);
        assert_eq!(
            got,
            vec![
                Ok("a".into()),
                Err("too long".into()),
                Ok("b".into()),
                Ok("".into()),
                Ok("last".into())
            ]
        );
    }

    #[test]
    fn a_long_line_at_the_end_without_newline() {
        let got = lines("y".repeat(50).as_bytes(), 10);
        assert_eq!(got, vec![Err("too long".into())]);
    }

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("oomtrace-input-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).expect("gzip");
        encoder.finish().expect("gzip")
    }

    fn read_all(source: &Source) -> Vec<Result<String, String>> {
        let mut input = open(source).expect("open");
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            match read_line(&mut *input, &mut buf, MAX_LINE) {
                Ok(Line::Eof) => return out,
                Ok(Line::Whole) => out.push(Ok(String::from_utf8_lossy(&buf).into_owned())),
                Ok(Line::TooLong) => out.push(Err("too long".into())),
                Err(_) => {
                    out.push(Err("io".into()));
                    return out;
                }
            }
        }
    }

    #[test]
    fn directories_recursively_plain_and_gzip_alike() {
        let dir = temp("walk");
        std::fs::create_dir_all(dir.join("b/c")).expect("mkdir");
        std::fs::write(dir.join("a.log"), "one\ntwo\n").expect("write");
        std::fs::write(dir.join("b/c/d.log.1"), gzip(b"three\n")).expect("write");
        // Two gzip members, as `cat x.gz y.gz` makes.
        let mut two = gzip(b"four\n");
        two.extend(gzip(b"five\n"));
        std::fs::write(dir.join("b/e.gz"), two).expect("write");
        let sources = expand(std::slice::from_ref(&dir)).expect("expand");
        let names: Vec<String> = sources
            .iter()
            .map(|s| {
                s.name()
                    .trim_start_matches(&dir.display().to_string())
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["/a.log", "/b/c/d.log.1", "/b/e.gz"]);
        let got: Vec<_> = sources.iter().flat_map(read_all).collect();
        assert_eq!(
            got,
            ["one", "two", "three", "four", "five"].map(|s| Ok(s.to_string()))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn truncated_gzip_is_an_error_after_what_it_held() {
        let dir = temp("trunc");
        let whole = gzip("line\n".repeat(10_000).as_bytes());
        let file = dir.join("cut.gz");
        std::fs::write(&file, &whole[..whole.len() / 2]).expect("write");
        let got = read_all(&Source::File(file));
        assert_eq!(got.last(), Some(&Err("io".to_string())), "ends in an error");
        assert!(got.len() > 1, "the lines before the cut are read");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_file_names_itself() {
        let error = expand(&[PathBuf::from("/nonexistent/x.log")]).expect_err("missing");
        assert!(
            error.to_string().starts_with("/nonexistent/x.log: "),
            "{error}"
        );
    }
}

//! One memcg's files, kept open and read with pread, and the parsing of
//! what they hold: `memory.stat` (v1 and v2) and PSI lines.
//!
//! Kept open because a sample every second of hundreds of cgroups would
//! otherwise cost an open and a close per file per sample; pread at offset
//! 0 re-reads a cgroup file from its start without a seek.

use std::{
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

/// Which cgroup version's file names and `memory.stat` fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn usage_file(self) -> &'static str {
        match self {
            Self::V1 => "memory.usage_in_bytes",
            Self::V2 => "memory.current",
        }
    }

    /// Files held open per memcg: usage and stat, and on v2 its pressure
    /// and `memory.max` (v1's limit is in `memory.stat`).
    pub fn files_per_cgroup(self) -> usize {
        match self {
            Self::V1 => 2,
            Self::V2 => 4,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The cgroup was removed (its open files then read ENODEV), or a file
    /// could not be opened or read.
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a number of bytes: {text:?}")]
    Parse { path: PathBuf, text: String },
}

/// The figures of one `memory.stat`, in bytes; None where this kernel or
/// cgroup version has no such field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatFigures {
    pub anon: Option<u64>,
    pub file: Option<u64>,
    pub active_file: Option<u64>,
    pub inactive_file: Option<u64>,
    pub shmem: Option<u64>,
    pub kernel: Option<u64>,
    pub slab: Option<u64>,
}

/// `avg10` of the `some` and `full` lines of a PSI file, in percent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Psi {
    pub some_avg10: f32,
    pub full_avg10: f32,
}

/// Parses `memory.stat`. On v1 the hierarchical `total_*` fields are taken
/// (this memcg's and its descendants', as v2 and `memory.usage_in_bytes`
/// count): `total_rss` as anon, `total_cache` as file (it holds shmem, as
/// v2's `file` does), `total_shmem`, `total_active_file`,
/// `total_inactive_file`. v1 has no kernel or slab field there.
pub fn parse_stat(text: &str, version: Version) -> StatFigures {
    let mut figures = StatFigures::default();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<u64>() else {
            continue;
        };
        let slot = match (version, name) {
            (Version::V1, "total_rss") | (Version::V2, "anon") => &mut figures.anon,
            (Version::V1, "total_cache") | (Version::V2, "file") => &mut figures.file,
            (Version::V1, "total_active_file") | (Version::V2, "active_file") => {
                &mut figures.active_file
            }
            (Version::V1, "total_inactive_file") | (Version::V2, "inactive_file") => {
                &mut figures.inactive_file
            }
            (Version::V1, "total_shmem") | (Version::V2, "shmem") => &mut figures.shmem,
            (Version::V2, "kernel") => &mut figures.kernel,
            (Version::V2, "slab") => &mut figures.slab,
            _ => continue,
        };
        *slot = Some(value);
    }
    figures
}

/// Parses a PSI file (`some avg10=1.23 avg60=… total=…` and `full …`).
/// None when the `some` line is missing or malformed; a missing `full`
/// line (older kernels' CPU files) reads as 0.
pub fn parse_psi(text: &str) -> Option<Psi> {
    let avg10 = |kind: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(kind))
            .and_then(|rest| {
                rest.split_whitespace()
                    .find_map(|field| field.strip_prefix("avg10="))
            })
            .and_then(|value| value.parse::<f32>().ok())
    };
    Some(Psi {
        some_avg10: avg10("some ")?,
        full_avg10: avg10("full ").unwrap_or(0.0),
    })
}

/// A reusable read buffer: a v2 `memory.stat` is about 2 KiB.
pub struct Buffer(Vec<u8>);

impl Default for Buffer {
    fn default() -> Self {
        Self(vec![0; 8192])
    }
}

impl Buffer {
    /// Reads `file` from offset 0 into the buffer, growing it for a file
    /// that fills it.
    pub fn pread<'a>(&'a mut self, file: &File, path: &Path) -> Result<&'a str, ReadError> {
        let io = |source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut len = 0;
        loop {
            let n = file.read_at(&mut self.0[len..], len as u64).map_err(io)?;
            len += n;
            if n == 0 || len < self.0.len() {
                break;
            }
            self.0.resize(self.0.len() * 2, 0);
        }
        Ok(std::str::from_utf8(&self.0[..len]).unwrap_or(""))
    }
}

/// One memcg's open files.
pub struct CgroupFiles {
    dir: PathBuf,
    usage: File,
    stat: File,
    /// v2 only: the memcg's own `memory.pressure` (absent without PSI).
    pressure: Option<File>,
    /// v2 only: `memory.max`, read at every walk ([`Self::refresh_limit`]),
    /// not at every sample: limits change seldom.
    max: Option<File>,
    /// v2: the last `memory.max` read (None for `max`).
    limit: Option<u64>,
    version: Version,
}

/// One read of a memcg's files.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reading {
    pub usage: u64,
    pub stat: StatFigures,
    pub pressure: Option<Psi>,
    /// The limit in force: v1 `hierarchical_memory_limit` (the lowest of
    /// the memcg's and its ancestors'), v2 its own `memory.max` as last
    /// read (an ancestor's limit is its ancestor's, sampled on its own).
    /// None for no limit.
    pub limit: Option<u64>,
}

/// Above this a v1 limit means "no limit" (the kernel prints
/// PAGE_COUNTER_MAX in bytes, 0x7ffffffffffff000 with 4 KiB pages).
const NO_LIMIT: u64 = 1 << 62;

/// v1 `hierarchical_memory_limit` from `memory.stat`; None when absent or
/// unlimited.
pub fn parse_v1_limit(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("hierarchical_memory_limit "))
        .and_then(|value| value.trim().parse::<u64>().ok())
        .filter(|&limit| limit < NO_LIMIT)
}

/// v2 `memory.max`: bytes, or `max` (None).
pub fn parse_v2_max(text: &str) -> Option<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|&limit| limit < NO_LIMIT)
}

impl CgroupFiles {
    pub fn open(dir: &Path, version: Version) -> Result<Self, ReadError> {
        let open = |name: &str| {
            let path = dir.join(name);
            File::open(&path).map_err(|source| ReadError::Io { path, source })
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            usage: open(version.usage_file())?,
            stat: open("memory.stat")?,
            pressure: match version {
                Version::V2 => open("memory.pressure").ok(),
                Version::V1 => None,
            },
            max: match version {
                Version::V2 => open("memory.max").ok(),
                Version::V1 => None,
            },
            limit: None,
            version,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// v2: re-reads `memory.max`. A read error leaves the limit unknown.
    pub fn refresh_limit(&mut self, buffer: &mut Buffer) {
        if let Some(file) = &self.max {
            self.limit = buffer
                .pread(file, &self.dir.join("memory.max"))
                .ok()
                .and_then(parse_v2_max);
        }
    }

    pub fn read(&self, buffer: &mut Buffer) -> Result<Reading, ReadError> {
        let usage_path = || self.dir.join(self.version.usage_file());
        let text = buffer.pread(&self.usage, &usage_path())?;
        let usage = text.trim().parse::<u64>().map_err(|_| ReadError::Parse {
            path: usage_path(),
            text: text.trim().to_string(),
        })?;
        let stat_text = buffer.pread(&self.stat, &self.dir.join("memory.stat"))?;
        let stat = parse_stat(stat_text, self.version);
        let limit = match self.version {
            Version::V1 => parse_v1_limit(stat_text),
            Version::V2 => self.limit,
        };
        let pressure = match &self.pressure {
            Some(file) => parse_psi(buffer.pread(file, &self.dir.join("memory.pressure"))?),
            None => None,
        };
        Ok(Reading {
            usage,
            stat,
            pressure,
            limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real v1 `memory.stat` of a memcg with children (its own fields
    /// are 0, the `total_*` ones are not).
    const V1_STAT: &str = include_str!("testdata/v1-memory.stat");
    /// A v2 `memory.stat` in the format of the kernel's
    /// Documentation/admin-guide/cgroup-v2.rst.
    const V2_STAT: &str = include_str!("testdata/v2-memory.stat");

    #[test]
    fn v1_takes_the_hierarchical_totals() {
        let f = parse_stat(V1_STAT, Version::V1);
        assert_eq!(f.anon, Some(645_021_696), "total_rss, not rss (0)");
        assert_eq!(f.file, Some(8_616_341_504), "total_cache");
        assert_eq!(f.shmem, Some(86_016));
        assert_eq!(f.active_file, Some(3_523_158_016));
        assert_eq!(f.inactive_file, Some(5_093_093_376));
        assert_eq!((f.kernel, f.slab), (None, None), "v1 has neither");
    }

    #[test]
    fn v2_fields_by_name() {
        let f = parse_stat(V2_STAT, Version::V2);
        assert_eq!(f.anon, Some(104_857_600));
        assert_eq!(f.file, Some(52_428_800));
        assert_eq!(f.kernel, Some(6_291_456));
        assert_eq!(f.shmem, Some(4_194_304));
        assert_eq!(f.active_file, Some(20_971_520));
        assert_eq!(f.inactive_file, Some(27_262_976));
        assert_eq!(f.slab, Some(3_145_728), "slab, not slab_reclaimable");
    }

    #[test]
    fn v2_names_are_not_read_as_v1_and_back() {
        assert_eq!(parse_stat(V2_STAT, Version::V1).anon, None);
        assert_eq!(parse_stat(V1_STAT, Version::V2).anon, None);
        assert_eq!(
            parse_stat("anon x\nfile\n\n", Version::V2),
            StatFigures::default()
        );
    }

    #[test]
    fn limits() {
        assert_eq!(parse_v1_limit(V1_STAT), None, "unlimited");
        assert_eq!(
            parse_v1_limit("cache 0\nhierarchical_memory_limit 67108864\n"),
            Some(64 << 20)
        );
        assert_eq!(parse_v2_max("max\n"), None);
        assert_eq!(parse_v2_max("33554432\n"), Some(32 << 20));
    }

    #[test]
    fn psi_lines() {
        let text = "some avg10=1.50 avg60=0.20 avg300=0.00 total=123\n\
                    full avg10=0.75 avg60=0.10 avg300=0.00 total=45\n";
        assert_eq!(
            parse_psi(text),
            Some(Psi {
                some_avg10: 1.5,
                full_avg10: 0.75
            })
        );
        assert_eq!(parse_psi("full avg10=1.00 total=1\n"), None);
        assert_eq!(parse_psi(""), None);
    }

    #[test]
    fn pread_grows_for_a_long_file() {
        let dir = std::env::temp_dir().join(format!("oomtrace-pread-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("long");
        let long = "x".repeat(20_000);
        std::fs::write(&path, &long).expect("write");
        let file = File::open(&path).expect("open");
        let mut buffer = Buffer::default();
        assert_eq!(buffer.pread(&file, &path).expect("read").len(), 20_000);
        assert_eq!(buffer.pread(&file, &path).expect("again").len(), 20_000);
        std::fs::remove_dir_all(&dir).expect("clean");
    }
}

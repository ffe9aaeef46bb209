//! The ring buffer: the programs' one ordered stream of records, read and
//! decoded into kernel events.

use std::ops::Deref;

use aya::maps::{MapData, RingBuf};
use oomtrace_ebpf::{
    CGROUP_PATH_MAX, ExitRecord, KILL_RECORD_MIN, KillRecord, RECORD_EXIT, RECORD_KILL,
};

/// One record from the programs.
#[derive(Debug)]
pub enum KernelEvent {
    Kill(Box<KillEvent>),
    Exit(ExitRecord),
}

/// A kill record as the ring buffer carried it: the fixed part, and the
/// cgroup names that followed it (`rec.cgroup_names_len` bytes, leaf first,
/// each NUL-terminated). Held at the length the kernel sent, so a queued
/// kill costs its path's bytes, not the longest path's.
#[derive(Clone, Debug)]
pub struct KillEvent {
    pub rec: KillRecord,
    pub names: Vec<u8>,
}

impl KillEvent {
    /// A kill with no cgroup names (a record whose walk sent none).
    #[cfg(test)]
    pub fn without_names(rec: KillRecord) -> Self {
        Self {
            rec,
            names: Vec::new(),
        }
    }
}

impl Deref for KillEvent {
    type Target = KillRecord;
    fn deref(&self) -> &KillRecord {
        &self.rec
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {len} bytes is too short for kind {kind}")]
    Short { kind: u32, len: usize },
    #[error("ring buffer record of unknown kind {kind}")]
    UnknownKind { kind: u32 },
    #[error(
        "kill record of {len} bytes says it carries {names_len} bytes of cgroup names: \
         it must be {KILL_RECORD_MIN} bytes and the names, at most {CGROUP_PATH_MAX}"
    )]
    KillLength { len: usize, names_len: u32 },
}

/// Decodes one record. The programs and this function compile the same
/// `#[repr(C)]` types, so a length check is all the validation a record
/// needs: an exit record is at least its type's size, a kill record exactly
/// its fixed part plus the names it says follow. Nothing past `bytes` is
/// ever read.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let kind = match bytes.get(..4) {
        Some(k) => u32::from_ne_bytes([k[0], k[1], k[2], k[3]]),
        None => {
            return Err(DecodeError::Short {
                kind: 0,
                len: bytes.len(),
            });
        }
    };
    match kind {
        RECORD_KILL => decode_kill(bytes).map(|k| KernelEvent::Kill(Box::new(k))),
        RECORD_EXIT => read::<ExitRecord>(bytes, kind).map(KernelEvent::Exit),
        kind => Err(DecodeError::UnknownKind { kind }),
    }
}

fn decode_kill(bytes: &[u8]) -> Result<KillEvent, DecodeError> {
    let rec = read::<KillRecord>(bytes, RECORD_KILL)?;
    let names = &bytes[KILL_RECORD_MIN..];
    let names_len = rec.cgroup_names_len;
    if names_len as usize > CGROUP_PATH_MAX || names.len() != names_len as usize {
        return Err(DecodeError::KillLength {
            len: bytes.len(),
            names_len,
        });
    }
    Ok(KillEvent {
        rec,
        names: names.to_vec(),
    })
}

fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
        });
    }
    // SAFETY: the length is checked, T is a plain-old-data #[repr(C)] type
    // for which every bit pattern is valid, and the read is unaligned.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Hands every record the kernel has queued to `deliver`, in ring order.
/// Copies each out and releases its slot at once, so the ring never waits
/// on what the receiver does with it.
pub fn drain(ring: &mut RingBuf<MapData>, mut deliver: impl FnMut(KernelEvent)) {
    while let Some(item) = ring.next() {
        let decoded = decode(&item);
        drop(item);
        match decoded {
            Ok(event) => deliver(event),
            Err(e) => log::warn!("skipping a ring buffer record: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oomtrace_ebpf::Known;

    fn bytes_of<T>(value: &T) -> &[u8] {
        // SAFETY: viewing a POD struct as bytes.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
    }

    #[test]
    fn exit_record_round_trips() {
        let rec = ExitRecord {
            kind: RECORD_EXIT,
            boot_ns: 42,
            kill_seq: 7,
            exit_code: Known::new(9),
            ..Default::default()
        };
        let bytes = bytes_of(&rec);
        match decode(bytes) {
            Ok(KernelEvent::Exit(back)) => assert_eq!(back, rec),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            decode(&bytes[..10]).err(),
            Some(DecodeError::Short {
                kind: RECORD_EXIT,
                len: 10
            })
        );
        assert_eq!(
            decode(&[9, 0, 0, 0]).err(),
            Some(DecodeError::UnknownKind { kind: 9 })
        );
        assert!(decode(&[1]).is_err());
    }

    /// A kill record as the programs send it: the fixed part, then as many
    /// bytes of names as it says.
    fn kill_bytes(names: &[u8], names_len: u32) -> Vec<u8> {
        // SAFETY: all-zero is a valid KillRecord (the programs start so).
        let mut rec: KillRecord = unsafe { std::mem::zeroed() };
        rec.kind = RECORD_KILL;
        rec.seq = 5;
        rec.cgroup_names_len = names_len;
        let mut bytes = bytes_of(&rec).to_vec();
        bytes.extend_from_slice(names);
        bytes
    }

    #[test]
    fn kill_records_are_their_fixed_part_and_their_names() {
        let bytes = kill_bytes(b"ctr\0pod\0", 8);
        assert_eq!(bytes.len(), KILL_RECORD_MIN + 8);
        match decode(&bytes) {
            Ok(KernelEvent::Kill(kill)) => {
                assert_eq!(kill.seq, 5);
                assert_eq!(kill.names, b"ctr\0pod\0");
            }
            other => panic!("unexpected {other:?}"),
        }
        let longest = vec![b'a'; CGROUP_PATH_MAX];
        let bytes = kill_bytes(&longest, CGROUP_PATH_MAX as u32);
        assert_eq!(bytes.len(), oomtrace_ebpf::KILL_RECORD_MAX);
        assert!(matches!(decode(&bytes), Ok(KernelEvent::Kill(k)) if k.names == longest));
        let none = kill_bytes(&[], 0);
        assert!(matches!(decode(&none), Ok(KernelEvent::Kill(k)) if k.names.is_empty()));
    }

    #[test]
    fn inconsistent_kill_records_are_refused() {
        let err = |names: &[u8], names_len: u32| {
            let bytes = kill_bytes(names, names_len);
            let len = bytes.len();
            (decode(&bytes).err(), len)
        };
        // Fewer bytes than the names it claims: never read past them.
        let (e, len) = err(b"ab", 8);
        assert_eq!(e, Some(DecodeError::KillLength { len, names_len: 8 }));
        // More bytes than it claims.
        let (e, len) = err(b"abcdef", 2);
        assert_eq!(e, Some(DecodeError::KillLength { len, names_len: 2 }));
        // A length no program sends, with the bytes to match.
        let too_long = vec![b'a'; CGROUP_PATH_MAX + 1];
        let (e, len) = err(&too_long, too_long.len() as u32);
        assert_eq!(
            e,
            Some(DecodeError::KillLength {
                len,
                names_len: too_long.len() as u32
            })
        );
        let (e, _) = err(&[], u32::MAX);
        assert!(matches!(e, Some(DecodeError::KillLength { .. })));
        // Shorter than the fixed part.
        let bytes = kill_bytes(&[], 0);
        assert_eq!(
            decode(&bytes[..KILL_RECORD_MIN - 1]).err(),
            Some(DecodeError::Short {
                kind: RECORD_KILL,
                len: KILL_RECORD_MIN - 1
            })
        );
    }
}

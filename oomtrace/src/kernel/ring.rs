//! The ring buffer: the programs' one ordered stream of records, read and
//! decoded into kernel events.

use aya::maps::{MapData, RingBuf};
use oomtrace_ebpf::{ExitRecord, KillRecord, RECORD_EXIT, RECORD_KILL};

/// One record from the programs.
#[derive(Debug)]
pub enum KernelEvent {
    Kill(Box<KillRecord>),
    Exit(ExitRecord),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {len} bytes is too short for kind {kind}")]
    Short { kind: u32, len: usize },
    #[error("ring buffer record of unknown kind {kind}")]
    UnknownKind { kind: u32 },
}

/// Decodes one record. The programs and this function compile the same
/// `#[repr(C)]` types, so a size check is all the validation a record needs.
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
        RECORD_KILL => read::<KillRecord>(bytes, kind).map(|r| KernelEvent::Kill(Box::new(r))),
        RECORD_EXIT => read::<ExitRecord>(bytes, kind).map(KernelEvent::Exit),
        kind => Err(DecodeError::UnknownKind { kind }),
    }
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

    #[test]
    fn exit_record_round_trips() {
        let rec = ExitRecord {
            kind: RECORD_EXIT,
            boot_ns: 42,
            kill_seq: 7,
            exit_code: Known::new(9),
            ..Default::default()
        };
        // SAFETY: viewing a POD struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const rec).cast::<u8>(), size_of::<ExitRecord>())
        };
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
}

//! Token shards: a small binary format read back with validation.
//!
//! Layout (little endian): magic `OPTTOKS\0` (8 bytes), version u32 = 1, token width u32 (2 = u16,
//! 4 = u32), token count u64, then the tokens. Written to a temp file and renamed, so an
//! interrupted write never leaves a shard that looks complete.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"OPTTOKS\0";
const VERSION: u32 = 1;
const HEADER: usize = 24;

/// Errors reading or writing a shard.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a token shard ({message})")]
    Format { path: PathBuf, message: String },
}

/// Write `tokens` to `path` (u16 when every id fits, else u32), atomically.
pub fn write_shard(path: &Path, tokens: &[u32]) -> Result<(), ShardError> {
    let width: u32 = if tokens.iter().all(|&t| t <= u16::MAX as u32) {
        2
    } else {
        4
    };
    let mut bytes = Vec::with_capacity(HEADER + tokens.len() * width as usize);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&width.to_le_bytes());
    bytes.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
    for &t in tokens {
        if width == 2 {
            bytes.extend_from_slice(&(t as u16).to_le_bytes());
        } else {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
    }
    crate::fsutil::write_atomic(path, &bytes).map_err(|source| ShardError::Io {
        path: path.into(),
        source,
    })
}

/// Read a shard into memory, checking its header against its size.
pub fn read_shard(path: &Path) -> Result<Vec<u32>, ShardError> {
    Ok(open_shard(path)?.to_vec())
}

/// Memory-map a shard, checking its header against its size; tokens are read on demand.
pub fn open_shard(path: &Path) -> Result<Tokens, ShardError> {
    let io = |source| ShardError::Io {
        path: path.into(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only; shards are written by rename and never modified in place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let bad = |message: String| ShardError::Format {
        path: path.into(),
        message,
    };
    if map.len() < HEADER || &map[..8] != MAGIC {
        return Err(bad("missing OPTTOKS header".into()));
    }
    let u32_at = |i: usize| u32::from_le_bytes(map[i..i + 4].try_into().unwrap());
    let (version, width) = (u32_at(8), u32_at(12));
    let count = u64::from_le_bytes(map[16..24].try_into().unwrap()) as usize;
    if version != VERSION {
        return Err(bad(format!("version {version}, expected {VERSION}")));
    }
    if width != 2 && width != 4 {
        return Err(bad(format!("token width {width}, expected 2 or 4")));
    }
    let body = map.len() - HEADER;
    if count.checked_mul(width as usize) != Some(body) {
        return Err(bad(format!(
            "header says {count} tokens of {width} bytes, but the file holds {body} bytes of tokens"
        )));
    }
    Ok(Tokens(Arc::new(Storage::Mapped {
        map,
        width: width as usize,
        len: count,
    })))
}

fn decode_tokens(bytes: &[u8], width: usize) -> Vec<u32> {
    match width {
        2 => bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
    }
}

/// A token stream: in memory, or a memory-mapped shard whose tokens are read on demand.
/// Cloning is cheap (shared).
#[derive(Clone)]
pub struct Tokens(Arc<Storage>);

enum Storage {
    Owned(Vec<u32>),
    Mapped {
        map: memmap2::Mmap,
        width: usize,
        len: usize,
    },
}

impl Tokens {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        match &*self.0 {
            Storage::Owned(v) => v.len(),
            Storage::Mapped { len, .. } => *len,
        }
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens `start..end` (borrowed when in memory, decoded from the map otherwise).
    pub fn range(&self, start: usize, end: usize) -> Cow<'_, [u32]> {
        match &*self.0 {
            Storage::Owned(v) => Cow::Borrowed(&v[start..end]),
            Storage::Mapped { map, width, .. } => {
                let bytes = &map[HEADER + start * width..HEADER + end * width];
                Cow::Owned(decode_tokens(bytes, *width))
            }
        }
    }

    /// All tokens, copied.
    pub fn to_vec(&self) -> Vec<u32> {
        self.range(0, self.len()).into_owned()
    }
}

impl From<Vec<u32>> for Tokens {
    fn from(v: Vec<u32>) -> Self {
        Self(Arc::new(Storage::Owned(v)))
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &*self.0 {
            Storage::Owned(_) => "in memory",
            Storage::Mapped { .. } => "mapped",
        };
        write!(f, "Tokens({} tokens, {kind})", self.len())
    }
}

impl PartialEq for Tokens {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.range(0, self.len()) == other.range(0, other.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("opt-shard-test-{}-{name}", std::process::id()))
    }

    #[test]
    fn round_trip_u16_and_u32_and_reject_bad_files() {
        for (name, tokens) in [
            ("small", vec![0u32, 2, 65535, 7]),
            ("large", vec![1, 50271, 70000, 3]),
        ] {
            let path = tmp(name);
            write_shard(&path, &tokens).unwrap();
            let width = if name == "small" { 2 } else { 4 };
            assert_eq!(
                std::fs::metadata(&path).unwrap().len() as usize,
                HEADER + width * tokens.len()
            );
            assert_eq!(read_shard(&path).unwrap(), tokens);
            let mapped = open_shard(&path).unwrap();
            assert_eq!((mapped.len(), &*mapped.range(1, 3)), (4, &tokens[1..3]));
            assert_eq!(mapped, Tokens::from(tokens.clone()));
            // A shard whose size disagrees with its header is refused, naming both.
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
            let e = read_shard(&path).unwrap_err().to_string();
            assert!(
                e.contains("header says 4 tokens") && e.contains(&path.display().to_string()),
                "{e}"
            );
            std::fs::write(&path, b"not a shard at all, definitely").unwrap();
            assert!(read_shard(&path)
                .unwrap_err()
                .to_string()
                .contains("OPTTOKS"));
            std::fs::remove_file(&path).unwrap();
        }
    }
}

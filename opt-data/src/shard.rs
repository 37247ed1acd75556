//! Token shards: a small binary format read back with validation.
//!
//! Layout (little endian): magic `OPTTOKS\0` (8 bytes), version u32 = 1, token width u32 (2 = u16,
//! 4 = u32), token count u64, then the tokens. Written to a temp file and renamed, so an
//! interrupted write never leaves a shard that looks complete.

use std::path::{Path, PathBuf};

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

/// Read a shard, checking its header against its size.
pub fn read_shard(path: &Path) -> Result<Vec<u32>, ShardError> {
    let bytes = std::fs::read(path).map_err(|source| ShardError::Io {
        path: path.into(),
        source,
    })?;
    let bad = |message: String| ShardError::Format {
        path: path.into(),
        message,
    };
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(bad("missing OPTTOKS header".into()));
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    let (version, width) = (u32_at(8), u32_at(12));
    let count = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    if version != VERSION {
        return Err(bad(format!("version {version}, expected {VERSION}")));
    }
    if width != 2 && width != 4 {
        return Err(bad(format!("token width {width}, expected 2 or 4")));
    }
    let body = &bytes[HEADER..];
    if body.len() != count * width as usize {
        return Err(bad(format!(
            "header says {count} tokens of {width} bytes, but the file holds {} bytes of tokens",
            body.len()
        )));
    }
    Ok(match width {
        2 => body
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
            .collect(),
        _ => body
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
    })
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

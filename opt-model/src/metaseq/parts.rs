//! Finding and ordering the part files: a model-parallel checkpoint is given as all of its
//! `-model_part-K` files, in any order; a missing, duplicated or extra sibling is an error that
//! names it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::error::MetaseqError;

/// `<prefix>model_part-<index><suffix>`, e.g. `reshard-model_part-1.pt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PartName {
    prefix: String,
    index: usize,
    suffix: String,
}

impl PartName {
    /// Parse a file name; `None` when it has no `model_part-K`.
    fn parse(file_name: &str) -> Option<Self> {
        let (head, tail) = file_name.rsplit_once("model_part-")?;
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        let index = tail[..digits].parse().ok()?;
        Some(Self {
            prefix: format!("{head}model_part-"),
            index,
            suffix: tail[digits..].to_string(),
        })
    }

    /// The name of part `index` of the same set.
    pub(super) fn with_index(&self, index: usize) -> String {
        format!("{}{index}{}", self.prefix, self.suffix)
    }

    /// Whether `other` names a part of the same set.
    fn same_set(&self, other: &Self) -> bool {
        self.prefix == other.prefix && self.suffix == other.suffix
    }
}

/// The part name of a path, if its file name has one.
pub(super) fn part_name(path: &Path) -> Option<PartName> {
    PartName::parse(path.file_name()?.to_str()?)
}

/// Sort the given files by part index and check the set is 0..N-1 with no sibling left out.
/// Returns the files and whether they are named parts (a lone unnamed file is a singleton).
pub(super) fn order_parts(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, bool), MetaseqError> {
    let Some(first) = paths.first() else {
        return Err(MetaseqError::NoFiles);
    };
    if paths.len() == 1 && part_name(first).is_none() {
        return Ok((vec![first.clone()], false));
    }
    let mut named = Vec::with_capacity(paths.len());
    for path in paths {
        let name = part_name(path).ok_or_else(|| MetaseqError::Parts {
            path: path.clone(),
            message: "several files were given, but this one is not named `...-model_part-K.pt`; give the parts of one model-parallel checkpoint, or a single file".into(),
        })?;
        named.push((name, path.clone()));
    }
    named.sort_by_key(|(n, _)| n.index);
    check_indices(&named)?;
    check_siblings(&named)?;
    Ok((named.into_iter().map(|(_, p)| p).collect(), true))
}

/// Indices must be exactly 0..N-1, each once, all of one set.
fn check_indices(named: &[(PartName, PathBuf)]) -> Result<(), MetaseqError> {
    let (first, first_path) = &named[0];
    for (expected, (name, path)) in named.iter().enumerate() {
        if !name.same_set(first) {
            return Err(MetaseqError::Parts {
                path: path.clone(),
                message: format!(
                    "not part of the same set of files as {}",
                    first_path.display()
                ),
            });
        }
        if name.index != expected {
            let message = if name.index < expected {
                format!("part {} given twice", name.index)
            } else {
                format!(
                    "part {expected} of this model-parallel checkpoint is missing ({}); give every part",
                    first.with_index(expected)
                )
            };
            return Err(MetaseqError::Parts {
                path: path.clone(),
                message,
            });
        }
    }
    Ok(())
}

/// Files of the same set next to part 0 with an index past the given ones are missing parts.
fn check_siblings(named: &[(PartName, PathBuf)]) -> Result<(), MetaseqError> {
    let (first, path) = &named[0];
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(()); // Best effort: the files themselves are opened next.
    };
    let extra: BTreeSet<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| PartName::parse(f).is_some_and(|n| n.same_set(first) && n.index >= named.len()))
        .collect();
    if extra.is_empty() {
        return Ok(());
    }
    Err(MetaseqError::Parts {
        path: path.clone(),
        message: format!(
            "{} part(s) given, but {} also holds {}; give every part of the model-parallel checkpoint",
            named.len(),
            dir.display(),
            extra.into_iter().collect::<Vec<_>>().join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths in a folder that does not exist: no sibling is found, only the names count.
    fn paths(names: &[&str]) -> Vec<PathBuf> {
        names
            .iter()
            .map(|n| Path::new("/nonexistent-opt-test").join(n))
            .collect()
    }

    #[test]
    fn part_names_parse() {
        let n = PartName::parse("reshard-model_part-12.pt").unwrap();
        assert_eq!(
            (n.prefix.as_str(), n.index, n.suffix.as_str()),
            ("reshard-model_part-", 12, ".pt")
        );
        assert_eq!(n.with_index(3), "reshard-model_part-3.pt");
        assert!(PartName::parse("reshard.pt").is_none());
        assert!(PartName::parse("model_part-x.pt").is_none());
    }

    #[test]
    fn parts_are_ordered_and_gaps_named() {
        let given = paths(&[
            "r-model_part-2.pt",
            "r-model_part-0.pt",
            "r-model_part-1.pt",
        ]);
        let (files, named) = order_parts(&given).unwrap();
        assert!(named);
        assert_eq!(
            files,
            paths(&[
                "r-model_part-0.pt",
                "r-model_part-1.pt",
                "r-model_part-2.pt"
            ])
        );
        let gap = order_parts(&paths(&["r-model_part-0.pt", "r-model_part-2.pt"])).unwrap_err();
        assert!(
            gap.to_string().contains(
                "part 1 of this model-parallel checkpoint is missing (r-model_part-1.pt)"
            ),
            "{gap}"
        );
        let twice = order_parts(&paths(&["r-model_part-0.pt", "r-model_part-0.pt"])).unwrap_err();
        assert!(twice.to_string().contains("part 0 given twice"), "{twice}");
        let mixed = order_parts(&paths(&["a-model_part-0.pt", "b-model_part-1.pt"])).unwrap_err();
        assert!(
            mixed.to_string().contains("not part of the same set"),
            "{mixed}"
        );
        // A single file without a part name is a whole (unsharded) checkpoint.
        assert!(!order_parts(&paths(&["reshard.pt"])).unwrap().1);
        assert!(matches!(order_parts(&[]), Err(MetaseqError::NoFiles)));
    }
}

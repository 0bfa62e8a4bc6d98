//! The files of a database directory that the manifest and the store share: their kinds,
//! their names, and what the manifest records of each. Below both (`docs/design.md`), so
//! neither imports the other.

/// What a data or blob file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Page images.
    Data,
    /// Large values.
    Blob,
}

impl FileKind {
    /// On-disk code.
    pub fn code(self) -> u32 {
        match self {
            FileKind::Data => 1,
            FileKind::Blob => 2,
        }
    }

    /// From the on-disk code.
    pub fn from_code(c: u32) -> Option<FileKind> {
        match c {
            1 => Some(FileKind::Data),
            2 => Some(FileKind::Blob),
            _ => None,
        }
    }

    /// File name of file `id` of this kind.
    pub fn file_name(self, id: u64) -> String {
        match self {
            FileKind::Data => format!("data-{id:016x}.rkv"),
            FileKind::Blob => format!("blob-{id:016x}.rkv"),
        }
    }
}

/// A data or blob file as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// File id (names the file).
    pub id: u64,
    /// Data or blob.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Logical address intervals it holds.
    pub ranges: Vec<(u64, u64)>,
}

/// The id of a `data-<16 hex>.rkv` or `blob-<16 hex>.rkv` file name.
pub(crate) fn parse_file_id(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("data-").or_else(|| name.strip_prefix("blob-"))?;
    let hex = rest.strip_suffix(".rkv")?;
    u64::from_str_radix(hex, 16).ok()
}

/// Which kind of file a name is (`data-...` or `blob-...`).
pub(crate) fn file_kind_of(name: &str) -> Option<FileKind> {
    if name.starts_with("data-") {
        Some(FileKind::Data)
    } else if name.starts_with("blob-") {
        Some(FileKind::Blob)
    } else {
        None
    }
}

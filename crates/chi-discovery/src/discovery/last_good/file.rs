//! The last-known-good file itself: its name, its format, and how it is written and read.
//!
//! One JSON object per service:
//!
//! ```json
//! {
//!   "format": "chi-last-known-good",
//!   "version": 1,
//!   "checksum": "crc32:5d8b1a7e",
//!   "body": {
//!     "service": "user-service",
//!     "registry": "etcd(endpoints=127.0.0.1:2379,prefix=/chi/services)",
//!     "written_at": "2025-01-01T12:00:00.000Z",
//!     "instances": [ ... ]
//!   }
//! }
//! ```
//!
//! The checksum is CRC-32 (IEEE, as zlib's) over the compact JSON of `body`, so a flipped byte
//! anywhere in the body is caught even when the JSON still parses. A file is used only when it
//! parses, has this format and version, its checksum matches, and it names the service asked
//! for and the registry the client talks to; anything else is a [`FileError`] that the caller
//! logs and then ignores the file.
//!
//! Written atomically: a temporary file in the same directory, written, fsynced, renamed over the
//! old one, and the directory fsynced. A reader (this process or the next) sees the old file or
//! the new one, never a mix or a prefix.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::instance::Instance;

/// The `format` field: what kind of file this is.
pub(crate) const FORMAT: &str = "chi-last-known-good";
/// The `version` field. A file of another version is ignored, never guessed at.
pub(crate) const VERSION: u32 = 1;
/// A larger file is not read (a list of tens of thousands of instances is still far below).
const MAX_BYTES: u64 = 64 << 20;
/// How much of the service name the file name keeps readable (the hash keeps it unique).
const READABLE_NAME: usize = 96;
/// Temporary files start with this; they are never read as lists.
pub(crate) const TEMP_PREFIX: &str = ".chi-lkg-";

/// Why a last-known-good file could not be written or was not used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot encode the list: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("the file is {0} bytes, more than the {MAX_BYTES} a list may take")]
    TooLarge(u64),
    #[error("not a valid last-known-good file: {0}")]
    Corrupt(String),
    #[error("format version {found}, expected {VERSION}")]
    Version { found: u32 },
    #[error("checksum mismatch: the file says {recorded}, its body has {computed}")]
    Checksum { recorded: String, computed: String },
    #[error("it holds service {found:?}, expected {expected:?}")]
    OtherService { found: String, expected: String },
    #[error("it came from registry {found:?}, this client uses {expected:?}")]
    OtherRegistry { found: String, expected: String },
}

/// A list read back from a file that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Loaded {
    /// The instances, as the registry last answered.
    pub(crate) instances: Vec<Instance>,
    /// When it was written (RFC 3339, UTC), for the log line that says how old it is.
    pub(crate) written_at: String,
}

/// Only `format` and `version`: read first, so a file of another version is named as such
/// instead of failing on a body it does not have.
#[derive(Deserialize)]
struct Header {
    format: Option<String>,
    version: Option<u32>,
}

#[derive(Serialize)]
struct FileOut<'a> {
    format: &'static str,
    version: u32,
    checksum: String,
    body: &'a BodyOut<'a>,
}

/// The body as written; serialises exactly as [`BodyIn`] (same fields, same order).
#[derive(Serialize)]
struct BodyOut<'a> {
    service: &'a str,
    registry: &'a str,
    written_at: String,
    instances: &'a [Instance],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn {
    /// Checked by [`Header`] first.
    #[serde(rename = "format")]
    _format: String,
    #[serde(rename = "version")]
    _version: u32,
    checksum: String,
    body: BodyIn,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyIn {
    service: String,
    registry: String,
    written_at: String,
    instances: Vec<Instance>,
}

/// The file name of `service`: a readable part (the name percent-encoded down to
/// `[A-Za-z0-9_-]`, cut at [`READABLE_NAME`] bytes) and a hash of the exact name, so no input
/// becomes a path (no `/`, no `..`, no leading dot), two names never share a file (not even on a
/// case-insensitive file system), and the name stays short for any valid service name.
pub(crate) fn file_name(service: &str) -> String {
    let mut readable = String::new();
    for b in service.bytes() {
        let piece = if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            char::from(b).to_string()
        } else {
            format!("%{b:02X}")
        };
        if readable.len() + piece.len() > READABLE_NAME {
            break;
        }
        readable.push_str(&piece);
    }
    format!("{readable}-{:016x}.json", fnv1a64(service.as_bytes()))
}

/// The bytes of the file for `instances` of `service`, from `registry`, written at `at`.
pub(crate) fn encode(
    service: &str,
    registry: &str,
    instances: &[Instance],
    at: SystemTime,
) -> Result<Vec<u8>, FileError> {
    let body = BodyOut {
        service,
        registry,
        written_at: humantime::format_rfc3339_millis(at).to_string(),
        instances,
    };
    let compact = serde_json::to_vec(&body).map_err(FileError::Encode)?;
    let file = FileOut {
        format: FORMAT,
        version: VERSION,
        checksum: checksum(&compact),
        body: &body,
    };
    let mut out = serde_json::to_vec_pretty(&file).map_err(FileError::Encode)?;
    out.push(b'\n');
    Ok(out)
}

/// The list in `bytes`, if it is a valid file for `service` from `registry`.
pub(crate) fn decode(bytes: &[u8], service: &str, registry: &str) -> Result<Loaded, FileError> {
    let header: Header =
        serde_json::from_slice(bytes).map_err(|e| FileError::Corrupt(e.to_string()))?;
    if header.format.as_deref() != Some(FORMAT) {
        return Err(FileError::Corrupt(format!(
            "format {:?}, expected {FORMAT:?}",
            header.format.unwrap_or_default()
        )));
    }
    match header.version {
        Some(VERSION) => {}
        Some(found) => return Err(FileError::Version { found }),
        None => return Err(FileError::Corrupt("no version".into())),
    }
    let file: FileIn =
        serde_json::from_slice(bytes).map_err(|e| FileError::Corrupt(e.to_string()))?;
    let compact = serde_json::to_vec(&file.body).map_err(FileError::Encode)?;
    let computed = checksum(&compact);
    if computed != file.checksum {
        return Err(FileError::Checksum {
            recorded: file.checksum,
            computed,
        });
    }
    let body = file.body;
    if body.service != service {
        return Err(FileError::OtherService {
            found: body.service,
            expected: service.to_owned(),
        });
    }
    if body.registry != registry {
        return Err(FileError::OtherRegistry {
            found: body.registry,
            expected: registry.to_owned(),
        });
    }
    Ok(Loaded {
        instances: body.instances,
        written_at: body.written_at,
    })
}

/// Reads and checks the file of `service` in `dir`. `Ok(None)`: there is none.
pub(crate) fn read(dir: &Path, service: &str, registry: &str) -> Result<Option<Loaded>, FileError> {
    let path = dir.join(file_name(service));
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if len > MAX_BYTES {
        return Err(FileError::TooLarge(len));
    }
    let bytes = std::fs::read(&path)?;
    decode(&bytes, service, registry).map(Some)
}

/// Writes `bytes` as the file of `service` in `dir` (created if missing), atomically: temporary
/// file, fsync, rename, fsync of the directory. On any failure the old file is untouched and the
/// temporary one is removed.
pub(crate) fn write_atomic(dir: &Path, service: &str, bytes: &[u8]) -> Result<PathBuf, FileError> {
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    let path = dir.join(file_name(service));
    tmp.persist(&path).map_err(|e| FileError::Io(e.error))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Makes the rename itself durable (the directory entry), where the platform allows it.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// `crc32:` and eight hex digits.
fn checksum(bytes: &[u8]) -> String {
    format!("crc32:{:08x}", crc32(bytes))
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and gzip): good at the damage files suffer (torn
/// writes, flipped bits), and small enough to carry here instead of a dependency.
pub(super) fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// FNV-1a, 64 bits: a hash that never changes between versions, so a file name stays the same.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

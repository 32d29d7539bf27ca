//! Power-loss emulation for `parley node` processes. SIGKILL alone loses no
//! written byte, because the kernel keeps its page cache and sled 0.34
//! pwrites every write batch at once. So the tool preloads `crash_shim.c`
//! into each node, which journals the bytes every pwrite overwrites and
//! every sync. After a power loss, `roll_back` undoes each write that no
//! later sync covered, leaving the files as a machine that lost power would
//! have them.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The preload library's source, compiled by `build_shim` for each run.
const SHIM_SOURCE: &str = include_str!("crash_shim.c");

/// Environment variable naming a node's undo journal.
pub const JOURNAL_VARIABLE: &str = "PARLEY_CRASH_JOURNAL";

/// Environment variable naming the directory whose files are journaled.
pub const DIR_VARIABLE: &str = "PARLEY_CRASH_DIR";

/// Environment variable with the milliseconds each journaled write waits.
pub const WRITE_DELAY_VARIABLE: &str = "PARLEY_CRASH_WRITE_DELAY_MS";

/// Compiles the preload library into `dir` with `$CC` (default `cc`) and
/// returns its path. The `power_loss` fault needs it.
pub fn build_shim(dir: &Path) -> Result<PathBuf> {
    let source = dir.join("crash_shim.c");
    let library = dir.join("libparley_crash.so");
    std::fs::write(&source, SHIM_SOURCE)
        .with_context(|| format!("failed to write {}", source.display()))?;
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let output = Command::new(&compiler)
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .output()
        .with_context(|| {
            format!(
                "failed to run the C compiler {compiler:?}, which power_loss needs; install one \
                 or set CC, or leave power_loss out of --faults"
            )
        })?;
    if !output.status.success() {
        bail!(
            "{compiler} failed to compile {}: {}",
            source.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(library)
}

/// The writes a roll-back undid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loss {
    /// Writes that no sync covered.
    pub writes: u64,
    /// Bytes those writes had written.
    pub bytes: u64,
}

/// One journaled pwrite and the bytes it overwrote.
#[derive(Clone, Debug)]
struct Undo {
    offset: u64,
    count: u64,
    size_before: u64,
    saved: Vec<u8>,
}

/// One journal record.
enum Record {
    Write {
        path: PathBuf,
        undo: Undo,
    },
    /// Writes inside `offset..offset + length` are durable; length 0 means
    /// up to the end of the file.
    Synced {
        path: PathBuf,
        offset: u64,
        length: u64,
    },
}

/// Undoes every unsynced write in `journal` and deletes the journal. A
/// missing journal means nothing was written since the node started.
pub fn roll_back(journal: &Path) -> Result<Loss> {
    let bytes = match std::fs::read(journal) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Loss::default()),
        Err(error) => {
            return Err(error).with_context(|| format!("failed to read {}", journal.display()))
        }
    };
    let records = parse(&bytes)
        .with_context(|| format!("the undo journal {} is corrupt", journal.display()))?;
    let mut loss = Loss::default();
    for (path, (pending, durable_end)) in unsynced_writes(records) {
        loss.writes += pending.len() as u64;
        loss.bytes += pending.iter().map(|undo| undo.count).sum::<u64>();
        restore(&path, &pending, durable_end)
            .with_context(|| format!("failed to undo unsynced writes to {}", path.display()))?;
    }
    std::fs::remove_file(journal)
        .with_context(|| format!("failed to remove {}", journal.display()))?;
    Ok(loss)
}

/// Deletes a journal left by a node that stopped without losing data.
pub fn discard(journal: &Path) -> Result<()> {
    match std::fs::remove_file(journal) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("failed to remove {}", journal.display())),
    }
}

/// Returns, per file, the writes no later sync covered, in order, and the
/// end of the furthest write that a sync did cover.
fn unsynced_writes(records: Vec<Record>) -> BTreeMap<PathBuf, (Vec<Undo>, u64)> {
    let mut files: BTreeMap<PathBuf, (Vec<Undo>, u64)> = BTreeMap::new();
    for record in records {
        match record {
            Record::Write { path, undo } => files.entry(path).or_default().0.push(undo),
            Record::Synced {
                path,
                offset,
                length,
            } => {
                let (pending, durable_end) = files.entry(path).or_default();
                pending.retain(|undo| {
                    let inside = undo.offset >= offset
                        && (length == 0 || undo.offset + undo.count <= offset + length);
                    if inside {
                        *durable_end = (*durable_end).max(undo.offset + undo.count);
                    }
                    !inside
                });
            }
        }
    }
    files.retain(|_, (pending, _)| !pending.is_empty());
    files
}

/// Writes back the saved bytes, newest write first, and cuts the file back
/// to its size before the oldest unsynced write, but never below durable
/// data. Bytes past the old end that durable data keeps become zeros.
fn restore(path: &Path, pending: &[Undo], durable_end: u64) -> std::io::Result<()> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        // A file removed after the write (a replaced snapshot) has nothing
        // to undo.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    let mut length = file.metadata()?.len();
    for undo in pending.iter().rev() {
        file.write_all_at(&undo.saved, undo.offset)?;
        if undo.size_before < length {
            length = undo.size_before.max(durable_end);
        }
        let zeros_start = undo.offset + undo.saved.len() as u64;
        let zeros_end = (undo.offset + undo.count).min(length);
        if zeros_start < zeros_end {
            file.write_all_at(&vec![0u8; (zeros_end - zeros_start) as usize], zeros_start)?;
        }
    }
    file.set_len(length)?;
    Ok(())
}

/// Parses every complete record. A kill can cut the last record short,
/// and that record's pwrite had not started, so it is ignored.
fn parse(bytes: &[u8]) -> Result<Vec<Record>> {
    let mut cursor = std::io::Cursor::new(bytes);
    let mut records = Vec::new();
    while (cursor.position() as usize) < bytes.len() {
        match parse_record(&mut cursor) {
            Ok(record) => records.push(record),
            Err(error) if is_truncated(&error) => break,
            Err(error) => return Err(error),
        }
    }
    Ok(records)
}

fn is_truncated(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|error| error.kind() == std::io::ErrorKind::UnexpectedEof)
}

fn parse_record(cursor: &mut std::io::Cursor<&[u8]>) -> Result<Record> {
    let mut kind = [0u8; 1];
    cursor.read_exact(&mut kind)?;
    let path_length = read_u32(cursor)? as usize;
    let mut path = vec![0u8; path_length];
    cursor.read_exact(&mut path)?;
    let path = PathBuf::from(String::from_utf8(path).context("a journal path is not UTF-8")?);
    let record = match kind[0] {
        b'W' => {
            let offset = read_u64(cursor)?;
            let count = read_u64(cursor)?;
            let size_before = read_u64(cursor)?;
            let saved_length = read_u64(cursor)? as usize;
            let mut saved = vec![0u8; saved_length];
            cursor.read_exact(&mut saved)?;
            let undo = Undo {
                offset,
                count,
                size_before,
                saved,
            };
            Record::Write { path, undo }
        }
        b'S' => Record::Synced {
            path,
            offset: read_u64(cursor)?,
            length: read_u64(cursor)?,
        },
        b'F' => Record::Synced {
            path,
            offset: 0,
            length: 0,
        },
        other => bail!(
            "unknown record kind {other:#04x} at byte {}",
            cursor.position() - 1
        ),
    };
    Ok(record)
}

fn read_u32(cursor: &mut std::io::Cursor<&[u8]>) -> Result<u32> {
    let mut bytes = [0u8; 4];
    cursor.read_exact(&mut bytes)?;
    Ok(u32::from_ne_bytes(bytes))
}

fn read_u64(cursor: &mut std::io::Cursor<&[u8]>) -> Result<u64> {
    let mut bytes = [0u8; 8];
    cursor.read_exact(&mut bytes)?;
    Ok(u64::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Appends a journal record in the shim's format, for tests.
    fn write_record(
        journal: &mut std::fs::File,
        kind: u8,
        path: &Path,
        fields: &[u64],
        saved: &[u8],
    ) {
        let path = path.to_str().unwrap().as_bytes();
        journal.write_all(&[kind]).unwrap();
        journal
            .write_all(&(path.len() as u32).to_ne_bytes())
            .unwrap();
        journal.write_all(path).unwrap();
        for field in fields {
            journal.write_all(&field.to_ne_bytes()).unwrap();
        }
        journal.write_all(saved).unwrap();
    }

    /// A C program that pwrites and writes through the shim, syncs some
    /// writes, and exits without syncing the rest, as a killed node would.
    const WRITER: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR | O_CREAT, 0600);
    pwrite(fd, "durable-", 8, 0);
    sync_file_range(fd, 0, 8, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                    SYNC_FILE_RANGE_WAIT_AFTER);
    pwrite(fd, "LOST", 4, 0);
    pwrite(fd, "tail-lost", 9, 8);
    lseek(fd, 0, SEEK_END);
    write(fd, "+write", 6);
    _exit(0);
}
"#;

    fn journal_with(records: &[(u8, &Path, Vec<u64>, &[u8])]) -> tempfile::NamedTempFile {
        let mut journal = tempfile::NamedTempFile::new().unwrap();
        for (kind, path, fields, saved) in records {
            write_record(journal.as_file_mut(), *kind, path, fields, saved);
        }
        journal
    }

    #[test]
    fn unsynced_append_is_cut_off() {
        let directory = tempfile::tempdir().unwrap();
        let data = directory.path().join("db");
        std::fs::write(&data, b"kept-appended").unwrap();
        // "appended" went to offset 5 of a 5-byte file and was never synced.
        let journal = journal_with(&[(b'W', &data, vec![5, 8, 5, 0], b"")]);
        let loss = roll_back(journal.path()).unwrap();
        assert_eq!(
            loss,
            Loss {
                writes: 1,
                bytes: 8
            }
        );
        assert_eq!(std::fs::read(&data).unwrap(), b"kept-");
        assert!(!journal.path().exists());
    }

    #[test]
    fn unsynced_overwrite_is_undone() {
        let directory = tempfile::tempdir().unwrap();
        let data = directory.path().join("db");
        std::fs::write(&data, b"NEWxx").unwrap();
        let journal = journal_with(&[(b'W', &data, vec![0, 3, 5, 3], b"old")]);
        roll_back(journal.path()).unwrap();
        assert_eq!(std::fs::read(&data).unwrap(), b"oldxx");
    }

    #[test]
    fn synced_write_survives() {
        let directory = tempfile::tempdir().unwrap();
        let data = directory.path().join("db");
        std::fs::write(&data, b"abcdef").unwrap();
        let journal = journal_with(&[
            (b'W', &data, vec![0, 3, 0, 0], b""),
            (b'S', &data, vec![0, 3], b""),
            (b'W', &data, vec![3, 3, 3, 0], b""),
            (b'F', &data, vec![], b""),
        ]);
        let loss = roll_back(journal.path()).unwrap();
        assert_eq!(loss, Loss::default());
        assert_eq!(std::fs::read(&data).unwrap(), b"abcdef");
    }

    #[test]
    fn unsynced_hole_below_durable_data_becomes_zeros() {
        let directory = tempfile::tempdir().unwrap();
        let data = directory.path().join("db");
        std::fs::write(&data, b"aaBBcc").unwrap();
        // "BB" extended a 2-byte file but stayed unsynced; "cc" was synced.
        let journal = journal_with(&[
            (b'W', &data, vec![2, 2, 2, 0], b""),
            (b'W', &data, vec![4, 2, 4, 0], b""),
            (b'S', &data, vec![4, 2], b""),
        ]);
        roll_back(journal.path()).unwrap();
        assert_eq!(std::fs::read(&data).unwrap(), b"aa\0\0cc");
    }

    #[test]
    fn cut_off_last_record_is_ignored() {
        let directory = tempfile::tempdir().unwrap();
        let data = directory.path().join("db");
        std::fs::write(&data, b"NEWxx").unwrap();
        let journal = journal_with(&[(b'W', &data, vec![0, 3, 5, 3], b"old")]);
        // A second record whose pwrite never started, cut after its kind.
        journal.as_file().write_all(b"W").unwrap();
        let loss = roll_back(journal.path()).unwrap();
        assert_eq!(
            loss,
            Loss {
                writes: 1,
                bytes: 3
            }
        );
        assert_eq!(std::fs::read(&data).unwrap(), b"oldxx");
    }

    #[test]
    fn missing_journal_loses_nothing() {
        let directory = tempfile::tempdir().unwrap();
        let loss = roll_back(&directory.path().join("none.journal")).unwrap();
        assert_eq!(loss, Loss::default());
    }

    #[test]
    fn corrupt_journal_is_reported() {
        let mut journal = tempfile::NamedTempFile::new().unwrap();
        journal.write_all(b"Z\x01\x00\x00\x00x").unwrap();
        let error = format!("{:#}", roll_back(journal.path()).unwrap_err());
        assert!(error.contains("is corrupt"), "{error}");
        assert!(error.contains("unknown record kind 0x5a"), "{error}");
    }

    #[test]
    fn shim_journals_real_process_writes() {
        let directory = tempfile::tempdir().unwrap();
        let library = build_shim(directory.path()).unwrap();
        let source = directory.path().join("writer.c");
        let writer = directory.path().join("writer");
        std::fs::write(&source, WRITER).unwrap();
        let compiled = Command::new("cc")
            .arg("-o")
            .arg(&writer)
            .arg(&source)
            .status()
            .unwrap();
        assert!(compiled.success());
        let data_dir = directory.path().join("data");
        std::fs::create_dir(&data_dir).unwrap();
        let data = data_dir.join("db");
        let journal = directory.path().join("node.journal");

        let status = Command::new(&writer)
            .arg(&data)
            .env("LD_PRELOAD", &library)
            .env(JOURNAL_VARIABLE, &journal)
            .env(DIR_VARIABLE, &data_dir)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read(&data).unwrap(), b"LOSTble-tail-lost+write");

        let loss = roll_back(&journal).unwrap();
        assert_eq!(
            loss,
            Loss {
                writes: 3,
                bytes: 19
            }
        );
        assert_eq!(std::fs::read(&data).unwrap(), b"durable-");
    }
}

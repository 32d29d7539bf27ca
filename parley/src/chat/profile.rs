//! Chat profiles: one TOML file per device that stores its user, device,
//! token and, per conversation, the cursor (the last seq this device has
//! printed and acknowledged).
//!
//! A profile is found from the `--as` value: `alice` is
//! `<profile dir>/alice.toml` (the device `register` created) and
//! `alice@laptop` is `<profile dir>/alice@laptop.toml` (a device `link`
//! added). Ids contain only ASCII letters, digits, '-', '_', '.' and ':'
//! (the core id rules), so `@` never occurs in one and the two forms cannot
//! collide.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use parley_gateway::proto::Cursor;
use serde::{Deserialize, Serialize};

/// One device's identity, token and cursors.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub user_id: String,
    pub device_id: String,
    pub token: String,
    /// Token expiry, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// Conversation id to the last seq this device has seen.
    #[serde(default)]
    pub cursors: BTreeMap<String, u64>,
}

/// The listener's action for a pushed message, given the stored cursor.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Seq is at or below the cursor: already printed, drop it.
    Duplicate,
    /// Seq is the cursor plus one: print it.
    Next,
    /// Seq skips past the cursor: fetch the messages after `after` first.
    Gap { after: u64 },
}

impl Profile {
    /// Reads the profile at `path`; `as_name` is the `--as` value, used to
    /// say which command creates the missing file.
    pub fn load(path: &Path, as_name: &str) -> Result<Profile> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                bail!(
                    "profile {} not found; create it with `{}`",
                    path.display(),
                    create_command(as_name)
                )
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("failed to read profile {}", path.display()))
            }
        };
        toml::from_str(&text).with_context(|| {
            format!(
                "profile {} is not valid; delete it and run `{}` again",
                path.display(),
                create_command(as_name)
            )
        })
    }

    /// Writes the profile to `path` with mode 0600 (it contains the token),
    /// through a temporary file and a rename so a crash never leaves half a
    /// profile.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).with_context(|| {
                format!("failed to create profile directory {}", parent.display())
            })?;
        }
        let text = toml::to_string(self).context("failed to encode the profile as TOML")?;
        let temporary = path.with_extension("toml.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("failed to create {}", temporary.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("failed to write {}", temporary.display()))?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("failed to replace profile {}", path.display()))
    }

    /// Returns the cursor of `conversation_id`, 0 when none is stored.
    pub fn cursor(&self, conversation_id: &str) -> u64 {
        self.cursors.get(conversation_id).copied().unwrap_or(0)
    }

    /// Moves the cursor of `conversation_id` forward to `seq`; never back.
    pub fn advance(&mut self, conversation_id: &str, seq: u64) {
        let cursor = self.cursors.entry(conversation_id.to_string()).or_insert(0);
        *cursor = (*cursor).max(seq);
    }

    /// Classifies a pushed message with sequence number `seq`.
    pub fn classify(&self, conversation_id: &str, seq: u64) -> Arrival {
        let cursor = self.cursor(conversation_id);
        if seq <= cursor {
            Arrival::Duplicate
        } else if seq == cursor + 1 {
            Arrival::Next
        } else {
            Arrival::Gap { after: cursor }
        }
    }

    /// Returns the cursors to open a session with.
    pub fn session_cursors(&self) -> Vec<Cursor> {
        self.cursors
            .iter()
            .map(|(conversation_id, seq)| Cursor {
                conversation_id: conversation_id.clone(),
                seq: *seq,
            })
            .collect()
    }
}

/// Returns the profile file for `--as NAME`, unless `--profile` names one.
pub fn profile_path(explicit: Option<&Path>, directory: &Path, as_name: &str) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    check_as_name(as_name)?;
    Ok(directory.join(format!("{as_name}.toml")))
}

/// Returns the `--as` name of a linked device's profile.
pub fn linked_name(user_id: &str, device_id: &str) -> String {
    format!("{user_id}@{device_id}")
}

/// Rejects names that would leave the profile directory or cannot be ids.
fn check_as_name(as_name: &str) -> Result<()> {
    let (user, device) = match as_name.split_once('@') {
        Some((user, device)) => (user, Some(device)),
        None => (as_name, None),
    };
    if is_valid_id(user) && device.is_none_or(is_valid_id) {
        return Ok(());
    }
    bail!(
        "--as {as_name:?} is invalid; write USER or USER@DEVICE, where ids are ASCII letters, \
         digits, '-', '_', '.' or ':'"
    )
}

/// Checks a user or device id given on its own, naming `argument` (such as
/// `USER` or `--device`) in the error.
pub fn check_id_argument(argument: &str, value: &str) -> Result<()> {
    if is_valid_id(value) {
        return Ok(());
    }
    bail!(
        "{argument} {value:?} is invalid; use 1 or more ASCII letters, digits, '-', '_', '.' \
         or ':' (not \".\" or \"..\")"
    )
}

/// Returns whether `part` can name a user or device in a profile file name.
fn is_valid_id(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b':'))
        && part != "."
        && part != ".."
}

fn create_command(as_name: &str) -> String {
    match as_name.split_once('@') {
        Some((user, device)) => format!("parley chat link --as {user} --device {device}"),
        None => format!("parley chat register {as_name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Profile {
        Profile {
            user_id: "alice".into(),
            device_id: "phone".into(),
            token: "v1|alice|phone|99|abcd".into(),
            expires_at_ms: 99,
            cursors: BTreeMap::from([("d:alice:bob".into(), 7), ("group-1".into(), 0)]),
        }
    }

    #[test]
    fn profile_round_trips_through_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("nested/alice.toml");
        alice().save(&path).unwrap();
        assert_eq!(Profile::load(&path, "alice").unwrap(), alice());
    }

    #[test]
    fn saved_profile_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("alice.toml");
        alice().save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn missing_profile_names_file_and_register() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("carol.toml");
        let error = Profile::load(&path, "carol").unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("parley chat register carol"), "{error}");
    }

    #[test]
    fn missing_linked_profile_names_link() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("carol@tablet.toml");
        let error = Profile::load(&path, "carol@tablet")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("parley chat link --as carol --device tablet"),
            "{error}"
        );
    }

    #[test]
    fn corrupt_profile_is_reported() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("alice.toml");
        std::fs::write(&path, "user_id = 3").unwrap();
        let error = Profile::load(&path, "alice").unwrap_err().to_string();
        assert!(error.contains("is not valid"), "{error}");
    }

    #[test]
    fn classify_drops_seen_and_detects_gaps() {
        let profile = alice();
        assert_eq!(profile.classify("d:alice:bob", 6), Arrival::Duplicate);
        assert_eq!(profile.classify("d:alice:bob", 7), Arrival::Duplicate);
        assert_eq!(profile.classify("d:alice:bob", 8), Arrival::Next);
        assert_eq!(
            profile.classify("d:alice:bob", 10),
            Arrival::Gap { after: 7 }
        );
        assert_eq!(profile.classify("unknown", 1), Arrival::Next);
        assert_eq!(profile.classify("unknown", 3), Arrival::Gap { after: 0 });
    }

    #[test]
    fn advance_never_moves_cursor_back() {
        let mut profile = alice();
        profile.advance("d:alice:bob", 9);
        profile.advance("d:alice:bob", 4);
        assert_eq!(profile.cursor("d:alice:bob"), 9);
        profile.advance("new", 2);
        assert_eq!(profile.cursor("new"), 2);
    }

    #[test]
    fn session_cursors_list_every_conversation() {
        let cursors = alice().session_cursors();
        let pairs: Vec<(&str, u64)> = cursors
            .iter()
            .map(|cursor| (cursor.conversation_id.as_str(), cursor.seq))
            .collect();
        assert_eq!(pairs, [("d:alice:bob", 7), ("group-1", 0)]);
    }

    #[test]
    fn as_name_selects_profile_file() {
        let directory = Path::new(".parley-chat");
        let path = profile_path(None, directory, "alice").unwrap();
        assert_eq!(path, directory.join("alice.toml"));
        let path = profile_path(None, directory, "alice@laptop").unwrap();
        assert_eq!(path, directory.join("alice@laptop.toml"));
        let explicit = Path::new("/tmp/x.toml");
        assert_eq!(
            profile_path(Some(explicit), directory, "alice").unwrap(),
            explicit
        );
    }

    #[test]
    fn as_name_rejects_paths() {
        for name in ["../alice", "a/b", "", "..", "alice@", "@phone", "a@b@c"] {
            let result = profile_path(None, Path::new("d"), name);
            assert!(result.is_err(), "{name:?} was accepted");
        }
    }

    #[test]
    fn id_argument_error_names_the_argument() {
        assert!(check_id_argument("--device", "laptop").is_ok());
        for value in ["", ".", "..", "a/b", "a@b", "ü"] {
            let error = check_id_argument("--device", value)
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with(&format!("--device {value:?} is invalid")),
                "{error}"
            );
        }
    }
}

//! `parley chat`: a command-line client of the gateway's client API, for
//! people and for scripts.
//!
//! Each device has a profile file (see `profile`) found from `--as`. Every
//! command prints stable, space-separated lines on stdout (see `format`),
//! and warnings on stderr. A failed call prints `error: CODE: message` and
//! the process exits with status 1.

mod client;
mod commands;
mod format;
mod listen;
#[cfg(test)]
mod listen_tests;
mod profile;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use client::Gateway;
use listen::{ListenLimits, Listener};
use profile::{check_id_argument, linked_name, profile_path, Profile};

/// `parley chat` flags and subcommand.
#[derive(Args, Debug)]
pub struct ChatArgs {
    /// Gateway address (IP:PORT).
    #[arg(long, global = true, default_value = "127.0.0.1:7100")]
    gateway: String,
    /// Directory of profiles: USER.toml per registered device and
    /// USER@DEVICE.toml per linked device.
    #[arg(long, global = true, default_value = ".parley-chat")]
    profile_dir: PathBuf,
    /// Profile file to use instead of the one --as (or register's USER)
    /// names in --profile-dir.
    #[arg(long, global = true)]
    profile: Option<PathBuf>,
    #[command(subcommand)]
    command: ChatCommand,
}

/// The device a command acts as.
#[derive(Args, Debug)]
struct Identity {
    /// USER for the device `register` created, USER@DEVICE for one `link`
    /// added.
    #[arg(long = "as", value_name = "USER[@DEVICE]")]
    name: String,
}

#[derive(Subcommand, Debug)]
enum ChatCommand {
    /// Register a new user with its first device; prints `user U device D`.
    Register {
        user: String,
        /// Id of the first device.
        #[arg(long, default_value = "cli")]
        device: String,
    },
    /// Add a device to the user; prints `user U device D`.
    Link {
        #[command(flatten)]
        identity: Identity,
        /// Id of the new device.
        #[arg(long)]
        device: String,
    },
    /// Create (or return) the direct conversation with PEER; prints its id.
    Direct {
        #[command(flatten)]
        identity: Identity,
        peer: String,
    },
    /// Create a group with the caller and MEMBERs.
    Group {
        #[command(flatten)]
        identity: Identity,
        group_id: String,
        members: Vec<String>,
    },
    /// Add members to a group.
    Add {
        #[command(flatten)]
        identity: Identity,
        group_id: String,
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Remove a member from a group.
    Remove {
        #[command(flatten)]
        identity: Identity,
        group_id: String,
        member: String,
    },
    /// Send a UTF-8 text message; prints `sent seq N`.
    Send {
        #[command(flatten)]
        identity: Identity,
        conversation: String,
        text: String,
        /// Client message id; a resend with the same id is not appended
        /// again. Default: a random one.
        #[arg(long)]
        client_id: Option<String>,
    },
    /// Move the read watermark; prints `read seq N`.
    Read {
        #[command(flatten)]
        identity: Identity,
        conversation: String,
        /// Seq to mark read. Default: the profile's cursor, or the
        /// conversation's last seq when the profile has none.
        #[arg(long)]
        seq: Option<u64>,
    },
    /// Print messages as `seq sender time text` lines.
    ///
    /// The time is RFC 3339 UTC. Text has control characters and
    /// backslashes escaped as in a Rust string literal; a body that is not
    /// UTF-8 prints as `<N bytes>`.
    History {
        #[command(flatten)]
        identity: Identity,
        conversation: String,
        /// First seq to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Maximum number of messages to print. Default: all.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
    /// Open the device session and print every event as one line.
    ///
    /// Lines: `ready N conversations`, `message CONV #SEQ SENDER: TEXT`,
    /// `receipt CONV delivered USER/DEVICE up to #SEQ`, `receipt CONV read
    /// USER up to #SEQ`, `typing CONV USER on|off`, `presence USER
    /// online|offline` and `membership CONV +ADDED... -REMOVED...`. Each
    /// message above the profile's cursor is printed once, then the cursor
    /// is saved and the message acknowledged. Repeats are dropped.
    Listen {
        #[command(flatten)]
        identity: Identity,
        /// Exit after printing this many new messages.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        /// Exit after this many seconds: with status 0, or with status 1
        /// when --count messages have not all arrived.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_secs: Option<u64>,
    },
    /// Send one typing indicator update.
    Typing {
        #[command(flatten)]
        identity: Identity,
        conversation: String,
        /// Send "stopped typing" instead of "typing".
        #[arg(long)]
        off: bool,
    },
    /// List the caller's conversations.
    Conversations {
        #[command(flatten)]
        identity: Identity,
    },
    /// Print whether users are online and when they were last seen.
    Presence {
        #[command(flatten)]
        identity: Identity,
        #[arg(required = true)]
        users: Vec<String>,
    },
}

/// Runs one `parley chat` command.
pub async fn run(args: ChatArgs) -> Result<()> {
    let gateway = Gateway::new(&args.gateway)?;
    let profiles = Profiles {
        directory: args.profile_dir,
        explicit: args.profile,
    };
    match args.command {
        ChatCommand::Register { user, device } => {
            register(&gateway, &profiles, &user, &device).await
        }
        ChatCommand::Link { identity, device } => {
            link(&gateway, &profiles, &identity, &device).await
        }
        ChatCommand::Listen {
            identity,
            count,
            timeout_secs,
        } => {
            let (profile, path) = profiles.load(&identity)?;
            let client = gateway.authed(&profile.token)?;
            let limits = ListenLimits {
                count,
                timeout: timeout_secs.map(Duration::from_secs),
            };
            let listener = Listener::new(gateway, client, profile, path);
            listener.listen(limits).await
        }
        command => run_with_profile(&gateway, &profiles, command).await,
    }
}

/// Runs the commands that only read the profile.
async fn run_with_profile(
    gateway: &Gateway,
    profiles: &Profiles,
    command: ChatCommand,
) -> Result<()> {
    use commands as c;
    let identity = command_identity(&command);
    let (profile, _) = profiles.load(identity)?;
    let client = gateway.authed(&profile.token)?;
    match command {
        ChatCommand::Direct { peer, .. } => c::direct(gateway, client, &peer).await,
        ChatCommand::Group {
            group_id, members, ..
        } => c::group(gateway, client, &group_id, members).await,
        ChatCommand::Add {
            group_id, members, ..
        } => c::add(gateway, client, &group_id, members).await,
        ChatCommand::Remove {
            group_id, member, ..
        } => c::remove(gateway, client, &group_id, &member).await,
        ChatCommand::Send {
            conversation,
            text,
            client_id,
            ..
        } => {
            let client_id = client_id.unwrap_or_else(random_client_id);
            c::send(gateway, client, &conversation, &text, &client_id).await
        }
        ChatCommand::Read {
            conversation, seq, ..
        } => c::mark_read(gateway, client, &profile, &conversation, seq).await,
        ChatCommand::History {
            conversation,
            from,
            limit,
            ..
        } => c::history(gateway, client, &conversation, from, limit).await,
        ChatCommand::Typing {
            conversation, off, ..
        } => {
            listen::send_typing(gateway, client, &profile, &conversation, !off).await?;
            let state = if off { "off" } else { "on" };
            println!("typing {conversation} {} {state}", profile.user_id);
            Ok(())
        }
        ChatCommand::Conversations { .. } => c::conversations(gateway, client).await,
        ChatCommand::Presence { users, .. } => c::presence(gateway, client, users).await,
        ChatCommand::Register { .. } | ChatCommand::Link { .. } | ChatCommand::Listen { .. } => {
            unreachable!("run handles register, link and listen")
        }
    }
}

fn command_identity(command: &ChatCommand) -> &Identity {
    match command {
        ChatCommand::Link { identity, .. }
        | ChatCommand::Direct { identity, .. }
        | ChatCommand::Group { identity, .. }
        | ChatCommand::Add { identity, .. }
        | ChatCommand::Remove { identity, .. }
        | ChatCommand::Send { identity, .. }
        | ChatCommand::Read { identity, .. }
        | ChatCommand::History { identity, .. }
        | ChatCommand::Listen { identity, .. }
        | ChatCommand::Typing { identity, .. }
        | ChatCommand::Conversations { identity }
        | ChatCommand::Presence { identity, .. } => identity,
        ChatCommand::Register { .. } => unreachable!("register creates the profile"),
    }
}

async fn register(gateway: &Gateway, profiles: &Profiles, user: &str, device: &str) -> Result<()> {
    // Ids name profile files unless --profile names the file.
    if profiles.explicit.is_none() {
        check_id_argument("USER", user)?;
        check_id_argument("--device", device)?;
    }
    let path = profiles.path(user)?;
    let profile = commands::register(gateway, user, device).await?;
    profile.save(&path)?;
    println!("user {} device {}", profile.user_id, profile.device_id);
    eprintln!(
        "profile saved to {}; act as this device with --as {user}",
        path.display()
    );
    Ok(())
}

async fn link(
    gateway: &Gateway,
    profiles: &Profiles,
    identity: &Identity,
    device: &str,
) -> Result<()> {
    check_id_argument("--device", device)?;
    let (profile, _) = profiles.load(identity)?;
    let new_name = linked_name(&profile.user_id, device);
    let new_path = profile_path(None, &profiles.directory, &new_name)?;
    // The profile stores the device's cursors. Linking a device again only
    // renews its token, so keep them and the next listen prints no repeats.
    let existing = if new_path.exists() {
        Some(Profile::load(&new_path, &new_name)?)
    } else {
        None
    };
    let client = gateway.authed(&profile.token)?;
    let mut linked = commands::link(gateway, client, device).await?;
    if let Some(existing) = existing {
        linked.cursors = existing.cursors;
        eprintln!("device {device:?} was already linked; its new token keeps its cursors");
    }
    linked.save(&new_path)?;
    println!("user {} device {}", linked.user_id, linked.device_id);
    eprintln!(
        "profile saved to {}; act as this device with --as {new_name}",
        new_path.display()
    );
    Ok(())
}

/// The profile directory and the `--profile` file that overrides it.
struct Profiles {
    directory: PathBuf,
    explicit: Option<PathBuf>,
}

impl Profiles {
    fn path(&self, as_name: &str) -> Result<PathBuf> {
        profile_path(self.explicit.as_deref(), &self.directory, as_name)
    }

    fn load(&self, identity: &Identity) -> Result<(Profile, PathBuf)> {
        let path = self.path(&identity.name)?;
        let profile = Profile::load(&path, &identity.name)?;
        Ok((profile, path))
    }
}

/// Returns a random client message id: 32 hex digits (128 bits), so two
/// sends from one device never share one by chance.
fn random_client_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::path::Path;

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(flatten)]
        chat: ChatArgs,
    }

    fn parse(words: &[&str]) -> Result<ChatArgs, clap::Error> {
        let argv = std::iter::once("chat").chain(words.iter().copied());
        TestCli::try_parse_from(argv).map(|cli| cli.chat)
    }

    fn error_kind(words: &[&str]) -> clap::error::ErrorKind {
        parse(words).unwrap_err().kind()
    }

    #[test]
    fn send_parses_flags_after_subcommand() {
        let args = parse(&[
            "send",
            "--as",
            "alice",
            "d:1",
            "hello there",
            "--client-id",
            "m1",
            "--gateway",
            "127.0.0.1:7200",
        ])
        .unwrap();
        assert_eq!(args.gateway, "127.0.0.1:7200");
        let ChatCommand::Send {
            identity,
            conversation,
            text,
            client_id,
        } = args.command
        else {
            panic!("parsed as another command");
        };
        assert_eq!(identity.name, "alice");
        assert_eq!(conversation, "d:1");
        assert_eq!(text, "hello there");
        assert_eq!(client_id.as_deref(), Some("m1"));
    }

    #[test]
    fn defaults_point_at_local_gateway() {
        let args = parse(&["register", "alice"]).unwrap();
        assert_eq!(args.gateway, "127.0.0.1:7100");
        assert_eq!(args.profile_dir, PathBuf::from(".parley-chat"));
        let ChatCommand::Register { user, device } = args.command else {
            panic!("parsed as another command");
        };
        assert_eq!(user, "alice");
        assert_eq!(device, "cli");
    }

    #[test]
    fn missing_as_is_a_usage_error() {
        use clap::error::ErrorKind;
        assert_eq!(
            error_kind(&["send", "d:1", "hi"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            error_kind(&["conversations"]),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn add_and_presence_need_users() {
        use clap::error::ErrorKind;
        let kind = error_kind(&["add", "--as", "alice", "g1"]);
        assert_eq!(kind, ErrorKind::MissingRequiredArgument);
        let kind = error_kind(&["presence", "--as", "alice"]);
        assert_eq!(kind, ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn zero_count_and_timeout_are_rejected() {
        use clap::error::ErrorKind;
        let kind = error_kind(&["listen", "--as", "bob", "--count", "0"]);
        assert_eq!(kind, ErrorKind::ValueValidation);
        let kind = error_kind(&["listen", "--as", "bob", "--timeout-secs", "0"]);
        assert_eq!(kind, ErrorKind::ValueValidation);
        let kind = error_kind(&["history", "--as", "bob", "g1", "--limit", "0"]);
        assert_eq!(kind, ErrorKind::ValueValidation);
    }

    #[test]
    fn non_numeric_seq_is_rejected() {
        let kind = error_kind(&["read", "--as", "bob", "g1", "--seq", "last"]);
        assert_eq!(kind, clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn unknown_subcommand_is_rejected() {
        let kind = error_kind(&["shout", "--as", "bob"]);
        assert_eq!(kind, clap::error::ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn profile_flag_overrides_directory() {
        let args = parse(&["listen", "--as", "bob", "--profile", "/tmp/bob.toml"]).unwrap();
        let profiles = Profiles {
            directory: args.profile_dir,
            explicit: args.profile,
        };
        assert_eq!(profiles.path("bob").unwrap(), Path::new("/tmp/bob.toml"));
    }

    #[test]
    fn random_client_ids_differ() {
        let first = random_client_id();
        assert_eq!(first.len(), 32);
        assert_ne!(first, random_client_id());
    }
}

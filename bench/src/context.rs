//! The shared state of one invocation: the validated settings, the server
//! binaries, and a temporary folder for their data that is removed at the
//! end unless `--keep-data` is given.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context as _, Result};

use crate::cli::{CommonArgs, Settings, System};

/// Paths of the server binaries, or the reason a peer binary is missing.
pub struct Binaries {
    pub parley: PathBuf,
    pub etcd: Result<PathBuf, String>,
    pub nats: Result<PathBuf, String>,
}

impl Binaries {
    /// Finds the binaries; a missing `parley` is an error, a missing peer
    /// is recorded with the reason.
    pub fn find(args: &CommonArgs) -> Result<Binaries> {
        Ok(Binaries {
            parley: find_parley(args.parley_bin.as_deref())?,
            etcd: find_peer(args.etcd_bin.as_deref(), "etcd", "--etcd-bin"),
            nats: find_peer(args.nats_bin.as_deref(), "nats-server", "--nats-bin"),
        })
    }

    /// Returns the binary of `system`, or why it is missing.
    pub fn of(&self, system: System) -> Result<&Path, &str> {
        match system {
            System::Parley => Ok(&self.parley),
            System::Etcd => self.etcd.as_deref().map_err(String::as_str),
            System::Nats => self.nats.as_deref().map_err(String::as_str),
        }
    }
}

fn find_parley(flag: Option<&Path>) -> Result<PathBuf> {
    let path = match flag {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .context("failed to find the path of this parley-bench executable")?
            .with_file_name("parley"),
    };
    if !path.is_file() {
        bail!(
            "no parley binary at {}; build it with `cargo build --release -p parley` (the same \
             profile as parley-bench) or pass --parley-bin PATH",
            path.display()
        );
    }
    Ok(path)
}

fn find_peer(flag: Option<&Path>, name: &str, flag_name: &str) -> Result<PathBuf, String> {
    if let Some(path) = flag {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        return Err(format!(
            "{flag_name} {} is not a file; install {name} with `apt-get install etcd-server \
             nats-server` or pass the path of an installed binary",
            path.display()
        ));
    }
    let mut directories: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    // Debian installs nats-server in /usr/sbin, which a user's PATH may lack.
    directories.extend(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    directories
        .into_iter()
        .map(|directory| directory.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            format!(
                "{name} is not installed (not in PATH or /usr/sbin); install it with \
                 `apt-get install etcd-server nats-server` or pass {flag_name} PATH"
            )
        })
}

/// Shared state of one invocation.
pub struct Context {
    pub settings: Settings,
    pub binaries: Binaries,
    /// The open-file limit the bench and its servers run with.
    pub open_files: u64,
    root: tempfile::TempDir,
    next_folder: AtomicUsize,
}

impl Context {
    pub fn new(
        settings: Settings,
        binaries: Binaries,
        open_files: u64,
        keep_data: bool,
    ) -> Result<Context> {
        let mut root = tempfile::Builder::new()
            .prefix("parley-bench-")
            .tempdir()
            .context("failed to create a temporary folder")?;
        if keep_data {
            root.disable_cleanup(true);
            eprintln!("keeping server data and logs in {}", root.path().display());
        }
        Ok(Context {
            settings,
            binaries,
            open_files,
            root,
            next_folder: AtomicUsize::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Returns a new folder path for one cluster, such as `3-etcd`.
    pub fn folder(&self, name: &str) -> PathBuf {
        let number = self.next_folder.fetch_add(1, Ordering::Relaxed);
        self.root.path().join(format!("{number}-{name}"))
    }
}

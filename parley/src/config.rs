//! Node configuration: a TOML file, overridden by command-line flags.
//!
//! Every setting a node needs has a flag; the file is optional and lets an
//! operator keep a cluster's shared settings (peers, shard count) in one
//! place. Validation names the bad value and the flag or key that sets it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use parley_raft::NodeId;
use parley_shards::ClusterSettings;
use serde::Deserialize;

/// The `[node]` settings as read from a config file; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub node_id: Option<NodeId>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub shard_count: Option<u32>,
    /// Node id (as a string key, as TOML requires) to "host:port".
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
    pub group_members_max: Option<usize>,
    pub body_bytes_max: Option<usize>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| {
            format!(
                "config file {} is not valid; keys are node_id, listen, data_dir, shard_count, \
                 group_members_max, body_bytes_max and a [peers] table of ID = \"host:port\"",
                path.display()
            )
        })
    }
}

/// A node's resolved configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub listen: String,
    pub data_dir: PathBuf,
    pub cluster: ClusterSettings,
    /// Skew of the clock this node stamps appends with, in milliseconds.
    pub clock_offset_ms: i64,
}

/// Parses a `--peer ID=HOST:PORT` flag value.
pub fn parse_peer(value: &str) -> Result<(NodeId, String)> {
    let Some((id, address)) = value.split_once('=') else {
        bail!(
            "--peer {value:?} is invalid; write it as ID=HOST:PORT, for example 2=127.0.0.1:7102"
        );
    };
    let id: NodeId = id.trim().parse().with_context(|| {
        format!("--peer {value:?} has node id {id:?}, which is not a positive integer")
    })?;
    let address = address.trim();
    if address.parse::<std::net::SocketAddr>().is_err() {
        bail!("--peer {value:?} has address {address:?}; write it as IP:PORT, for example 127.0.0.1:7102");
    }
    Ok((id, address.to_string()))
}

/// Merges the peers of the file with those from flags; flags win.
pub fn merge_peers(
    file: &ConfigFile,
    flags: &[(NodeId, String)],
) -> Result<BTreeMap<NodeId, String>> {
    let mut peers = BTreeMap::new();
    for (id, address) in &file.peers {
        let parsed = parse_peer(&format!("{id}={address}")).with_context(|| {
            format!("in the config file's [peers] table, entry {id} = {address:?}")
        })?;
        peers.insert(parsed.0, parsed.1);
    }
    for (id, address) in flags {
        peers.insert(*id, address.clone());
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_peer_accepts_id_and_socket_address() {
        let (id, address) = parse_peer("2=127.0.0.1:7102").unwrap();
        assert_eq!(id, 2);
        assert_eq!(address, "127.0.0.1:7102");
    }

    #[test]
    fn parse_peer_rejects_missing_separator() {
        let error = parse_peer("127.0.0.1:7102").unwrap_err().to_string();
        assert!(error.contains("ID=HOST:PORT"), "{error}");
    }

    #[test]
    fn parse_peer_rejects_bad_address() {
        let error = parse_peer("2=localhost").unwrap_err().to_string();
        assert!(error.contains("\"localhost\""), "{error}");
    }

    #[test]
    fn config_file_rejects_unknown_keys() {
        let error = toml::from_str::<ConfigFile>("shards = 8")
            .unwrap_err()
            .to_string();
        assert!(error.contains("shards"), "{error}");
    }

    #[test]
    fn flags_override_file_peers() {
        let file: ConfigFile =
            toml::from_str("[peers]\n1 = \"127.0.0.1:7101\"\n2 = \"127.0.0.1:7102\"").unwrap();
        let peers = merge_peers(&file, &[(2, "127.0.0.1:9999".into())]).unwrap();
        assert_eq!(peers[&1], "127.0.0.1:7101");
        assert_eq!(peers[&2], "127.0.0.1:9999");
    }
}

//! The "test cluster" check an admin runs before adding a cluster: connect with the given settings the
//! way the sync would and read `GET /version`, `GET /nodes` and `GET /cluster/resources?type=vm`.
//! Nothing is stored.

use crate::{NodeInfo, PveClient, PveConfig, PveError, VersionInfo};

/// What a successful check read.
#[derive(Clone, Debug)]
pub struct ClusterCheck {
    /// `GET /version`.
    pub version: VersionInfo,
    /// `GET /nodes`.
    pub nodes: Vec<NodeInfo>,
    /// How many guests `GET /cluster/resources?type=vm` listed.
    pub guests: usize,
}

/// A client made for one check, without read retries.
#[derive(Debug)]
pub struct ClusterProbe {
    client: PveClient,
}

impl ClusterProbe {
    /// A probe with `cfg` (read retries turned off: the admin wants the first answer). Errors: as
    /// [`PveClient::new`] (bad TLS settings, a malformed URL).
    pub fn new(mut cfg: PveConfig) -> Result<ClusterProbe, PveError> {
        cfg.read_retries = 0;
        Ok(ClusterProbe {
            client: PveClient::new(cfg)?,
        })
    }

    /// Reads the version, the nodes and the guests. Errors: the first failing request's.
    pub async fn run(&self) -> Result<ClusterCheck, PveError> {
        let version = self.client.version().await?;
        let nodes = self.client.nodes().await?;
        let guests = self.client.cluster_resources().await?.len();
        Ok(ClusterCheck {
            version,
            nodes,
            guests,
        })
    }
}

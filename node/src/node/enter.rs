//! How a node becomes a ring member: bootstrap a new cluster, join one through the seeds, or
//! resume as the member its data directory says it is ([`enter_cluster`]).
//!
//! Promises: a data directory of another cluster than the seeds' is refused
//! ([`NodeError::OtherCluster`]); a fresh directory with neither seeds nor bootstrap is refused
//! ([`NodeError::NoWayIn`]); the cluster id is written to the data directory before the node
//! counts as entered. Joining asks the leader found through gossip, follows its NotLeader
//! hints and retries with backoff until admitted or refused for good.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::NodeError;
use crate::config::state::{Command, Member};
use crate::config::ConfigService;
use crate::coordinator::JoinOutcome;
use crate::datadir::DataDir;
use crate::membership::Membership;
use crate::peer::leader::{LeaderClient, RaftAndGossip};
use crate::peer::JoinRequest;
use crate::settings::Settings;

/// Bootstraps, joins, or resumes membership. Returns once this node is a ring member.
/// `initialized`: the data directory holds Raft state.
pub(super) async fn enter_cluster(
    settings: &Settings,
    data_dir: &mut DataDir,
    initialized: bool,
    config: &Arc<ConfigService>,
    membership: &Arc<Membership>,
) -> Result<(), NodeError> {
    let identity = data_dir.identity().clone();
    let me = me_of(settings, identity.raft_id);
    if initialized {
        if !identity.cluster_id.is_empty() && !settings.seeds.is_empty() {
            check_seeds_cluster(data_dir, membership).await?;
        }
        let member = config
            .local_view()
            .state
            .config
            .member_by_raft_id(me.raft_id)
            .is_some();
        if member || settings.seeds.is_empty() {
            tracing::info!(cluster_id = %identity.cluster_id, "resuming as an existing member");
            wait_until_member(config, &me).await;
            return Ok(());
        }
        // The directory says we left (or were removed): join again, as a fresh member.
        tracing::info!(cluster_id = %identity.cluster_id, "no longer a member (left or removed); joining again");
        return join(data_dir, config, membership, me).await;
    }
    if !settings.bootstrap && settings.seeds.is_empty() {
        return Err(NodeError::NoWayIn(data_dir.path().display().to_string()));
    }
    if settings.bootstrap {
        bootstrap(settings, data_dir, config, membership, me).await
    } else {
        join(data_dir, config, membership, me).await
    }
}

/// This node as a ring member.
pub(super) fn me_of(settings: &Settings, raft_id: u64) -> Member {
    Member {
        node_id: settings.node_id.clone(),
        raft_id,
        grpc_addr: settings.grpc_advertise.to_string(),
        gossip_addr: settings.gossip_advertise.to_string(),
        http_addr: settings.http_advertise.to_string(),
        weight: settings.weight,
        state: Default::default(),
    }
}

/// Fails if the seeds gossip another cluster id than the data directory's.
async fn check_seeds_cluster(data_dir: &DataDir, membership: &Membership) -> Result<(), NodeError> {
    let ours = data_dir.identity().cluster_id.clone();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let peers = membership.peers().await;
        let others: Vec<String> = peers
            .iter()
            .filter(|p| p.alive && p.raft_id != Some(data_dir.identity().raft_id))
            .filter_map(|p| p.cluster_id.clone())
            .collect();
        if others.contains(&ours) {
            return Ok(());
        }
        if let Some(theirs) = others.into_iter().next() {
            return Err(NodeError::OtherCluster {
                path: data_dir.path().display().to_string(),
                ours,
                theirs,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nobody answered: we may be the first to restart. Raft will sort it out.
    Ok(())
}

/// Waits until this node is a member in the applied config (warning every 10 s).
async fn wait_until_member(config: &ConfigService, me: &Member) {
    let mut applied = config.subscribe();
    let mut warned = Instant::now();
    loop {
        if applied.borrow().config.member_by_raft_id(me.raft_id).is_some() {
            return;
        }
        if warned.elapsed() > Duration::from_secs(10) {
            tracing::warn!("not a ring member in the applied config yet; waiting for the leader");
            warned = Instant::now();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), applied.changed()).await;
    }
}

/// Starts a new cluster with this node as its only member, and loads the routes file.
async fn bootstrap(
    settings: &Settings,
    data_dir: &mut DataDir,
    config: &ConfigService,
    membership: &Membership,
    me: Member,
) -> Result<(), NodeError> {
    let cluster_id = uuid::Uuid::new_v4().to_string();
    tracing::info!(%cluster_id, partitions = settings.ring.partitions, vnodes = settings.ring.vnodes_per_weight,
        "bootstrapping a new cluster");
    let mut nodes = std::collections::BTreeMap::new();
    nodes.insert(me.raft_id, openraft::BasicNode::new(&me.grpc_addr));
    config
        .raft()
        .initialize(nodes)
        .await
        .map_err(|e| NodeError::Raft(format!("initialize: {e}")))?;
    // A single voter elects itself at once; wait for it before proposing.
    let mut metrics = config.raft().metrics();
    tokio::time::timeout(
        Duration::from_secs(30),
        metrics.wait_for(|m| m.current_leader == Some(me.raft_id)),
    )
    .await
    .map_err(|_| NodeError::Raft("no leadership 30 s after initializing".into()))?
    .map_err(|_| NodeError::Raft("raft stopped".into()))?;
    let epoch = config
        .propose(Command::Bootstrap {
            cluster_id: cluster_id.clone(),
            ring: settings.ring,
            max_voters: settings.max_voters,
            first: me,
        })
        .await
        .map_err(|e| NodeError::Raft(format!("bootstrap: {e}")))?
        .epoch;
    data_dir.set_cluster_id(&cluster_id)?;
    membership.set_cluster_id(&cluster_id).await;
    tracing::info!(%cluster_id, epoch, "cluster bootstrapped");
    for spec in &settings.bootstrap_routes {
        config
            .propose(Command::PutRoute {
                spec: spec.clone(),
                expected_version: None,
            })
            .await
            .map_err(|e| NodeError::Raft(format!("route {} from the routes file: {e}", spec.name)))?;
        tracing::info!(route = %spec.name, "route loaded from the routes file");
    }
    Ok(())
}

/// Joins through the seeds and waits until the applied config has this node as a member.
async fn join(
    data_dir: &mut DataDir,
    config: &Arc<ConfigService>,
    membership: &Arc<Membership>,
    me: Member,
) -> Result<(), NodeError> {
    let response = join_through_leader(config, membership, &me, &data_dir.identity().cluster_id).await?;
    data_dir.set_cluster_id(&response.cluster_id)?;
    membership.set_cluster_id(&response.cluster_id).await;
    tracing::info!(cluster_id = %response.cluster_id, epoch = response.epoch, voter = response.voter, "joined");
    wait_until_member(config, &me).await;
    Ok(())
}

/// Asks the leader (found through gossip, following its hints) to admit `me`, until it does
/// or refuses for good (another cluster, a node id held by another incarnation).
pub(super) async fn join_through_leader(
    config: &Arc<ConfigService>,
    membership: &Arc<Membership>,
    me: &Member,
    cluster_id: &str,
) -> Result<JoinOutcome, NodeError> {
    let leader = LeaderClient::new(
        crate::peer::grpc::shared(),
        Arc::new(RaftAndGossip::new(config.clone(), membership.clone())),
    );
    leader
        .join(JoinRequest {
            member: me.clone(),
            cluster_id: cluster_id.to_string(),
        })
        .await
        .map_err(|e| NodeError::JoinRejected(e.to_string()))
}

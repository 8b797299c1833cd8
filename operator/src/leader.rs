//! Leader election through a coordination Lease, so two replicas never reconcile at once.
//! Losing the Lease ends the process: a fresh start is the simplest way to be sure no stale
//! reconcile keeps writing.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Lease timing: a leader that stops renewing is replaced after `DURATION_SECS`; it renews
/// `GRACE_SECS` before expiry.
pub const DURATION_SECS: u64 = 15;
pub const GRACE_SECS: u64 = 5;

/// The server-side-apply field manager of one candidate. It must differ between candidates: a
/// free Lease is claimed with an apply that is not forced, which the API server refuses (409)
/// only when another *manager* owns `holderIdentity`. With one manager name for all replicas,
/// two replicas starting together both "won" the Lease and both reconciled (seen on the real
/// node: the second apply silently overwrote the first holder).
/// Names are limited to 128 characters; a longer identity (pod names may reach 253) is hashed.
pub fn field_manager(identity: &str) -> String {
    let name = format!("{}-lease-{identity}", crate::labels::MANAGER);
    if name.len() <= 128 {
        name
    } else {
        format!(
            "{}-lease-{}",
            crate::labels::MANAGER,
            crate::build::short_hash(&identity)
        )
    }
}

/// A running election: `is_leader` follows this process's hold on the Lease.
pub struct Election {
    pub is_leader: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Election {
    /// Starts competing for the Lease `namespace/name` as `identity`.
    pub async fn start(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
    ) -> Result<Self, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(DURATION_SECS)
            .with_grace(GRACE_SECS)
            .with_field_manager(field_manager(identity))
            .build()
            .await?;
        let (is_leader, task) = manager.watch().await;
        Ok(Self { is_leader, task })
    }

    /// Resolves once this process leads; false if the election task ended first.
    pub async fn acquired(&mut self) -> bool {
        self.is_leader.wait_for(|leading| *leading).await.is_ok()
    }

    /// Resolves when this process stops leading (or the election task ends).
    pub async fn lost(&mut self) {
        let _ = self.is_leader.wait_for(|leading| !*leading).await;
    }

    /// Gives the Lease up so a standby takes over at once instead of after expiry.
    pub async fn release(self) {
        drop(self.is_leader);
        match tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the leader Lease"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "could not release the leader Lease"),
            Ok(Err(error)) => tracing::warn!(%error, "leader election task failed"),
            Err(_) => tracing::warn!("timed out releasing the leader Lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_candidate_claims_the_lease_as_a_manager_of_its_own() {
        let a = field_manager("msa-operator-67b56b8fbb-5fl98");
        let b = field_manager("msa-operator-67b56b8fbb-96c5p");
        assert_ne!(a, b);
        assert_eq!(a, "msa-operator-lease-msa-operator-67b56b8fbb-5fl98");
        // Field manager names are limited to 128 characters.
        let long = [
            field_manager(&"x".repeat(253)),
            field_manager(&"y".repeat(253)),
        ];
        assert!(long.iter().all(|m| m.len() <= 128), "{long:?}");
        assert_ne!(long[0], long[1]);
    }
}

//! `actseal actor accept|hand-over`: moving an actor between fleet nodes, through the
//! daemons' `AcceptActor` (on the target) and `HandOverActor` (on the actor's node).

use anyhow::Result;
use clap::Subcommand;

use super::{
    Connection,
    client::{connect, print_key, runtime, status_error},
};
use crate::api::{AcceptActorRequest, HandOverActorRequest, key_admin_client::KeyAdminClient};

#[derive(Subcommand)]
pub enum ActorCommand {
    /// On the target node: make the actor's next key version in this node's hardware and
    /// record a pending handover to this node (then run `hand-over` on the actor's node).
    Accept {
        #[arg(long)]
        actor: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// On the actor's node: stop signing for the actor and log the rotation to the key the
    /// target made; returns once the actor is the target's.
    HandOver {
        #[arg(long)]
        actor: String,
        /// The node that accepted the actor (its [fleet] node name).
        #[arg(long)]
        to: String,
        #[command(flatten)]
        connection: Connection,
    },
}

pub fn run(command: ActorCommand) -> Result<()> {
    runtime()?.block_on(async move {
        let key = match command {
            ActorCommand::Accept { actor, connection } => {
                KeyAdminClient::new(connect(&connection).await?)
                    .accept_actor(AcceptActorRequest { actor })
                    .await
            }
            ActorCommand::HandOver {
                actor,
                to,
                connection,
            } => {
                KeyAdminClient::new(connect(&connection).await?)
                    .hand_over_actor(HandOverActorRequest { actor, to })
                    .await
            }
        };
        print_key(&key.map_err(status_error)?.into_inner());
        Ok(())
    })
}

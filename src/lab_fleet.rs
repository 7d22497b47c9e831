//! A fleet on one machine, for the tests and the benchmark: one real PostgreSQL server and
//! several daemons, each with its own SoftHSM token (standing in for its own host), all in
//! one token directory that also holds the shared log token (standing in for a network HSM
//! partition), their device certificates issued by one operator CA.

use std::path::Path;

use anyhow::{Context, Result};

use crate::{lab::Lab, lab_postgres::Postgres};

/// A fleet's PostgreSQL and its nodes (`node-0`, `node-1`, …), daemons not started.
pub struct Fleet {
    pub postgres: Postgres,
    pub nodes: Vec<Lab>,
    /// The log's database URL (no password in it).
    pub url: String,
}

impl Fleet {
    /// Makes `count` nodes in `dir` with `[fleet]` lines `fleet_lines` (besides `node`).
    pub fn create(exe: &Path, dir: &Path, count: usize, fleet_lines: &str) -> Result<Fleet> {
        let postgres = Postgres::start(&dir.join("postgres")).context("PostgreSQL")?;
        let url = postgres.create_database("fleet")?;
        let first = Lab::create(exe, &dir.join("node-0"), false)?;
        first.add_log_token()?;
        let mut nodes = vec![first];
        for i in 1..count {
            let member = Lab::create_member(
                &nodes[0],
                &dir.join(format!("node-{i}")),
                &format!("actseal-node-{i}"),
            )?;
            nodes.push(member);
        }
        for (i, node) in nodes.iter().enumerate() {
            node.use_postgres(&url, postgres.password_file())?;
            node.append_config(&format!("[fleet]\nnode = \"node-{i}\"\n{fleet_lines}"))?;
        }
        Ok(Fleet {
            postgres,
            nodes,
            url,
        })
    }

    /// Starts every node's daemon, the first first (its integrator sets the log up).
    pub fn start_all(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            node.start_daemon_within(std::time::Duration::from_secs(90), |_| {})?;
        }
        Ok(())
    }

    /// The trust anchor of every node's bundles: the first node's CA.
    pub fn anchor(&self) -> std::path::PathBuf {
        self.nodes[0].anchor()
    }

    /// A client of the log's database.
    pub fn client(&self) -> Result<postgres::Client> {
        self.postgres.client("fleet")
    }

    /// The lease row: (holder, epoch, published size).
    pub fn lease(&self) -> Result<Option<(String, i64, i64)>> {
        let mut client = self.client()?;
        Ok(client
            .query_opt(
                "SELECT holder, epoch, published_size FROM fleet_lease WHERE id = 1",
                &[],
            )?
            .map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    /// The node holding the lease now (its index), with the epoch and the published size:
    /// one read, so that the three belong together (the lease may move between two reads).
    pub fn holder(&self) -> Result<Option<(usize, i64, i64)>> {
        Ok(self.lease()?.and_then(|(holder, epoch, published)| {
            Some((
                holder.strip_prefix("node-")?.parse().ok()?,
                epoch,
                published,
            ))
        }))
    }
}

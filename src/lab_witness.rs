//! Witnesses in a lab: each `actseal witness serve` with its own SoftHSM token (in the lab's
//! token directory), its own state directory and a free loopback port. The demo and
//! tests/witness.rs both use them.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::lab::{Lab, SOFTHSM_MODULE};

/// One lab witness; killed when dropped.
pub struct LabWitness {
    /// Its key name (`witness-N.lab.actseal.example`).
    pub name: String,
    /// Its verifier key.
    pub vkey: String,
    pub url: String,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LabWitness {
    /// Makes witness `n` of `lab`: token, key, configuration for the lab's log (whose key
    /// must exist: the daemon has started once). Not started.
    pub fn create(lab: &Lab, n: usize) -> Result<LabWitness> {
        let dir = lab.dir.join(format!("witness-{n}"));
        fs::create_dir_all(&dir)?;
        let label = format!("actseal-witness-{n}");
        for (name, secret) in [("so-pin", "so"), ("pin", "user")] {
            let path = lab.dir.join(format!("secrets/witness-{n}.{name}"));
            let pin = format!("{secret}-{n}-{}", std::process::id());
            let mut options = fs::OpenOptions::new();
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            std::io::Write::write_all(&mut file, format!("{pin}\n").as_bytes())?;
        }
        let d = |p: &str| lab.path(p);
        lab.run_ok(&[
            "token",
            "init",
            "--module",
            SOFTHSM_MODULE,
            "--label",
            &label,
            "--so-pin-file",
            &d(&format!("secrets/witness-{n}.so-pin")),
            "--pin-file",
            &d(&format!("secrets/witness-{n}.pin")),
        ])?;
        let config_path = lab.config().display().to_string();
        let log_vkey = lab.run_ok(&["log", "vkey", "--config", &config_path])?;
        let port = free_port()?;
        let name = format!("witness-{n}.lab.actseal.example");
        let state_dir = dir.join("state");
        let config = dir.join("witness.toml");
        fs::write(
            &config,
            format!(
                "name = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n\n\
                 [pkcs11]\nmodule = \"{SOFTHSM_MODULE}\"\ntoken_label = \"{label}\"\n\
                 pin = {{ file = \"{}\" }}\n\n[[log]]\nkey = \"{}\"\n",
                state_dir.display(),
                d(&format!("secrets/witness-{n}.pin")),
                log_vkey.trim()
            ),
        )?;
        let vkey = lab
            .run_ok(&["witness", "init", "--config", &config.display().to_string()])?
            .trim()
            .to_owned();
        Ok(LabWitness {
            name,
            vkey,
            url: format!("http://127.0.0.1:{port}"),
            config,
            state_dir,
            port,
            child: None,
            log: dir.join("witness.log"),
        })
    }

    /// Starts it and waits until it accepts connections.
    pub fn start(&mut self, lab: &Lab) -> Result<()> {
        if self.child.is_some() {
            bail!("witness {} is running", self.name);
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = lab
            .command(&[
                "witness",
                "serve",
                "--config",
                &self.config.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start the witness")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "witness {} exited ({status}): {}",
                    self.name,
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!("witness {} did not listen: {}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Its stderr so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs it (no chance to tidy up) and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Whether it is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The `[[anchor.witness]]` entry of the daemon's configuration.
    pub fn config_entry(&self) -> String {
        format!(
            "[[anchor.witness]]\nurl = \"{}\"\nkey = \"{}\"\n",
            self.url, self.vkey
        )
    }

    /// Its `witness` line of a verifier's witness policy.
    pub fn policy_line(&self) -> String {
        format!("witness {} {} {}\n", self.name, self.vkey, self.url)
    }
}

impl Drop for LabWitness {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Appends `[anchor]` to the lab daemon's configuration: the witnesses, the quorum, the
/// acknowledge mode and any further lines.
pub fn configure_anchor(
    lab: &Lab,
    witnesses: &[LabWitness],
    quorum: usize,
    extra: &str,
) -> Result<()> {
    let mut config = fs::read_to_string(lab.config())?;
    config.push_str(&format!("\n[anchor]\nquorum = {quorum}\n{extra}\n"));
    for w in witnesses {
        config.push_str(&w.config_entry());
    }
    fs::write(lab.config(), config)?;
    Ok(())
}

//! A private swtpm for tests and the demo: TPM state, a local EK-certificate CA (the "TPM
//! maker's CA") and the swtpm process, all in one directory, on free loopback ports.
//!
//! Nothing touches the system-wide `/var/lib/swtpm-localca`: `swtpm_setup` is pointed at a
//! configuration in the lab directory.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// An swtpm with its state and EK certificate authority in `dir`; stopped when dropped.
pub struct Swtpm {
    pub dir: PathBuf,
    pub port: u16,
    running: bool,
}

/// Two consecutive free loopback ports (server, control).
fn free_port_pair() -> Result<u16> {
    for _ in 0..64 {
        let first = TcpListener::bind("127.0.0.1:0")?;
        let port = first.local_addr()?.port();
        if port == u16::MAX {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            drop(first);
            return Ok(port);
        }
    }
    bail!("no two consecutive free loopback ports")
}

fn run(command: &mut Command, what: &str) -> Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

impl Swtpm {
    /// Manufactures a TPM in `dir` (ECC EK with a certificate from a CA made in `dir`) and
    /// starts it.
    pub fn create(dir: &Path) -> Result<Swtpm> {
        for sub in ["state", "localca"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let dir = dir.canonicalize()?;
        let localca = dir.join("localca");
        fs::write(
            dir.join("swtpm-localca.conf"),
            format!(
                "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n",
                ca = localca.display()
            ),
        )?;
        fs::write(
            dir.join("swtpm-localca.options"),
            "--platform-manufacturer actseal-lab\n--platform-version 2.1\n--platform-model swtpm\n",
        )?;
        fs::write(
            dir.join("swtpm_setup.conf"),
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {d}/swtpm-localca.conf\ncreate_certs_tool_options = {d}/swtpm-localca.options\nactive_pcr_banks = sha256\n",
                d = dir.display()
            ),
        )?;
        run(
            Command::new("swtpm_setup")
                .args(["--tpm2", "--tpmstate"])
                .arg(dir.join("state"))
                .args([
                    "--create-ek-cert",
                    "--create-platform-cert",
                    "--ecc",
                    "--lock-nvram",
                    "--overwrite",
                    "--config",
                ])
                .arg(dir.join("swtpm_setup.conf"))
                // swtpm_setup reads its user config from XDG_CONFIG_HOME; keep it private too.
                .env("XDG_CONFIG_HOME", &dir)
                .env("HOME", &dir),
            "swtpm_setup",
        )?;
        let mut swtpm = Swtpm {
            dir,
            port: free_port_pair()?,
            running: false,
        };
        swtpm.start()?;
        Ok(swtpm)
    }

    /// The TCTI string for this TPM.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The EK CA's certificates (root, then intermediate), PEM: what `actseal enroll`
    /// checks the EK certificate against.
    pub fn ek_ca_pem(&self) -> Result<String> {
        let ca = self.dir.join("localca");
        let mut pem = fs::read_to_string(ca.join("swtpm-localca-rootca-cert.pem"))
            .context("swtpm-localca root certificate")?;
        pem.push_str(
            &fs::read_to_string(ca.join("issuercert.pem")).context("swtpm-localca issuer")?,
        );
        Ok(pem)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("swtpm.pid")
    }

    /// Starts swtpm on the lab's ports (after a restart: on the same state).
    pub fn start(&mut self) -> Result<()> {
        if self.running {
            bail!("swtpm is already running");
        }
        // After a stop its ports may still be held: swtpm binds without SO_REUSEADDR, so a
        // connection it closed first keeps its port in TIME_WAIT (60 s on Linux). A restart
        // keeps its ports, so it waits for them.
        let deadline = Instant::now() + Duration::from_secs(70);
        loop {
            match self.spawn() {
                Err(e)
                    if e.to_string().contains("Address already in use")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                result => break result?,
            }
        }
        self.running = true;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!("swtpm did not listen on port {} within 10 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Runs swtpm as a daemon on the lab's ports and state.
    fn spawn(&self) -> Result<()> {
        let _ = fs::remove_file(self.pid_file());
        run(
            Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", self.dir.join("state").display()))
                .arg("--server")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port))
                .arg("--ctrl")
                .arg(format!(
                    "type=tcp,port={},bindaddr=127.0.0.1",
                    self.port + 1
                ))
                .args([
                    "--flags",
                    "not-need-init,startup-clear",
                    "--daemon",
                    "--pid",
                ])
                .arg(format!("file={}", self.pid_file().display())),
            "swtpm",
        )
    }

    fn pid(&self) -> Option<u32> {
        fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Stops swtpm (its state stays) and waits until it is gone.
    pub fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let Some(pid) = self.pid() else {
            bail!("swtpm wrote no pid file");
        };
        let _ = Command::new("kill").arg(pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            if Instant::now() > deadline {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Stops swtpm and starts it again on the same state (a TPM reset for its clients).
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

//! A SoftHSM2 lab in one directory: private tokens, an operator CA, a device certificate, a
//! daemon configuration, and the daemon itself as a child process. The demo and the
//! integration tests both stand on it, so what the tests prove is what the demo shows.
//!
//! Every step runs the real `actseal` binary, as an operator would.

use crate::cli::out::{out, outln};
use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::lab_token;

/// SoftHSM2's PKCS#11 module on Debian.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Label of the daemon's token in a lab.
pub const TOKEN_LABEL: &str = "actseal-lab";
/// Label of the CA's own token in a lab.
pub const CA_TOKEN_LABEL: &str = "actseal-ca";
/// Label of a lab's separate log token (`[log_token]`, [`Lab::add_log_token`]).
pub const LOG_TOKEN_LABEL: &str = "actseal-lab-log";

const SOFTHSM_CONF_TEMPLATE: &str = include_str!("../softhsm-fixtures/softhsm2.conf.in");
const CONFIG_TEMPLATE: &str = include_str!("../softhsm-fixtures/actseal.toml.in");
const POLICY_TEMPLATE: &str = include_str!("../softhsm-fixtures/policy.toml.in");

/// A lab directory and, while started, its daemon.
pub struct Lab {
    pub dir: PathBuf,
    exe: PathBuf,
    verbose: bool,
    daemon: Option<Child>,
    /// The lab's private swtpm, when its daemon's backend is a TPM.
    tpm: Option<crate::lab_tpm::Swtpm>,
}

/// The variable that moves the test labs' ledger: unset or `sqlite` for the default SQLite
/// file, `postgres` for a PostgreSQL server of the lab's own (scripts/test.sh runs the ledger
/// tests a second time with it set, so that the same tests run on both engines).
pub const TEST_LEDGER_VAR: &str = "ACTSEAL_TEST_LEDGER";

/// Which engine holds a test lab's ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabLedger {
    /// The daemon's own SQLite file (the default).
    Sqlite,
    /// A PostgreSQL server started for the lab ([`Lab::use_postgres`] before the first start).
    Postgres,
}

impl LabLedger {
    /// The engine [`TEST_LEDGER_VAR`] names; any other value is an error, never a silent
    /// SQLite run.
    pub fn from_env() -> Result<LabLedger> {
        match std::env::var(TEST_LEDGER_VAR) {
            Err(std::env::VarError::NotPresent) => Ok(LabLedger::Sqlite),
            Ok(v) if v.is_empty() || v == "sqlite" => Ok(LabLedger::Sqlite),
            Ok(v) if v == "postgres" => Ok(LabLedger::Postgres),
            Ok(v) => bail!("{TEST_LEDGER_VAR}={v:?}: expected \"sqlite\" or \"postgres\""),
            Err(e) => bail!("{TEST_LEDGER_VAR}: {e}"),
        }
    }
}

/// Which backend a lab's daemon uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabBackend {
    /// A SoftHSM2 token (the device key is certified through a CSR).
    Pkcs11,
    /// A private swtpm (the AK is certified through `actseal enroll`).
    Tpm,
}

fn random_pin() -> String {
    use rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 12];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn write_secret(path: &Path, secret: &str) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{secret}")?;
    Ok(())
}

impl Lab {
    /// Makes a complete lab in `dir` (which must be empty or absent) using the `actseal`
    /// binary at `exe`: tokens, CA, device certificate and configuration. The daemon is not
    /// started.
    pub fn create(exe: &Path, dir: &Path, verbose: bool) -> Result<Lab> {
        Self::create_with_backend(exe, dir, verbose, LabBackend::Pkcs11)
    }

    /// Makes a lab whose daemon uses `backend`. For a TPM: a private swtpm with an EK
    /// certificate from a CA in the lab, started on free ports, and the AK enrolled.
    pub fn create_with_backend(
        exe: &Path,
        dir: &Path,
        verbose: bool,
        backend: LabBackend,
    ) -> Result<Lab> {
        if dir.exists() && fs::read_dir(dir)?.next().is_some() {
            bail!("{} is not empty", dir.display());
        }
        for sub in ["tokens", "secrets", "state", "ca"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let dir = dir.canonicalize()?;
        fs::set_permissions(
            dir.join("secrets"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        fs::write(
            dir.join("softhsm2.conf"),
            SOFTHSM_CONF_TEMPLATE.replace("@TOKENDIR@", &dir.join("tokens").display().to_string()),
        )?;
        let tpm = match backend {
            LabBackend::Pkcs11 => None,
            LabBackend::Tpm => Some(crate::lab_tpm::Swtpm::create(&dir.join("tpm"))?),
        };
        let config = CONFIG_TEMPLATE
            .replace("@DIR@", &dir.display().to_string())
            .replace("@MODULE@", SOFTHSM_MODULE)
            .replace("@TOKEN@", TOKEN_LABEL);
        let config = match &tpm {
            None => config,
            Some(tpm) => {
                let start = config.find("[pkcs11]").unwrap_or(config.len());
                let end = config.find("[log]").unwrap_or(config.len());
                format!(
                    "{}[tpm]\ntcti = \"{}\"\n\n{}",
                    &config[..start],
                    tpm.tcti(),
                    &config[end..]
                )
            }
        };
        fs::write(dir.join("actseal.toml"), config)?;
        // The lab directory was just created by this process: its owner is our user id.
        let uid = std::os::unix::fs::MetadataExt::uid(&fs::metadata(&dir)?);
        fs::write(
            dir.join("policy.toml"),
            POLICY_TEMPLATE.replace("@UID@", &uid.to_string()),
        )?;
        for name in ["token.so-pin", "token.pin", "ca.so-pin", "ca.pin"] {
            write_secret(&dir.join("secrets").join(name), &random_pin())?;
        }
        let lab = Lab {
            dir,
            exe: exe.to_owned(),
            verbose,
            daemon: None,
            tpm,
        };
        let d = |p: &str| lab.path(p);
        // A TPM lab's daemon has no token; its CA still keeps its key in one.
        if lab.tpm.is_none() {
            lab.run_ok(&[
                "token",
                "init",
                "--module",
                SOFTHSM_MODULE,
                "--label",
                TOKEN_LABEL,
                "--so-pin-file",
                &d("secrets/token.so-pin"),
                "--pin-file",
                &d("secrets/token.pin"),
            ])?;
        }
        lab.run_ok(&[
            "token",
            "init",
            "--module",
            SOFTHSM_MODULE,
            "--label",
            CA_TOKEN_LABEL,
            "--so-pin-file",
            &d("secrets/ca.so-pin"),
            "--pin-file",
            &d("secrets/ca.pin"),
        ])?;
        lab.run_ok(&[
            "ca",
            "init",
            "--dir",
            &d("ca"),
            "--subject",
            "actseal lab operator CA",
            "--module",
            SOFTHSM_MODULE,
            "--token-label",
            CA_TOKEN_LABEL,
            "--pin-file",
            &d("secrets/ca.pin"),
        ])?;
        if let Some(tpm) = &lab.tpm {
            fs::write(lab.dir.join("tpm-maker-ca.pem"), tpm.ek_ca_pem()?)?;
            lab.run_ok(&[
                "enroll",
                "--config",
                &d("actseal.toml"),
                "--ca-dir",
                &d("ca"),
                "--ek-ca",
                &d("tpm-maker-ca.pem"),
            ])?;
            return Ok(lab);
        }
        lab.run_ok(&[
            "device",
            "csr",
            "--config",
            &d("actseal.toml"),
            "--out",
            &d("device.csr"),
        ])?;
        lab.run_ok(&[
            "ca",
            "issue",
            "--dir",
            &d("ca"),
            "--csr",
            &d("device.csr"),
            "--out",
            &d("device.crt"),
        ])?;
        lab.run_ok(&[
            "device",
            "install",
            "--config",
            &d("actseal.toml"),
            &d("device.crt"),
        ])?;
        Ok(lab)
    }

    /// A path inside the lab, as a string for command lines.
    pub fn path(&self, relative: &str) -> String {
        self.dir.join(relative).display().to_string()
    }

    /// The trust anchor verifiers are given: the CA certificate.
    pub fn anchor(&self) -> PathBuf {
        self.dir.join("ca/ca.crt")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("actseal.sock")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("actseal.toml")
    }

    /// The daemon's policy file (reloaded on SIGHUP).
    pub fn policy(&self) -> PathBuf {
        self.dir.join("policy.toml")
    }

    /// The daemon's log (stderr) of every start.
    pub fn daemon_log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// The token's user PIN, for tests that must act as an operator with other tools.
    pub fn token_pin(&self) -> Result<String> {
        Ok(fs::read_to_string(self.dir.join("secrets/token.pin"))?
            .trim()
            .to_owned())
    }

    /// An `actseal` command set up for this lab (SoftHSM configuration, daemon socket).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.exe);
        command
            .args(args)
            .env("SOFTHSM2_CONF", self.dir.join("softhsm2.conf"))
            .env("ACTSEAL_SOCKET", self.socket())
            // libtss2 logs TCTI retries to stderr; the daemon reports errors itself.
            .env("TSS2_LOG", "all+NONE")
            .env_remove("ACTSEAL_ENDPOINT")
            .stdin(Stdio::null());
        command
    }

    /// Runs an `actseal` command to completion and returns its output, whatever its status.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        if self.verbose {
            outln!("$ actseal {}", args.join(" "));
        }
        let output = self
            .command(args)
            .output()
            .with_context(|| format!("cannot run {}", self.exe.display()))?;
        if self.verbose {
            out!("{}", String::from_utf8_lossy(&output.stdout));
        }
        Ok(output)
    }

    /// Runs an `actseal` command that must succeed; returns its standard output.
    pub fn run_ok(&self, args: &[&str]) -> Result<String> {
        let output = self.run(args)?;
        if !output.status.success() {
            bail!(
                "`actseal {}` failed ({}): {}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts the daemon and waits until it accepts connections on its socket.
    pub fn start_daemon(&mut self) -> Result<()> {
        self.start_daemon_with(|_| {})
    }

    /// Starts the daemon with its command adjusted by `configure` (e.g. its environment) and
    /// waits until it accepts connections on its socket.
    pub fn start_daemon_with(&mut self, configure: impl FnOnce(&mut Command)) -> Result<()> {
        self.start_daemon_within(Duration::from_secs(30), configure)
    }

    /// Like [`Lab::start_daemon_with`], waiting up to `wait` for the socket (a start-up check
    /// of a very large log takes minutes).
    pub fn start_daemon_within(
        &mut self,
        wait: Duration,
        configure: impl FnOnce(&mut Command),
    ) -> Result<()> {
        if self.daemon.is_some() {
            bail!("the daemon is already running");
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.daemon_log())?;
        let config = self.config().display().to_string();
        if self.verbose {
            outln!("$ actseal serve --config {config} &");
        }
        let mut command = self.command(&["serve", "--config", &config]);
        command
            .env("ACTSEAL_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(log);
        configure(&mut command);
        let mut child = command.spawn().context("cannot start the daemon")?;
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the daemon exited at start-up ({status}); its log:\n{}",
                    fs::read_to_string(self.daemon_log()).unwrap_or_default()
                );
            }
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("the daemon did not open its socket within {wait:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.daemon = Some(child);
        Ok(())
    }

    /// Stops the daemon with SIGTERM (graceful) and waits for it.
    pub fn stop_daemon(&mut self) -> Result<()> {
        if let Some(mut child) = self.daemon.take() {
            signal(&child, "TERM")?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!("the daemon did not stop within 30 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Kills the daemon with SIGKILL, as a crash would.
    pub fn kill_daemon(&mut self) -> Result<()> {
        if let Some(mut child) = self.daemon.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends the daemon a signal by name (`HUP`, `TERM`, …).
    pub fn signal_daemon(&self, name: &str) -> Result<()> {
        match &self.daemon {
            Some(child) => signal(child, name),
            None => bail!("the daemon is not running"),
        }
    }

    /// Stops the daemon (SIGSTOP) at a moment it holds none of SoftHSM's file locks, once
    /// all its threads have stopped.
    ///
    /// SoftHSM's file store locks a token's files (POSIX record locks) for the span of each
    /// call, and the nodes of a lab fleet share one token directory: a daemon stopped inside
    /// a call on the shared log token blocks every other node's calls on it until it
    /// resumes, so no node could take over. A network HSM holds no lock across its clients;
    /// a test that pauses a node to model a stalled host pauses it between token calls,
    /// resuming it and stopping it again a few milliseconds later until it is.
    pub fn stop_daemon_between_token_calls(&self) -> Result<()> {
        let pid = self.daemon_pid().context("the daemon is not running")?;
        let token_dir = self.token_dir()?;
        for _ in 0..1000 {
            self.signal_daemon("STOP")?;
            lab_token::wait_until_stopped(pid)?;
            // Listed once it has stopped: it may have made a file just before.
            let token_files = lab_token::file_inodes(&token_dir, None)?;
            if !lab_token::holds_record_lock(pid, &token_files)? {
                return Ok(());
            }
            self.signal_daemon("CONT")?;
            std::thread::sleep(Duration::from_millis(2));
        }
        bail!("the daemon held a SoftHSM file lock at each of 1000 stops")
    }

    /// Holds every file of the token labelled `label` (of the lab's SoftHSM token directory)
    /// locked until the guard drops: a hung token, on which every process's calls wait.
    pub fn hold_token(&self, label: &str) -> Result<lab_token::HeldToken> {
        lab_token::HeldToken::hold(&self.token_dir()?, label)
    }

    /// The SoftHSM token directory its `softhsm2.conf` names (a fleet member's is the first
    /// node's).
    fn token_dir(&self) -> Result<PathBuf> {
        let conf = fs::read_to_string(self.dir.join("softhsm2.conf"))?;
        conf.lines()
            .find_map(|l| l.trim().strip_prefix("directories.tokendir"))
            .and_then(|rest| rest.trim().strip_prefix('='))
            .map(|dir| PathBuf::from(dir.trim()))
            .context("softhsm2.conf names no token directory")
    }

    /// The lab's swtpm, if its backend is a TPM.
    pub fn tpm(&mut self) -> Option<&mut crate::lab_tpm::Swtpm> {
        self.tpm.as_mut()
    }

    /// Initialises a separate log token (label [`LOG_TOKEN_LABEL`], its PIN in
    /// `secrets/log-token.pin`) in the lab's token directory and names it as the daemon's
    /// `[log_token]`. Before the daemon's first start, so that the log key is made there.
    pub fn add_log_token(&self) -> Result<()> {
        for name in ["log-token.so-pin", "log-token.pin"] {
            write_secret(&self.dir.join("secrets").join(name), &random_pin())?;
        }
        self.run_ok(&[
            "token",
            "init",
            "--module",
            SOFTHSM_MODULE,
            "--label",
            LOG_TOKEN_LABEL,
            "--so-pin-file",
            &self.path("secrets/log-token.so-pin"),
            "--pin-file",
            &self.path("secrets/log-token.pin"),
        ])?;
        self.use_log_token(LOG_TOKEN_LABEL, &self.dir.join("secrets/log-token.pin"))
    }

    /// Names an existing token (of the lab's SoftHSM token directory) as the daemon's
    /// `[log_token]`.
    pub fn use_log_token(&self, label: &str, pin_file: &Path) -> Result<()> {
        let mut config = fs::OpenOptions::new().append(true).open(self.config())?;
        writeln!(
            config,
            "\n[log_token]\ntoken_label = \"{label}\"\npin = {{ file = \"{}\" }}\nsessions = 4",
            pin_file.display()
        )?;
        Ok(())
    }

    /// Makes another host of a fleet in `dir`: its own token (`token_label`) in `first`'s
    /// SoftHSM token directory (so it can open `first`'s log token too), its device
    /// certificate issued by `first`'s CA (one trust anchor for the fleet), and `first`'s log
    /// token as its `[log_token]`. `first` must have had [`Lab::add_log_token`].
    pub fn create_member(first: &Lab, dir: &Path, token_label: &str) -> Result<Lab> {
        if dir.exists() && fs::read_dir(dir)?.next().is_some() {
            bail!("{} is not empty", dir.display());
        }
        for sub in ["secrets", "state"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let dir = dir.canonicalize()?;
        fs::set_permissions(
            dir.join("secrets"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        fs::copy(first.dir.join("softhsm2.conf"), dir.join("softhsm2.conf"))?;
        let config = CONFIG_TEMPLATE
            .replace("@DIR@", &dir.display().to_string())
            .replace("@MODULE@", SOFTHSM_MODULE)
            .replace("@TOKEN@", token_label);
        fs::write(dir.join("actseal.toml"), config)?;
        fs::copy(first.policy(), dir.join("policy.toml"))?;
        for name in ["token.so-pin", "token.pin"] {
            write_secret(&dir.join("secrets").join(name), &random_pin())?;
        }
        let lab = Lab {
            dir,
            exe: first.exe.clone(),
            verbose: first.verbose,
            daemon: None,
            tpm: None,
        };
        let d = |p: &str| lab.path(p);
        lab.run_ok(&[
            "token",
            "init",
            "--module",
            SOFTHSM_MODULE,
            "--label",
            token_label,
            "--so-pin-file",
            &d("secrets/token.so-pin"),
            "--pin-file",
            &d("secrets/token.pin"),
        ])?;
        let config = d("actseal.toml");
        lab.run_ok(&[
            "device",
            "csr",
            "--config",
            &config,
            "--out",
            &d("device.csr"),
        ])?;
        first.run_ok(&[
            "ca",
            "issue",
            "--dir",
            &first.path("ca"),
            "--csr",
            &d("device.csr"),
            "--out",
            &d("device.crt"),
        ])?;
        lab.run_ok(&["device", "install", "--config", &config, &d("device.crt")])?;
        lab.use_log_token(LOG_TOKEN_LABEL, &first.dir.join("secrets/log-token.pin"))?;
        Ok(lab)
    }

    /// Appends a section (e.g. `[fleet]`) to the daemon's configuration.
    pub fn append_config(&self, text: &str) -> Result<()> {
        let mut config = fs::OpenOptions::new().append(true).open(self.config())?;
        writeln!(config, "\n{text}")?;
        Ok(())
    }

    /// Puts the daemon's ledger on PostgreSQL: `[ledger] url` and `password_file` in its
    /// configuration (into its `[ledger]` section if it has one).
    pub fn use_postgres(&self, url: &str, password_file: &Path) -> Result<()> {
        let config = fs::read_to_string(self.config())?;
        let lines = format!(
            "url = {}\npassword_file = {}\n",
            toml_string(url),
            toml_string(&password_file.display().to_string())
        );
        let config = match config.find("\n[ledger]\n") {
            Some(at) => {
                let at = at + "\n[ledger]\n".len();
                format!("{}{lines}{}", &config[..at], &config[at..])
            }
            None => format!("{config}\n[ledger]\n{lines}"),
        };
        fs::write(self.config(), config)?;
        Ok(())
    }

    /// The daemon's process id, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

fn signal(child: &Child, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .context("cannot run kill")?;
    if !status.success() {
        bail!("kill -{name} {} failed", child.id());
    }
    Ok(())
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

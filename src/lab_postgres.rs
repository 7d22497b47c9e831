//! A real PostgreSQL server in a temporary directory, for the tests and benchmarks that put
//! the ledger on PostgreSQL: `initdb` and `pg_ctl` from the Debian package, a free loopback
//! port, scram-sha-256 password authentication over TCP, `fsync=on`. The server refuses to
//! run as root, so as root it runs as the `postgres` user (`setpriv`).

use std::{
    fs,
    io::Write,
    net::TcpListener,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::ledger::store::postgres::blocking;

/// The superuser `initdb` creates; tests connect as it.
pub const USER: &str = "actseal_lab";
/// Where Debian installs the server's programs.
const DEBIAN_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The unprivileged user the server runs as when we are root.
const SERVER_USER: &str = "postgres";

/// A running (or stopped) PostgreSQL server whose files are all in one directory.
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    password_file: PathBuf,
    /// `Some((uid, gid))` when the server runs as another user than ours.
    run_as: Option<(u32, u32)>,
    running: bool,
    /// Whether the server offers TLS ([`Postgres::enable_tls`]).
    tls: bool,
}

/// Where `initdb`, `pg_ctl` and `postgres` are, if PostgreSQL is installed.
pub fn server_bin() -> Option<PathBuf> {
    let debian = Path::new(DEBIAN_BIN);
    if debian.join("initdb").exists() {
        return Some(debian.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_password() -> String {
    use rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 18];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The uid and gid of `user`, from `id`.
fn ids_of(user: &str) -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").args([flag, user]).output()?;
        if !out.status.success() {
            bail!("there is no user {user:?} to run PostgreSQL as (it refuses root)");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

/// Lets `uid` reach `dir`: every ancestor it cannot search gains the search bit for others
/// (not the read bit: nothing in them is listed or read).
fn make_reachable(dir: &Path) -> Result<()> {
    for ancestor in dir.ancestors().skip(1) {
        let meta = fs::metadata(ancestor)?;
        if meta.mode() & 0o001 == 0 {
            fs::set_permissions(
                ancestor,
                fs::Permissions::from_mode((meta.mode() & 0o7777) | 0o001),
            )
            .with_context(|| format!("cannot open {} to the server user", ancestor.display()))?;
        }
    }
    Ok(())
}

impl Postgres {
    /// Makes a new cluster in `dir` (created if absent; must be empty) and starts it on a
    /// free loopback port. Fails (never skips) when PostgreSQL is not installed.
    pub fn start(dir: &Path) -> Result<Postgres> {
        let bin = server_bin()
            .context("PostgreSQL is not installed (initdb, pg_ctl): run scripts/install-deps.sh")?;
        fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        if fs::read_dir(&dir)?.next().is_some() {
            bail!("{} is not empty", dir.display());
        }
        let run_as = if unsafe { libc::geteuid() } == 0 {
            let ids = ids_of(SERVER_USER)?;
            make_reachable(&dir)?;
            std::os::unix::fs::chown(&dir, Some(ids.0), Some(ids.1))?;
            Some(ids)
        } else {
            None
        };
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let password = random_password();
        // Beside the cluster, not in it: the server user may not read it; our user may.
        let password_file = dir.with_extension("password");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&password_file)?;
        writeln!(file, "{password}")?;
        let mut pg = Postgres {
            dir,
            bin,
            port: 0,
            password_file,
            run_as,
            running: false,
            tls: false,
        };
        pg.initdb(&password)?;
        pg.start_on_a_free_port()?;
        Ok(pg)
    }

    /// A command for one of the server's programs, as the server's user.
    fn program(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let mut command = match self.run_as {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--init-groups")
                    .arg(program);
                c
            }
            None => Command::new(program),
        };
        command.env_remove("PGDATA").env("LC_ALL", "C");
        command
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// The server's own log (all starts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn initdb(&self, password: &str) -> Result<()> {
        // For initdb only, in the server user's own 0700 directory; removed at once.
        let pwfile = self.dir.join("initdb.pw");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pwfile)?;
        writeln!(file, "{password}")?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
        }
        let out = self
            .program("initdb")
            .arg("-D")
            .arg(self.data())
            .args(["-U", USER, "-E", "UTF8", "--no-locale", "--no-sync"])
            .args(["--auth-local=scram-sha-256", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .context("cannot run initdb");
        let _ = fs::remove_file(&pwfile);
        let out = out?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let sock = self.socket_dir();
        fs::create_dir_all(&sock)?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&sock, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// Writes the port (and the fixed settings) and starts; a port taken meanwhile by
    /// another process is retried with another.
    fn start_on_a_free_port(&mut self) -> Result<()> {
        let mut last = None;
        for _ in 0..5 {
            self.port = free_port()?;
            self.write_settings()?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("PostgreSQL did not start")))
    }

    fn write_settings(&self) -> Result<()> {
        let mut settings = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = on\nsynchronous_commit = on\nmax_connections = 100\n\
             shared_buffers = 16MB\nlog_min_messages = warning\n",
            self.port,
            self.socket_dir().display()
        );
        if self.tls {
            settings
                .push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        let path = self.data().join("postgresql.auto.conf");
        // Written by us (root) into the server's directory: give it back to the server.
        fs::write(&path, settings)?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    fn pg_ctl_start(&mut self) -> Result<()> {
        let out = self
            .program("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .context("cannot run pg_ctl")?;
        if !out.status.success() {
            bail!(
                "PostgreSQL did not start: {}{}",
                String::from_utf8_lossy(&out.stderr),
                fs::read_to_string(self.log_path()).unwrap_or_default()
            );
        }
        self.running = true;
        Ok(())
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` (no password: it is in [`Postgres::password_file`]).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The file holding the superuser's password (0600).
    pub fn password_file(&self) -> &Path {
        &self.password_file
    }

    /// The password itself, for clients made in a test.
    pub fn password(&self) -> Result<String> {
        Ok(fs::read_to_string(&self.password_file)?.trim().to_owned())
    }

    /// A client of `database`, as the superuser. Inside an async test, call its methods
    /// within `tokio::task::block_in_place` (the client runs a runtime of its own).
    pub fn client(&self, database: &str) -> Result<postgres::Client> {
        let mut config: postgres::Config = self.url(database).parse()?;
        config
            .password(self.password()?)
            .connect_timeout(Duration::from_secs(10));
        Ok(blocking(|| config.connect(postgres::NoTls))?)
    }

    /// Runs `sql` (several statements) in `database`.
    pub fn execute(&self, database: &str, sql: &str) -> Result<()> {
        let mut client = self.client(database)?;
        blocking(move || client.batch_execute(sql))
            .with_context(|| format!("in database {database}"))?;
        Ok(())
    }

    /// The first column of the first row of `sql` in `database`, as an integer.
    pub fn query_i64(&self, database: &str, sql: &str) -> Result<i64> {
        let mut client = self.client(database)?;
        Ok(blocking(move || client.query_one(sql, &[]))?.try_get(0)?)
    }

    /// Creates an empty database and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("database name {name:?}: letters, digits and _ only");
        }
        self.execute("postgres", &format!("CREATE DATABASE {name}"))
            .with_context(|| format!("cannot create database {name}"))?;
        Ok(self.url(name))
    }

    /// Stops the server (fast shutdown: open sessions are ended).
    pub fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        let out = self
            .program("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "60", "-m", "fast", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        if !out.status.success() {
            bail!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.running = false;
        Ok(())
    }

    /// Starts the stopped (or killed) server again: same directory, same port. After a
    /// [`Postgres::kill`] the orphaned backends end on their own; this waits for them.
    pub fn start_again(&mut self) -> Result<()> {
        if self.running {
            bail!("PostgreSQL is running");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The postmaster's process id, from its pid file.
    pub fn pid(&self) -> Result<i32> {
        let text = fs::read_to_string(self.data().join("postmaster.pid"))
            .context("PostgreSQL is not running (no postmaster.pid)")?;
        Ok(text.lines().next().unwrap_or_default().trim().parse()?)
    }

    /// SIGKILLs the postmaster, as a crash would (its backends notice and exit).
    pub fn kill(&mut self) -> Result<()> {
        let pid = self.pid()?;
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            bail!(
                "cannot kill PostgreSQL ({pid}): {}",
                std::io::Error::last_os_error()
            );
        }
        self.running = false;
        // The server's pid file stays; wait until the process is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Turns TLS on (a new CA and a server certificate for 127.0.0.1, made with `openssl`)
    /// and reloads the server; returns the CA certificate's file for clients.
    pub fn enable_tls(&mut self) -> Result<PathBuf> {
        let work = self.dir.with_extension("tls");
        fs::create_dir_all(&work)?;
        let ca = make_ca(&work, "ca")?;
        let openssl = |args: &[&str]| -> Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&work)
                .output()?;
            if !out.status.success() {
                bail!(
                    "openssl {}: {}",
                    args[0],
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "server.key",
        ])?;
        openssl(&[
            "req",
            "-new",
            "-key",
            "server.key",
            "-subj",
            "/CN=127.0.0.1",
            "-out",
            "server.csr",
        ])?;
        fs::write(work.join("san.ext"), "subjectAltName = IP:127.0.0.1\n")?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ])?;
        for name in ["server.crt", "server.key"] {
            let to = self.data().join(name);
            fs::copy(work.join(name), &to)?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o600))?;
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(&to, Some(uid), Some(gid))?;
            }
        }
        self.tls = true;
        self.write_settings()?;
        self.execute("postgres", "SELECT pg_reload_conf()")?;
        // The reload is asynchronous: wait until new sessions are offered TLS.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.query_i64(
            "postgres",
            "SELECT CASE WHEN current_setting('ssl') = 'on' THEN 1::int8 ELSE 0::int8 END",
        )? != 1
        {
            if Instant::now() > deadline {
                bail!("the server did not turn TLS on");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(ca)
    }

    /// Whether the server is (believed to be) running.
    pub fn is_running(&self) -> bool {
        self.running
    }
}

/// A self-signed CA (`<name>.crt`, `<name>.key`) in `dir`; returns the certificate's path.
pub fn make_ca(dir: &Path, name: &str) -> Result<PathBuf> {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "2", "-subj", &format!("/CN=actseal lab {name}")])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.crt")))
        .arg("-addext")
        .arg("basicConstraints=critical,CA:TRUE")
        .output()
        .context("cannot run openssl")?;
    if !out.status.success() {
        bail!("openssl req: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(dir.join(format!("{name}.crt")))
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .program("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-t", "30", "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir_all(self.dir.with_extension("tls"));
        let _ = fs::remove_file(&self.password_file);
    }
}

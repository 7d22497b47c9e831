//! A test timestamp authority (RFC 3161) for the tests and the demo: `openssl ts -reply` behind
//! a small HTTP/1.1 front on a free loopback port, with its own CA and a TSA certificate that
//! carries the critical id-kp-timeStamping extended key usage.
//!
//! Test code, not product: its keys are files, and one request is answered at a time (the
//! serial file of `openssl ts` is not safe for concurrent replies).

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// The policy the test authority stamps under unless the request names another it accepts: a
/// test value (as in the RFC's and openssl's examples), not a registered policy. (The project's
/// UUID arc does not fit the OID type of the RFC 3161 crates.)
pub const TEST_TSA_POLICY: &str = "1.2.3.4.1";
/// A second policy the test authority also accepts.
pub const TEST_TSA_OTHER_POLICY: &str = "1.2.3.4.2";

/// The key type of the authority's signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsaKey {
    /// ECDSA P-256.
    P256,
    /// RSA 2048 (PKCS#1 v1.5).
    Rsa2048,
}

/// How the authority names its certificate in the signed attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EssCertId {
    /// signingCertificate (RFC 2634): ESSCertID with a SHA-1 hash (openssl's default).
    Sha1,
    /// signingCertificateV2 (RFC 5035): ESSCertIDv2 with SHA-256.
    Sha256,
}

/// What the HTTP front answers (for tests of the client's checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TsaMode {
    /// A fresh reply from `openssl ts -reply` for each request.
    Normal = 0,
    /// The previous reply again (a replay: another nonce and imprint).
    Replay = 1,
    /// HTTP 500 and no body.
    Fail = 2,
}

/// A running test authority. Dropping it stops the HTTP front.
pub struct TestTsa {
    dir: PathBuf,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    mode: Arc<AtomicU8>,
    served: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl TestTsa {
    /// Makes an authority in `dir` (created; must be empty or absent) named `name`, and starts
    /// its HTTP front on a free loopback port.
    pub fn start(dir: &Path, name: &str, key: TsaKey, ess: EssCertId) -> Result<TestTsa> {
        if dir.exists() && fs::read_dir(dir)?.next().is_some() {
            bail!("{} is not empty", dir.display());
        }
        fs::create_dir_all(dir.join("requests"))?;
        let dir = dir.canonicalize()?;
        make_pki(&dir, name, key)?;
        fs::write(dir.join("serial"), "01\n")?;
        fs::write(dir.join("tsa.cnf"), tsa_config(&dir, ess))?;
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind the test TSA")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mode = Arc::new(AtomicU8::new(TsaMode::Normal as u8));
        let served = Arc::new(AtomicU64::new(0));
        let front = Front {
            dir: dir.clone(),
            stop: stop.clone(),
            mode: mode.clone(),
            served: served.clone(),
            last: None,
        };
        let thread = std::thread::Builder::new()
            .name("test-tsa".into())
            .spawn(move || front.run(listener))?;
        Ok(TestTsa {
            dir,
            addr,
            stop,
            mode,
            served,
            thread: Some(thread),
        })
    }

    /// The URL to POST `application/timestamp-query` to.
    pub fn url(&self) -> String {
        format!("http://{}/tsa", self.addr)
    }

    /// The authority's CA certificate (PEM): the anchor an auditor gives with `--tsa-trust`.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The authority's own signing certificate (PEM).
    pub fn tsa_cert(&self) -> PathBuf {
        self.dir.join("tsa.crt")
    }

    /// Appends an `[[anchor.tsa]]` entry for this authority (checked against its CA) to a
    /// daemon configuration file.
    pub fn add_to_config(&self, config: &Path) -> Result<()> {
        let mut text = fs::read_to_string(config)?;
        text.push_str(&format!(
            "\n[[anchor.tsa]]\nurl = \"{}\"\ntrust = \"{}\"\n",
            self.url(),
            self.ca_cert().display()
        ));
        fs::write(config, text)?;
        Ok(())
    }

    /// Replies answered so far (of any mode).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    /// Changes what the front answers from the next request on.
    pub fn set_mode(&self, mode: TsaMode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

impl Drop for TestTsa {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("cannot run openssl")?;
    if !output.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The CA (P-256, self-signed) and the TSA certificate it issues.
fn make_pki(dir: &Path, name: &str, key: TsaKey) -> Result<()> {
    let ca_subject = format!("/O=actseal tests/CN={name} CA");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3650",
            "-subj",
            &ca_subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    match key {
        TsaKey::P256 => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "tsa.key",
            ],
        )?,
        TsaKey::Rsa2048 => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "tsa.key",
            ],
        )?,
    }
    let subject = format!("/O=actseal tests/CN={name}");
    openssl(
        dir,
        &[
            "req", "-new", "-key", "tsa.key", "-subj", &subject, "-out", "tsa.csr",
        ],
    )?;
    fs::write(
        dir.join("tsa.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=critical,timeStamping\nsubjectKeyIdentifier=hash\n\
         authorityKeyIdentifier=keyid\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "tsa.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "4661",
            "-days",
            "3650",
            "-sha256",
            "-extfile",
            "tsa.ext",
            "-out",
            "tsa.crt",
        ],
    )
}

fn tsa_config(dir: &Path, ess: EssCertId) -> String {
    let ess = match ess {
        EssCertId::Sha1 => "sha1",
        EssCertId::Sha256 => "sha256",
    };
    format!(
        "[ tsa ]\ndefault_tsa = tsa1\n\n[ tsa1 ]\ndir = {dir}\nserial = $dir/serial\n\
         crypto_device = builtin\nsigner_cert = $dir/tsa.crt\n\
         signer_key = $dir/tsa.key\nsigner_digest = sha256\ndefault_policy = {TEST_TSA_POLICY}\n\
         other_policies = {TEST_TSA_OTHER_POLICY}\ndigests = sha256, sha384, sha512\n\
         accuracy = secs:1\nclock_precision_digits = 0\nordering = no\ntsa_name = yes\n\
         ess_cert_id_chain = no\ness_cert_id_alg = {ess}\n",
        dir = dir.display()
    )
}

/// The HTTP front: one connection at a time.
struct Front {
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    mode: Arc<AtomicU8>,
    served: Arc<AtomicU64>,
    last: Option<Vec<u8>>,
}

impl Front {
    fn run(mut self, listener: TcpListener) {
        for stream in listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            if let Ok(stream) = stream {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = self.answer(stream);
            }
        }
    }

    fn answer(&mut self, mut stream: TcpStream) -> Result<()> {
        let query = read_post(&mut stream)?;
        let mode = self.mode.load(Ordering::SeqCst);
        let reply = if mode == TsaMode::Fail as u8 {
            None
        } else if mode == TsaMode::Replay as u8 && self.last.is_some() {
            self.last.clone()
        } else {
            Some(self.reply(&query)?)
        };
        self.served.fetch_add(1, Ordering::SeqCst);
        match reply {
            Some(body) => {
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/timestamp-reply\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )?;
                stream.write_all(&body)?;
                self.last = Some(body);
            }
            None => stream.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?,
        }
        stream.flush()?;
        Ok(())
    }

    fn reply(&self, query: &[u8]) -> Result<Vec<u8>> {
        let n = self.served.load(Ordering::SeqCst);
        let q = self.dir.join(format!("requests/{n}.tsq"));
        let r = self.dir.join(format!("requests/{n}.tsr"));
        fs::write(&q, query)?;
        let (q_arg, r_arg) = (q.display().to_string(), r.display().to_string());
        openssl(
            &self.dir,
            &[
                "ts",
                "-reply",
                "-config",
                "tsa.cnf",
                "-queryfile",
                &q_arg,
                "-out",
                &r_arg,
            ],
        )?;
        let body = fs::read(&r)?;
        let _ = fs::remove_file(&q);
        let _ = fs::remove_file(&r);
        Ok(body)
    }
}

/// Reads one HTTP/1.1 request and returns its body (Content-Length only).
fn read_post(stream: &mut TcpStream) -> Result<Vec<u8>> {
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.starts_with("POST ") {
        bail!("not a POST");
    }
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().context("bad Content-Length")?;
        }
    }
    if length > 64 * 1024 {
        bail!("request too large");
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(body)
}

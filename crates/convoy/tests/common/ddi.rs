//! What the DDI tests share: signed SWUpdate images (`.swu`: a cpio
//! "newc with CRC" archive of `sw-description`, its CMS signature made
//! with the `openssl` tool, and the payload), raw HTTP with any headers,
//! and the real `swupdate` as a device.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Debian's `swupdate` (CONVOY_TEST_SWUPDATE overrides); installed by `.ci/run`.
pub fn swupdate_exe() -> PathBuf {
    let p = PathBuf::from(std::env::var("CONVOY_TEST_SWUPDATE").unwrap_or_else(|_| "/usr/bin/swupdate".into()));
    assert!(
        p.exists(),
        "{} is missing: install Debian's swupdate package (apt-get install swupdate; .ci/run does), \
         or set CONVOY_TEST_SWUPDATE",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// A self-signed signing certificate for `.swu` files (SWUpdate checks the
/// signer's certificate for the emailProtection purpose by default).
pub struct Signer {
    pub cert: PathBuf,
    key: PathBuf,
}

impl Signer {
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = (dir.join("signer.pem"), dir.join("signer.key"));
        run(Command::new("openssl").args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]).args([
            "-subj",
            "/CN=convoy test signer",
            "-addext",
            "keyUsage=digitalSignature",
            "-addext",
            "extendedKeyUsage=emailProtection",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]));
        Self { cert, key }
    }

    /// Writes `DIR/app.swu`: installs `payload` with the `rawfile` handler
    /// at `installed/payload.bin`, relative to the device's working
    /// directory. `claimed` is the sha256 the signed description states
    /// (the payload's own unless a test lies about it).
    pub fn swu(&self, dir: &Path, version: &str, payload: &[u8], claimed: Option<&str>) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let sha = claimed.map(str::to_owned).unwrap_or_else(|| sha256_hex(payload));
        let desc = format!(
            "software =\n{{\n\tversion = \"{version}\";\n\tdescription = \"convoy DDI test\";\n\
             \thardware-compatibility: [ \"1.0\" ];\n\tfiles: (\n\t\t{{\n\t\t\tfilename = \"payload.bin\";\n\
             \t\t\tpath = \"installed/payload.bin\";\n\t\t\tsha256 = \"{sha}\";\n\t\t}}\n\t);\n}}\n"
        );
        let work = tempfile::tempdir().unwrap();
        let desc_path = work.path().join("sw-description");
        let sig_path = work.path().join("sw-description.sig");
        std::fs::write(&desc_path, &desc).unwrap();
        run(Command::new("openssl").args(["cms", "-sign", "-in", desc_path.to_str().unwrap()]).args([
            "-out",
            sig_path.to_str().unwrap(),
            "-signer",
            self.cert.to_str().unwrap(),
            "-inkey",
            self.key.to_str().unwrap(),
            "-outform",
            "DER",
            "-nosmimecap",
            "-binary",
        ]));
        let sig = std::fs::read(&sig_path).unwrap();
        let swu = cpio(&[("sw-description", desc.as_bytes()), ("sw-description.sig", &sig), ("payload.bin", payload)]);
        let out = dir.join("app.swu");
        std::fs::write(&out, swu).unwrap();
        out
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

/// cpio "new ASCII with CRC" (`070702`), as SWUpdate reads `.swu` files.
pub fn cpio(files: &[(&str, &[u8])]) -> Vec<u8> {
    fn pad(v: &mut Vec<u8>) {
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
    }
    let mut out = Vec::new();
    let mut entry = |name: &str, data: &[u8], ino: u32, mode: u32| {
        let sum = data.iter().fold(0u32, |s, b| s.wrapping_add(*b as u32));
        let fields = [ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, sum];
        out.extend_from_slice(b"070702");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad(&mut out);
        out.extend_from_slice(data);
        pad(&mut out);
    };
    for (i, (name, data)) in files.iter().enumerate() {
        entry(name, data, i as u32 + 1, 0o100644);
    }
    entry("TRAILER!!!", &[], 0, 0);
    out
}

/// One real SWUpdate device: its own working directory (where `rawfile`
/// installs), TMPDIR (its control sockets) and log.
pub struct Swupdate {
    pub name: String,
    pub dir: PathBuf,
    token: String,
    cert: PathBuf,
    child: Option<Child>,
    runs: u32,
}

impl Swupdate {
    pub fn new(root: &Path, name: &str, token: &str, signer: &Signer) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        std::fs::create_dir_all(dir.join("installed")).unwrap();
        std::fs::write(
            dir.join("swupdate.cfg"),
            format!(
                "globals : {{ verbose = true; loglevel = 6; }};\nidentify : (\n\t{{ name = \"board\"; value = \"convoy-test\"; }},\n\t{{ name = \"serial\"; value = \"{name}\"; }}\n);\n"
            ),
        )
        .unwrap();
        Self { name: name.to_owned(), dir, token: token.to_owned(), cert: signer.cert.clone(), child: None, runs: 0 }
    }

    /// Starts suricatta against the server; `confirm`: `-c 2`, the restart
    /// after an update that reports it successful.
    pub fn start(&mut self, port: u16, confirm: bool) {
        self.stop();
        self.runs += 1;
        let log = std::fs::File::create(self.dir.join(format!("swupdate-{}.log", self.runs))).unwrap();
        let mut suricatta =
            format!("-t DEFAULT -u http://127.0.0.1:{port} -i {} -k {} -p 1 -r 2 -w 1", self.name, self.token);
        if confirm {
            suricatta.push_str(" -c 2");
        }
        let cert = &self.cert;
        let child = Command::new(swupdate_exe())
            .args(["-v", "-f", "swupdate.cfg", "-k", cert.to_str().unwrap(), "-H", "board:1.0", "-u", &suricatta])
            .current_dir(&self.dir)
            .env("TMPDIR", self.dir.join("tmp"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM first: it stops its helper processes
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            for _ in 0..50 {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn installed(&self) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join("installed/payload.bin")).ok()
    }

    /// Every log of this device so far.
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|n| std::fs::read_to_string(self.dir.join(format!("swupdate-{n}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }
}

impl Drop for Swupdate {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An HTTP answer: status, headers (lower-case names) and body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on loopback with exactly these headers.
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        body = unchunk(&body);
    }
    Answer { status, headers, body }
}

fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { return out };
        let n =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).split(';').next().unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 4 + n..];
    }
}

"""Bytes over the wire for real upgrades; run through bench/bytes.sh.

For each pair of successive releases of a public package (downloaded from
its registry, unpacked, the top directory stripped), measures in one run:

- rsync: `rsync -rlpc --delete -z` over a pipe, old tree at the receiver
  (checksums, not mtimes: see PRIOR-ART.md); bytes sent + received.
- casync: `casync make` of both trees; compressed chunks of the new tree
  that the old tree's store lacks, plus the new index.
- xdelta3 -9 and `zstd -19 --long=31 --patch-from`: the binary delta of the
  two trees as deterministic tar streams (the lower bound).
- convoy, delta mode: an agent holding the old release upgrades; the body
  bytes of its transfers (compressed manifest patch + delta + any chunks).
- convoy, chunk mode: an agent with deltas off (`--max-memory 0`), its chunk
  cache emptied, the old release installed (so it seeds from its files).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile

NPM = "https://registry.npmjs.org"
CRATES = "https://static.crates.io/crates"

# name: (kind, old, new, how to get each)
PAIRS = {
    "vue": ("web framework, built dist files (npm)", "3.4.20", "3.4.21", lambda v: f"{NPM}/vue/-/vue-{v}.tgz"),
    "django": ("framework patch release, Python + catalogs (PyPI wheel)", "5.1.2", "5.1.3", "pypi:Django"),
    "tokio": ("source tree (crates.io)", "1.41.0", "1.41.1", lambda v: f"{CRATES}/tokio/tokio-{v}.crate"),
    "esbuild": (
        "binary-heavy: one Go executable (npm)",
        "0.24.0",
        "0.24.1",
        lambda v: f"{NPM}/@esbuild/linux-x64/-/linux-x64-{v}.tgz",
    ),
}

ADMIN = "bench-admin-token-0123456789"
ENROL = "bench-enrol-token-0123456789"


def download(cache, name, how, version):
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, f"{name}-{version}.pkg")
    if os.path.exists(path):
        return path
    if callable(how):
        with urllib.request.urlopen(how(version), timeout=120) as r:
            data = r.read()
    else:  # a wheel from PyPI, through pip
        d = tempfile.mkdtemp()
        run(sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", "-d", d,
            f"{how.split(':', 1)[1]}=={version}")
        with open(os.path.join(d, os.listdir(d)[0]), "rb") as f:
            data = f.read()
        shutil.rmtree(d)
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.rename(path + ".tmp", path)
    return path


def unpack(pkg, dest):
    """Unpacks a tgz or zip, stripping a single top directory."""
    os.makedirs(dest)
    with open(pkg, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        zipfile.ZipFile(pkg).extractall(dest)
    else:
        with tarfile.open(pkg) as t:
            t.extractall(dest, filter="data")
    entries = os.listdir(dest)
    if len(entries) == 1 and os.path.isdir(os.path.join(dest, entries[0])):
        top = os.path.join(dest, entries[0])
        for e in os.listdir(top):
            os.rename(os.path.join(top, e), os.path.join(dest, e))
        os.rmdir(top)
    for root, dirs, files in os.walk(dest):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode & 0o777 | 0o600)


def tree_size(d):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def tar(src, out):
    run("tar", "--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner", "-cf", out, "-C", src, ".")
    return out


def rsync_bytes(work, old, new):
    dest = os.path.join(work, "rsync-dest")
    shutil.copytree(old, dest, symlinks=True)
    rsh = os.path.join(work, "pipe-rsh")
    with open(rsh, "w") as f:
        f.write('#!/bin/sh\nshift\nexec "$@"\n')
    os.chmod(rsh, 0o755)
    out = run("rsync", "-rlpc", "--delete", "-z", "--stats", "-e", rsh, new + "/", f"localhost:{dest}/").stdout
    sent = int(re.search(r"Total bytes sent: ([\d,]+)", out).group(1).replace(",", ""))
    recv = int(re.search(r"Total bytes received: ([\d,]+)", out).group(1).replace(",", ""))
    return sent + recv


def casync_bytes(work, old, new):
    stores = []
    for name, tree in (("old", old), ("new", new)):
        store = os.path.join(work, f"casync-{name}.castr")
        run("casync", "make", f"--store={store}", os.path.join(work, f"{name}.caidx"), tree)
        stores.append(store)

    def chunks(store):
        return {f: os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(store) for f in fs}

    have = chunks(stores[0])
    return sum(s for f, s in chunks(stores[1]).items() if f not in have) + os.path.getsize(
        os.path.join(work, "new.caidx")
    )


def xdelta_bytes(work, old_tar, new_tar):
    out = os.path.join(work, "x.vcdiff")
    window = 1 << max(24, (os.path.getsize(old_tar) - 1).bit_length())
    run("xdelta3", "-e", "-9", "-f", "-B", str(min(window, 1 << 30)), "-s", old_tar, new_tar, out)
    return os.path.getsize(out)


def zstd_bytes(work, old_tar, new_tar):
    out = os.path.join(work, "z.zst")
    run("zstd", "-q", "-f", "-19", "--long=31", f"--patch-from={old_tar}", new_tar, "-o", out)
    return os.path.getsize(out)


class Convoy:
    """A server and two agents on loopback."""

    def __init__(self, exe, work):
        self.exe, self.work, self.procs = exe, work, []
        os.makedirs(work)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        self.env = dict(os.environ, CONVOY_SERVER=f"http://127.0.0.1:{port}", CONVOY_TOKEN=ADMIN)
        self.spawn("server", "server", "--listen", f"127.0.0.1:{port}", "--data-dir", os.path.join(work, "server"),
                   "--admin-token", ADMIN, "--enrol-token", ENROL)
        self.wait(lambda: self.cli("releases", check=False).returncode == 0)
        for name, extra in (("delta", []), ("chunks", ["--max-memory", "0"])):
            self.spawn(name, "agent", "--root", self.root(name), "--name", name, "--labels", "role=bench",
                       "--token", ENROL, *extra)
        self.wait(lambda: len(json.loads(self.cli("targets", "-o", "json").stdout)) == 2)

    def root(self, name):
        return os.path.join(self.work, f"agent-{name}")

    def spawn(self, log, *args):
        f = open(os.path.join(self.work, f"{log}.log"), "w")
        self.procs.append(subprocess.Popen([self.exe, *args], env=self.env, stdout=f, stderr=f))

    def wait(self, cond, limit=60):
        end = time.time() + limit
        while not cond():
            if time.time() > end:
                raise SystemExit("timed out; logs in " + self.work)
            time.sleep(0.2)

    def cli(self, *args, check=True):
        return subprocess.run([self.exe, *args], env=self.env, capture_output=True, text=True, check=check)

    def release(self, app, version, tree):
        self.cli("publish", tree, "--app", app, "--version", version)
        out = self.cli("deploy", f"{app}@{version}", "--selector", "role=bench", "--wait", "-o", "json", check=False)
        d = json.loads(out.stdout)
        if d["deployment"]["state"] != "succeeded":
            raise SystemExit(f"{app}@{version}: {json.dumps(d, indent=1)}")
        return {i["hostname"]: i["metrics"] for i in d["instructions"]}

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait()


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def main():
    exe = sys.argv[1]
    names = sys.argv[2:] or list(PAIRS)
    cache = os.path.join(os.path.dirname(exe), "..", "bench-cache")
    work = tempfile.mkdtemp(prefix="convoy-bytes-")
    convoy = Convoy(exe, os.path.join(work, "convoy"))
    rows = []
    try:
        for name in names:
            kind, old_v, new_v, how = PAIRS[name]
            w = os.path.join(work, name)
            os.makedirs(w)
            old, new = os.path.join(w, "old"), os.path.join(w, "new")
            unpack(download(cache, name, how, old_v), old)
            unpack(download(cache, name, how, new_v), new)
            old_tar, new_tar = tar(old, os.path.join(w, "old.tar")), tar(new, os.path.join(w, "new.tar"))
            r = {"name": f"{name} {old_v} -> {new_v}", "kind": kind, "size": tree_size(new)}
            r["rsync"] = rsync_bytes(w, old, new)
            r["casync"] = casync_bytes(w, old, new)
            r["xdelta3"] = xdelta_bytes(w, old_tar, new_tar)
            r["zstd"] = zstd_bytes(w, old_tar, new_tar)
            first = convoy.release(name, old_v, old)
            r["full"] = int(first["delta"]["bytes_fetched"])
            shutil.rmtree(os.path.join(convoy.root("chunks"), ".convoy", "cache"))
            up = convoy.release(name, new_v, new)
            r["delta"], r["delta_mode"] = int(up["delta"]["bytes_fetched"]), up["delta"].get("transfer")
            r["chunks"], r["chunks_mode"] = int(up["chunks"]["bytes_fetched"]), up["chunks"].get("transfer")
            rows.append(r)
            print(f"measured {r['name']}", file=sys.stderr)
    finally:
        convoy.stop()
    print("| pair | kind | new tree | full (convoy) | rsync | casync | xdelta3 | zstd --patch-from "
          "| convoy delta | ÷ best delta (goal ≤ 1.5) | convoy chunks | ÷ min(rsync, casync) (goal ≤ 1) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        best = min(r["xdelta3"], r["zstd"])
        base = min(r["rsync"], r["casync"])
        print(f"| {r['name']} | {r['kind']} | {human(r['size'])} | {human(r['full'])} | {human(r['rsync'])} "
              f"| {human(r['casync'])} | {human(r['xdelta3'])} | {human(r['zstd'])} "
              f"| {human(r['delta'])} ({r['delta_mode']}) | {r['delta'] / best:.2f}x "
              f"| {human(r['chunks'])} ({r['chunks_mode']}) | {r['chunks'] / base:.2f}x |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()

"""Bytes over the wire for real upgrades, drifted installs and first
installs; run through bench/bytes.sh.

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
- drifted: a third agent whose installed old release had 20 files edited,
  5 added and 5 deleted on the machine, its chunk cache emptied; beside
  rsync and casync from the same drifted tree.
- first install: the old release to an agent new to the app (one
  compressed stream), beside `tar | zstd -19` of the tree and chunk mode.
- making the delta: the server's CPU seconds and peak RSS from publish to
  the delta being ready, beside `zstd -19 --long=31 --patch-from` (CPU and
  peak RSS of that process).
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
    "numpy": ("binary wheel with compiled libraries (PyPI)", "2.1.2", "2.1.3", "pypi:numpy"),
    "weblate": ("web application, >100 MB, many translation catalogs (PyPI)", "5.8.3", "5.8.4", "pypi:weblate"),
    "vue-skip": ("a skip over six versions (npm)", "3.4.15", "3.4.21", lambda v: f"{NPM}/vue/-/vue-{v}.tgz"),
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


def drift(tree):
    """What an operator's hands do to an installed tree: 20 files edited,
    5 added, 5 deleted (deterministic)."""
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(tree) for f in fs
                   if not os.path.islink(os.path.join(r, f)))
    step = max(1, len(files) // 30)
    picked = files[::step][:25]
    for p in picked[:20]:
        with open(p, "rb") as f:
            data = f.read()
        mid = len(data) // 2
        with open(p, "wb") as f:
            f.write(data[:mid] + b"\n# edited on this machine\n" + data[mid:])
    for p in picked[20:25]:
        os.remove(p)
    for i in range(5):
        with open(os.path.join(tree, f"local-{i}.txt"), "w") as f:
            f.write(f"added on this machine {i}\n" * 200)


def cpu_and_peak(*args):
    """Runs a command; its CPU seconds and peak RSS in bytes."""
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"{args[0]} failed: {status}")
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024


def tar_zst_bytes(work, tar_path):
    out = os.path.join(work, "tree.tar.zst")
    run("zstd", "-q", "-f", "-19", tar_path, "-o", out)
    return os.path.getsize(out)


def xdelta_bytes(work, old_tar, new_tar):
    out = os.path.join(work, "x.vcdiff")
    window = 1 << max(24, (os.path.getsize(old_tar) - 1).bit_length())
    run("xdelta3", "-e", "-9", "-f", "-B", str(min(window, 1 << 30)), "-s", old_tar, new_tar, out)
    return os.path.getsize(out)


def zstd_bytes(work, old_tar, new_tar):
    """The patch's size, and the CPU seconds and peak RSS making it took."""
    out = os.path.join(work, "z.zst")
    cpu, peak = cpu_and_peak("zstd", "-q", "-f", "-19", "--long=31", f"--patch-from={old_tar}", new_tar, "-o", out)
    return os.path.getsize(out), cpu, peak


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
        self.port = port
        for name, extra in (("delta", []), ("chunks", ["--max-memory", "0"]), ("drift", [])):
            self.spawn(name, "agent", "--root", self.root(name), "--name", name, "--labels", "role=bench",
                       "--token", ENROL, *extra)
        self.wait(lambda: len(json.loads(self.cli("targets", "-o", "json").stdout)) == 3)

    def root(self, name):
        return os.path.join(self.work, f"agent-{name}")

    def spawn(self, log, *args):
        f = open(os.path.join(self.work, f"{log}.log"), "w")
        self.procs.append(subprocess.Popen([self.exe, *args], env=self.env, stdout=f, stderr=f))

    def wait(self, cond, limit=120):
        end = time.time() + limit
        while not cond():
            if time.time() > end:
                raise SystemExit("timed out; logs in " + self.work)
            time.sleep(0.2)

    def cli(self, *args, check=True):
        return subprocess.run([self.exe, *args], env=self.env, capture_output=True, text=True, check=check)

    def get_status(self, path):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/v1{path}",
                                     headers={"Authorization": f"Bearer {ADMIN}"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status

    def server_cpu(self):
        fields = open(f"/proc/{self.procs[0].pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def server_peak(self):
        for line in open(f"/proc/{self.procs[0].pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    def publish(self, app, version, tree, ready):
        """Publishes; waits until the server made what `ready` names (a
        delta or the first-install stream). Returns the server's CPU seconds
        and peak RSS from the end of publishing to then, and the wait."""
        with open(f"/proc/{self.procs[0].pid}/clear_refs", "w") as f:
            f.write("5")
        self.cli("publish", tree, "--app", app, "--version", version)
        cpu, start = self.server_cpu(), time.time()
        self.wait(lambda: self.get_status(ready) != 202, limit=1800)
        return self.server_cpu() - cpu, self.server_peak(), time.time() - start

    def release(self, app, version):
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
            pkg = name.split("-")[0]
            w = os.path.join(work, name)
            os.makedirs(w)
            old, new = os.path.join(w, "old"), os.path.join(w, "new")
            unpack(download(cache, pkg, how, old_v), old)
            unpack(download(cache, pkg, how, new_v), new)
            old_tar, new_tar = tar(old, os.path.join(w, "old.tar")), tar(new, os.path.join(w, "new.tar"))
            r = {"name": f"{pkg} {old_v} -> {new_v}", "kind": kind, "size": tree_size(new), "old_size": tree_size(old)}
            r["rsync"] = rsync_bytes(w, old, new)
            r["casync"] = casync_bytes(w, old, new)
            r["xdelta3"] = xdelta_bytes(w, old_tar, new_tar)
            r["zstd"], r["zstd_cpu"], r["zstd_peak"] = zstd_bytes(w, old_tar, new_tar)
            r["tar_zst"] = tar_zst_bytes(w, old_tar)
            # first install of the old release (the stream, made at publish)
            convoy.publish(name, old_v, old, f"/releases/{name}/{old_v}/stream")
            first = convoy.release(name, old_v)
            r["first"], r["first_mode"] = int(first["delta"]["bytes_fetched"]), first["delta"].get("transfer")
            r["first_chunks"] = int(first["chunks"]["bytes_fetched"])
            # the drifted machine, and its rsync/casync baselines from the same tree
            drifted = os.path.join(convoy.root("drift"), "releases", name, old_v)
            drift(drifted)
            shutil.rmtree(os.path.join(convoy.root("drift"), ".convoy", "cache"))
            dcopy = os.path.join(w, "drifted")
            shutil.copytree(drifted, dcopy, symlinks=True)
            dw = os.path.join(w, "d")
            os.makedirs(dw)
            r["drift_rsync"] = rsync_bytes(dw, dcopy, new)
            r["drift_casync"] = casync_bytes(dw, dcopy, new)
            shutil.rmtree(os.path.join(convoy.root("chunks"), ".convoy", "cache"))
            # the upgrade: the delta is made at publish; staging starts once it is ready
            r["make_cpu"], r["make_peak"], r["ready_s"] = convoy.publish(
                name, new_v, new, f"/releases/{name}/{new_v}/delta?from={old_v}")
            up = convoy.release(name, new_v)
            r["delta"], r["delta_mode"] = int(up["delta"]["bytes_fetched"]), up["delta"].get("transfer")
            r["chunks"], r["chunks_mode"] = int(up["chunks"]["bytes_fetched"]), up["chunks"].get("transfer")
            r["drift"], r["drift_mode"] = int(up["drift"]["bytes_fetched"]), up["drift"].get("transfer")
            rows.append(r)
            print(f"measured {r['name']}; the drifted machine's report: {up['drift']}", file=sys.stderr)
    finally:
        convoy.stop()
    print("### Upgrades from the release the machine holds (goal: ≤ 1.1 × best delta + 2 KiB)\n")
    print("| pair | kind | new tree | rsync | casync | xdelta3 | zstd --patch-from | **convoy delta** "
          "| ÷ best delta | ≤ goal | convoy chunks |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        best = min(r["xdelta3"], r["zstd"])
        ok = "yes" if r["delta"] <= 1.1 * best + 2048 else "**no**"
        print(f"| {r['name']} | {r['kind']} | {human(r['size'])} | {human(r['rsync'])} | {human(r['casync'])} "
              f"| {human(r['xdelta3'])} | {human(r['zstd'])} | **{human(r['delta'])}** ({r['delta_mode']}) "
              f"| {r['delta'] / best:.2f}x | {ok} | {human(r['chunks'])} ({r['chunks_mode']}) |")
    print("\n### Drifted installs, no cache: 20 files edited, 5 added, 5 deleted (goal: ≤ min(rsync, casync))\n")
    print("| pair | rsync -c -z | casync | **convoy** | ÷ min |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        base = min(r["drift_rsync"], r["drift_casync"])
        print(f"| {r['name']} | {human(r['drift_rsync'])} | {human(r['drift_casync'])} "
              f"| **{human(r['drift'])}** ({r['drift_mode']}) | {r['drift'] / base:.2f}x |")
    print("\n### First installs of the old release (goal: ≤ 1.05 × tar.zst-19)\n")
    print("| tree | size | tar \\| zstd -19 | **convoy stream** | ÷ tar.zst | convoy chunks |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name'].split(' ->')[0]} | {human(r['old_size'])} | {human(r['tar_zst'])} "
              f"| **{human(r['first'])}** ({r['first_mode']}) | {r['first'] / r['tar_zst']:.2f}x "
              f"| {human(r['first_chunks'])} |")
    print("\n### Making the delta (goal: CPU ≤ zstd --patch-from's; ≤ 256 MiB; ready before staging)\n")
    print("| pair | zstd -19 --long --patch-from: CPU, peak RSS | **convoy server: CPU, peak RSS** | ready after |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['zstd_cpu']:.1f} s, {human(r['zstd_peak'])} "
              f"| **{r['make_cpu']:.1f} s, {human(r['make_peak'])}** | {r['ready_s']:.1f} s |")
    shutil.copy(os.path.join(work, "convoy", "server.log"), os.path.join(os.path.dirname(exe), "..", "bench-bytes-server.log"))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()

"""Fan-out through site relays; run through bench/fanout.sh (as root).

Topology, all in network namespaces this script creates and removes:

    origin ns (convoy server) --veth, tbf RATE each way--> site ns 1 (relay + N agents)
                              --veth, tbf RATE each way--> site ns 2 ...

Each site's machines are agent processes in the site's namespace (they
reach each other over its loopback, as a LAN); the only way out is the
shaped site link. v1 is installed everywhere, then v2 (a 512 KiB change in
a 3 MiB file) is deployed to every machine and measured:

- origin egress ÷ delta size      (goal: the number of sites)
- bytes over each site link ÷ delta (goal: 1.0)
- time until every machine verified v2 ÷ the slowest link's bound
  (delta bytes at RATE; goal ≤ 1.2), with p50/p99/max per machine.

Link bytes are the veths' counters: they include TCP/IP headers and the
agents' polls and reports, so they slightly overstate the content moved.
Added delay (netem) is not available in this kernel: links are rate-shaped
only. Without namespaces (not root, or no `ip`), everything runs on
loopback and the link figures are not measured; the script says so.
"""

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ADMIN = "bench-admin-token-0123456789"
ENROL = "bench-enrol-token-0123456789"
PORT = 7420


def sh(*args, ns=None, check=True):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


class Net:
    def __init__(self, sites, rate):
        self.sites, self.rate, self.made = sites, rate, []

    def up(self):
        sh("ip", "netns", "add", "cvo")
        self.made.append("cvo")
        sh("ip", "link", "set", "lo", "up", ns="cvo")
        for k in range(1, self.sites + 1):
            ns = f"cvs{k}"
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
            sh("ip", "link", "add", f"o-s{k}", "netns", "cvo", "type", "veth", "peer", "name", f"s-s{k}", "netns", ns)
            sh("ip", "addr", "add", f"10.77.{k}.1/24", "dev", f"o-s{k}", ns="cvo")
            sh("ip", "addr", "add", f"10.77.{k}.2/24", "dev", f"s-s{k}", ns=ns)
            for dev, n in ((f"o-s{k}", "cvo"), (f"s-s{k}", ns)):
                sh("ip", "link", "set", dev, "up", ns=n)
                sh("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", self.rate, "burst", "32kbit",
                   "latency", "400ms", ns=n)

    def down(self):
        for ns in reversed(self.made):
            sh("ip", "netns", "del", ns, check=False)

    def tx(self, k):
        return int(sh("cat", f"/sys/class/net/o-s{k}/statistics/tx_bytes", ns="cvo").stdout)


def rate_bps(rate):
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for u, m in units.items():
        if rate.endswith(u):
            return float(rate[: -len(u)]) * m
    return float(rate)


def main():
    exe, sites, per_site, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    work = tempfile.mkdtemp(prefix="convoy-fanout-")
    net = Net(sites, rate)
    netns = os.geteuid() == 0 and shutil.which("ip") and shutil.which("tc")
    if netns:
        try:
            net.up()
        except subprocess.CalledProcessError as e:
            print(f"network namespaces unavailable ({e.stderr.strip()}); loopback only", file=sys.stderr)
            net.down()
            netns = False
    if not netns:
        print("NOTE: running on loopback only: no shaped links, link figures not measured")
    procs = []
    env = dict(os.environ, CONVOY_SERVER=f"http://127.0.0.1:{PORT}", CONVOY_TOKEN=ADMIN)

    def spawn(name, ns, *args):
        log = open(os.path.join(work, f"{name}.log"), "w")
        cmd = (["ip", "netns", "exec", ns] if ns else []) + [exe, *args]
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=log))

    def cli(*args):
        cmd = (["ip", "netns", "exec", "cvo"] if netns else []) + [exe, *args]
        return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout

    def wait(cond, what, limit=120):
        end = time.time() + limit
        while not cond():
            if time.time() > end:
                raise SystemExit(f"timed out waiting for {what}; logs in {work}")
            time.sleep(0.3)

    try:
        listen = f"0.0.0.0:{PORT}" if netns else f"127.0.0.1:{PORT}"
        spawn("server", "cvo" if netns else None, "server", "--listen", listen, "--data-dir",
              os.path.join(work, "server"), "--admin-token", ADMIN, "--enrol-token", ENROL,
              "--enrol-rate-token", "0", "--enrol-rate-address", "0")
        wait(lambda: subprocess.run((["ip", "netns", "exec", "cvo"] if netns else []) + [exe, "releases"],
                                    env=env, capture_output=True).returncode == 0, "the server")
        for k in range(1, sites + 1):
            ns = f"cvs{k}" if netns else None
            server = f"http://10.77.{k}.1:{PORT}" if netns else f"http://127.0.0.1:{PORT}"
            relay_port = PORT + k if not netns else PORT + 1
            spawn(f"s{k}-relay", ns, "agent", "--server", server, "--token", ENROL, "--root",
                  os.path.join(work, f"s{k}-relay"), "--name", f"s{k}-relay", "--labels", f"site=s{k},role=relay",
                  "--relay", "--listen", f"127.0.0.1:{relay_port}")
            for m in range(1, per_site + 1):
                spawn(f"s{k}-m{m}", ns, "agent", "--server", server, "--token", ENROL, "--root",
                      os.path.join(work, f"s{k}-m{m}"), "--name", f"s{k}-m{m}", "--labels", f"site=s{k},role=web")
        total = sites * (per_site + 1)

        def relays_known():
            ts = json.loads(cli("targets", "-o", "json"))
            return len(ts) == total and sum(1 for t in ts if t["inventory"].get("relay")) == sites

        wait(relays_known, "every agent to enrol")
        # relays serve their site only once an operator grants it
        for t in json.loads(cli("targets", "-o", "json")):
            if t["inventory"].get("relay"):
                cli("relays", "grant", t["id"], "--site", t["labels"]["site"])

        rng = random.Random(42)
        v1 = os.path.join(work, "v1")
        os.makedirs(v1)
        data = bytearray(rng.getrandbits(8) for _ in range(3 << 20))
        with open(os.path.join(v1, "app.bin"), "wb") as f:
            f.write(data)
        with open(os.path.join(v1, "index.html"), "w") as f:
            f.write("<h1>v1</h1>\n")
        v2 = os.path.join(work, "v2")
        shutil.copytree(v1, v2)
        data[1 << 20:(1 << 20) + (512 << 10)] = bytes(rng.getrandbits(8) for _ in range(512 << 10))
        with open(os.path.join(v2, "app.bin"), "wb") as f:
            f.write(data)
        with open(os.path.join(v2, "index.html"), "w") as f:
            f.write("<h1>v2</h1>\n")

        def deploy(version, tree):
            cli("publish", tree, "--app", "fan", "--version", version)
            d = json.loads(cli("deploy", f"fan@{version}", "--all", "--wait", "-o", "json", "--stage-timeout", "1h"))
            if d["deployment"]["state"] != "succeeded":
                raise SystemExit(json.dumps(d, indent=1))
            return d

        print(f"installing v1 on {total} machines in {sites} sites ...", file=sys.stderr)
        deploy("1", v1)
        before = [net.tx(k) for k in range(1, sites + 1)] if netns else []
        print("deploying v2 ...", file=sys.stderr)
        d = deploy("2", v2)
        after = [net.tx(k) for k in range(1, sites + 1)] if netns else []
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        if netns:
            net.down()

    delta = max(int(i["metrics"].get("delta_bytes", 0)) for i in d["instructions"])
    created = d["deployment"]["created_at"]
    staged = {e["instruction_id"]: e["at"] for e in d["events"] if e["to"] == "staged" and e["instruction_id"]}
    times = sorted((staged[i["id"]] - created) / 1000 for i in d["instructions"])
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    modes = sorted({i["metrics"].get("transfer", "?") for i in d["instructions"]})
    print(f"{sites} sites x ({per_site} machines + 1 relay) = {total} machines; site links {rate} each way")
    print(f"release delta: {delta} bytes; transfers: {', '.join(modes)}")
    if netns:
        bound = delta * 8 / rate_bps(rate)
        links = [a - b for a, b in zip(after, before)]
        print("| figure | convoy | goal |")
        print("|---|---:|---:|")
        print(f"| origin egress ÷ delta | {sum(links) / delta:.2f} | {sites} (one copy per site) |")
        for k, b in enumerate(links, 1):
            print(f"| site s{k} link bytes ÷ delta | {b / delta:.2f} | 1.00 |")
        print(f"| slowest link's bound (delta at {rate}) | {bound:.2f} s | |")
        print(f"| all verified ÷ bound | {times[-1] / bound:.2f} | ≤ 1.2 |")
    print(f"time to verified per machine: p50 {p(0.5):.2f} s, p99 {p(0.99):.2f} s, max {times[-1]:.2f} s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

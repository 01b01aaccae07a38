#!/usr/bin/env python3
"""The control plane at scale (SPEC §6, §8; issue figures): one server,
N enrolled targets simulated over loopback (no agent processes), measured
beside the same server's /health in the same run.

Usage: control-plane.py CONVOY_BIN N BACKEND [HELD]
  BACKEND: sqlite, or a postgres:// URL (a fresh schema is made in it).
Prints one line per figure with its goal; exits 0 (figures are reported,
not judged). Every phase is bounded in count and time.

Environment (all optional):
  CP_REPORTERS=N   connections posting reports (default 64)
  CP_PERF=FILE     perf profile of the server, during CP_PERF_PHASE
                   (create: creation and wake, the default; reports),
                   recorded with CP_PERF_ARGS (default "-g -F 499")
  CP_WRAP="CMD"    run the server under CMD (e.g. "heaptrack -o /tmp/ht")
  CP_KILL=1        end the server with SIGKILL at the end (a heap profiler
                   then reports its memory at rest as not freed)
  CP_UNTIL=polls   stop after the polls with no work (reports: after the
                   reports)
  CP_LOG=FILE      keep the server's log (CONVOY_LOG sets its filter)
  CP_SMAPS=FILE    copy the server's /proc/PID/smaps at rest to FILE
  CP_AT_REST="CMD" run CMD (a shell command; {pid} is the server's) at rest
"""

import asyncio
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ADMIN = "bench-admin-token-0123456789"
ENROL = "bench-enrol-token-0123456789"
CONC = 64


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_s(pid):
    """CPU seconds (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_s():
    """CPU seconds (user + system) PostgreSQL's processes on this machine
    have used so far (those that have ended are not counted)."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        if head.split("(", 1)[1] == "postgres":
            fields = rest.split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def hot_updates(backend, schema):
    """(heap-only, all) updates of the schema's instructions table so far,
    as PostgreSQL's statistics have them, or None."""
    out = subprocess.run(["psql", backend, "-Atc", f"SELECT n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables WHERE schemaname = '{schema}' AND relname = 'instructions'"], capture_output=True, text=True, timeout=60).stdout.strip()
    return tuple(int(x) for x in out.split("|")) if "|" in out else None


def machine_cpu():
    """(busy, total) jiffies of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def rss_kib(pid, field="VmRSS:"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


class Conn:
    """One keep-alive HTTP/1.1 connection on loopback."""

    def __init__(self, port):
        self.port = port
        self.r = self.w = None
        self.stamp = None

    async def open(self):
        self.r, self.w = await asyncio.open_connection("127.0.0.1", self.port)

    async def send(self, method, path, token=None, body=None):
        if self.w is None:
            await self.open()
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        if token:
            # "SCHEME SECRET" as given (DDI's TargetToken), else a bearer token
            auth = token if " " in token else f"Bearer {token}"
            head += f"Authorization: {auth}\r\n"
        self.w.write(head.encode() + b"\r\n" + data)
        await self.w.drain()

    async def answer(self):
        status = await self.r.readline()
        if not status:
            raise ConnectionError("closed")
        # when the answer began to arrive (before this client parses it)
        self.stamp = time.monotonic()
        code = int(status.split()[1])
        length = 0
        while True:
            line = await self.r.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            if k.lower() == "content-length":
                length = int(v)
        body = await self.r.readexactly(length) if length else b""
        return code, body

    async def call(self, method, path, token=None, body=None):
        await self.send(method, path, token, body)
        return await self.answer()

    def close(self):
        if self.w:
            self.w.close()


async def pool(port, items, job, deadline):
    """Runs job(conn, item) over items on CONC connections; returns seconds."""
    queue = list(items)
    queue.reverse()
    start = time.monotonic()

    async def worker():
        c = Conn(port)
        while queue:
            if time.monotonic() - start > deadline:
                raise TimeoutError(f"not done within {deadline}s")
            await job(c, queue.pop())
        c.close()

    await asyncio.gather(*(worker() for _ in range(CONC)))
    return time.monotonic() - start


def metric(port, name):
    out = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/api/v1/metrics"], capture_output=True, text=True, timeout=30).stdout
    if "convoy_targets" not in out:
        out = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/metrics"], capture_output=True, text=True, timeout=30).stdout
    for line in out.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise SystemExit(f"no {name} in /metrics")


WRK_LUA = """
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
local n = 0
request = function()
  n = n + 1
  local t = tokens[(n * 7919 + math.random(#tokens)) % #tokens + 1]
  return wrk.format("GET", "/api/v1/agent/work", {["Authorization"] = "Bearer " .. t})
end
"""


# DDI devices' polls: TOKENS holds "CONTROLLER_ID<TAB>TOKEN" lines
DDI_LUA = """
local devs = {}
for line in io.lines(os.getenv("TOKENS")) do
  local id, tok = line:match("([^\t]+)\t(.*)")
  devs[#devs + 1] = {id, tok}
end
local n = 0
request = function()
  n = n + 1
  local d = devs[(n * 7919 + math.random(#devs)) % #devs + 1]
  return wrk.format("GET", "/DEFAULT/controller/v1/" .. d[1], {["Authorization"] = "TargetToken " .. d[2]})
end
"""


REPORT_LUA = """
local items = {}
for line in io.lines(os.getenv("REPORTS")) do
  local tok, body = line:match("([^\t]+)\t(.*)")
  items[#items + 1] = {tok, body}
end
local threads = 0
setup = function(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
-- each of the 2 threads posts every other report once, then stops once
-- all of its answers are in, leaving a file REPORTS.done<thread> (a thread
-- with nothing left to post sends a /health meanwhile); its requests are
-- formatted before the run, so the load generator spends little CPU on each
local reqs, k, answered, refused = {}, 0, 0, 0
local health = nil
-- wrk calls the first thread's request() once to check it and sends
-- nothing: that call must not use up a report
local checked = true
init = function(args)
  checked = tid ~= 0
  health = wrk.format("GET", "/api/v1/health")
  for i = tid + 1, #items, 2 do
    local it = items[i]
    reqs[#reqs + 1] = wrk.format("POST", "/api/v1/agent/report",
      {["Authorization"] = "Bearer " .. it[1], ["Content-Type"] = "application/json"}, it[2])
  end
  items = nil
  -- ready to send: the rate is timed from the first thread's mark
  -- (reading and formatting reports is the load generator's work)
  local f = io.open(os.getenv("REPORTS") .. ".ready" .. tid, "w")
  f:close()
end
request = function()
  if not checked then
    checked = true
    return health
  end
  k = k + 1
  if k > #reqs then
    return health
  end
  return reqs[k]
end
-- out of reports: a connection waits 5 ms between its /health requests
-- (so they take little of the CPU the remaining reports need)
delay = function()
  if k >= #reqs then
    return 5
  end
  return 0
end
response = function(status, headers, body)
  -- a report's answer (/health is 200 and never says "accepted")
  if status ~= 200 then
    answered, refused = answered + 1, refused + 1
  elseif body:find('"accepted"', 1, true) then
    answered = answered + 1
  end
  if answered == #reqs then
    -- tells the script this thread is done (wrk itself runs its -d)
    local done = os.getenv("REPORTS") .. ".done" .. tid
    local f = io.open(done .. ".part", "w")
    f:write(refused)
    f:close()
    os.rename(done .. ".part", done)
    wrk.thread:stop()
  end
end
"""


async def absorb(port, lua, env, conns, expected):
    """Reports per second while wrk posts `expected` reports once each:
    from the moment one of wrk's threads is ready to send (its requests
    formatted) until both have every answer (an answer
    comes only after the move is committed). The server is not asked
    anything meanwhile."""
    done = [f"{env['REPORTS']}.done{t}" for t in (0, 1)]
    ready = [f"{env['REPORTS']}.ready{t}" for t in (0, 1)]
    for d in done + ready:
        if os.path.exists(d):
            os.remove(d)
    start = time.monotonic()
    w = subprocess.Popen(["wrk", "-t2", f"-c{conns}", "-d60s", "--timeout", "10s", "-s", lua, f"http://127.0.0.1:{port}"],
                         env=env, stdout=open(f"{lua}.out", "w"), stderr=subprocess.STDOUT)
    try:
        # timed from the moment the first thread has its requests ready
        # (checked every millisecond) until both have every answer
        t0 = None
        while not all(os.path.exists(d) for d in done) and time.monotonic() - start < 60:
            if t0 is None and any(os.path.exists(r) for r in ready):
                t0 = time.monotonic()
            await asyncio.sleep(0.001)
        took = time.monotonic() - (t0 or start)
    finally:
        w.terminate()
        w.wait(timeout=30)
    if not all(os.path.exists(d) for d in done):
        raise SystemExit(f"wrk did not see all {expected} reports answered within 60 s:\n" + open(f"{lua}.out").read())
    refused = sum(int(open(d).read() or 0) for d in done)
    if refused:
        print(f"  ({refused} of {expected} reports answered with an error)")
    return (expected - refused) / took


def wrk(url, seconds, lua=None, env=None, conns=64):
    args = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s"]
    if lua:
        args += ["-s", lua]
    out = subprocess.run(args + [url], capture_output=True, text=True, env=env, timeout=seconds + 60).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            rate = float(line.split()[1])
        if "Non-2xx" in line:
            raise SystemExit(f"wrk saw errors: {out}")
    return rate


async def main():
    exe, n, backend = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    held_n = int(sys.argv[4]) if len(sys.argv) > 4 else min(10_000, n)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < held_n + 1000:
        raise SystemExit(f"open-file limit {hard} is below {held_n} held polls")
    tmp = tempfile.mkdtemp(prefix="convoy-cp-")
    port = free_port()
    env = dict(os.environ, CONVOY_ADMIN_TOKEN=ADMIN, CONVOY_ENROL_TOKEN=ENROL, CONVOY_ENROL_RATE_TOKEN="0", CONVOY_ENROL_RATE_ADDRESS="0")
    args = [exe, "server", "--listen", f"127.0.0.1:{port}", "--data-dir", f"{tmp}/data"]
    schema = None
    if backend != "sqlite":
        schema = f"convoy_cp_{random.getrandbits(40):010x}"
        sep = "&" if "?" in backend else "?"
        subprocess.run(["psql", backend, "-qc", f"CREATE SCHEMA {schema}"], check=True, timeout=30)
        args += ["--database", f"{backend}{sep}options[search_path]={schema}"]
        with open(f"{tmp}/secret", "w") as f:
            f.write("ab" * 32)
        os.chmod(f"{tmp}/secret", 0o600)
        env["CONVOY_KEY_SECRET_FILE"] = f"{tmp}/secret"
    # CP_WRAP: a command to run the server under (a profiler)
    args = os.environ.get("CP_WRAP", "").split() + args
    server = subprocess.Popen(args, env=env, stdout=open(f"{tmp}/server.log", "w"), stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        await run(exe, n, held_n, port, server.pid, tmp, backend, schema)
    finally:
        server.terminate()
        server.wait(timeout=30)
        if schema:
            subprocess.run(["psql", backend, "-qc", f"DROP SCHEMA {schema} CASCADE"], timeout=60, stderr=subprocess.DEVNULL)
        if os.environ.get("CP_LOG"):
            shutil.copy(f"{tmp}/server.log", os.environ["CP_LOG"])
        shutil.rmtree(tmp, ignore_errors=True)


def line(name, value, goal):
    print(f"{name:<44} {value:<34} goal {goal}", flush=True)


async def run(exe, n, held_n, port, pid, tmp, backend, schema):
    name = "sqlite" if backend == "sqlite" else "postgres"
    print(f"# control plane, {name}, {n} targets, {held_n} held polls", flush=True)
    tokens = []

    async def enrol(c, k):
        group = "held" if k < held_n else "rest"
        inv = {"hostname": f"sim-{k:06d}", "os": "linux", "arch": "x86_64", "free_disk_bytes": 1 << 34,
               "labels": {"group": group}, "installed": {}, "current": {}, "agent_version": "bench"}
        code, body = await c.call("POST", "/api/v1/agent/enroll", ENROL, {"inventory": inv})
        if code != 200:
            raise SystemExit(f"enrol: {code} {body[:200]}")
        tokens.append((k, json.loads(body)["token"]))

    secs = await pool(port, range(n), enrol, 3600)
    tokens.sort()
    tokens = [t for _, t in tokens]
    line("enrolments", f"{n / secs:,.0f}/s ({secs:.0f} s)", "-")
    with open(f"{tmp}/tokens", "w") as f:
        f.write("\n".join(tokens) + "\n")

    # every target polls once (fills the cache), then polls with no work
    async def poll(c, t):
        code, body = await c.call("GET", "/api/v1/agent/work", t)
        if code != 200:
            raise SystemExit(f"poll: {code} {body[:200]}")

    await pool(port, tokens, poll, 3600)
    with open(f"{tmp}/work.lua", "w") as f:
        f.write(WRK_LUA)
    calls0 = metric(port, "convoy_store_calls_total")
    calls1 = metric(port, "convoy_store_calls_total")
    per_metrics = calls1 - calls0
    polls0 = metric(port, "convoy_agent_polls_total")
    polls = wrk(f"http://127.0.0.1:{port}", 10, f"{tmp}/work.lua", dict(os.environ, TOKENS=f"{tmp}/tokens"))
    calls2 = metric(port, "convoy_store_calls_total")
    polled = metric(port, "convoy_agent_polls_total") - polls0
    health = wrk(f"http://127.0.0.1:{port}/api/v1/health", 10)
    line("polls with no work", f"{polls:,.0f}/s ({polls / health:.2f}x /health)", ">= 20,000/s")
    line("baseline: /health, same server, same run", f"{health:,.0f}/s", "")
    line("database calls per such poll", f"{max(0, calls2 - calls1 - per_metrics) / max(polled, 1):.4f}", "0")

    # devices speaking hawkBit DDI, beside the agents: polls with nothing new
    ddi_n = min(n, int(os.environ.get("CP_DDI", "10000")))
    devices = []

    async def add_ddi(c, k):
        code, body = await c.call("POST", "/api/v1/ddi/targets", ADMIN, {"controller_id": f"ddi-sim-{k:06d}"})
        if code != 200:
            raise SystemExit(f"add DDI device: {code} {body[:200]}")
        devices.append((f"ddi-sim-{k:06d}", json.loads(body)["token"]))

    secs = await pool(port, range(ddi_n), add_ddi, 3600)
    line("DDI devices added", f"{ddi_n / secs:,.0f}/s ({ddi_n} in {secs:.0f} s)", "-")

    async def ddi_poll(c, d):
        code, body = await c.call("GET", f"/DEFAULT/controller/v1/{d[0]}", f"TargetToken {d[1]}")
        if code != 200:
            raise SystemExit(f"DDI poll: {code} {body[:200]}")

    await pool(port, devices, ddi_poll, 3600)
    with open(f"{tmp}/ddi.tokens", "w") as f:
        f.write("".join(f"{i}\t{t}\n" for i, t in devices))
    with open(f"{tmp}/ddi.lua", "w") as f:
        f.write(DDI_LUA)
    calls3 = metric(port, "convoy_store_calls_total")
    ddi0 = metric(port, "convoy_ddi_polls_total")
    ddi = wrk(f"http://127.0.0.1:{port}", 10, f"{tmp}/ddi.lua", dict(os.environ, TOKENS=f"{tmp}/ddi.tokens"))
    calls4 = metric(port, "convoy_store_calls_total")
    ddi_polled = metric(port, "convoy_ddi_polls_total") - ddi0
    line("DDI polls with nothing new", f"{ddi:,.0f}/s ({ddi / health:.2f}x /health)", ">= 20,000/s")
    line("database calls per such DDI poll", f"{max(0, calls4 - calls3 - per_metrics) / max(ddi_polled, 1):.4f}", "0")

    # held polls: their memory, then how fast a deployment wakes them
    rest = rss_kib(pid)
    line("server RSS, every target polled once", f"{rest / 1024:.0f} MiB", "-")
    if os.environ.get("CP_UNTIL") == "polls":
        return
    held = [Conn(port) for _ in range(held_n)]
    for k in range(0, held_n, 500):
        await asyncio.gather(*(c.open() for c in held[k:k + 500]))
    for c, t in zip(held, tokens[:held_n]):
        await c.send("GET", "/api/v1/agent/work?wait=60", t)
    await asyncio.sleep(3)
    holding = rss_kib(pid)
    line("server memory per held poll", f"{(holding - rest) * 1024 / held_n / 1024:.1f} KiB ({held_n} held)", "<= 16 KB")
    src = f"{tmp}/release"
    os.makedirs(src)
    with open(f"{src}/app.txt", "w") as f:
        f.write("release 1.0\n" * 100)
    cli_env = dict(os.environ, CONVOY_SERVER=f"http://127.0.0.1:{port}", CONVOY_TOKEN=ADMIN)
    subprocess.run([exe, "publish", src, "--app", "bench", "--version", "1.0"], env=cli_env, check=True, capture_output=True, timeout=120)
    woke = []
    t0 = time.monotonic()

    async def wait_one(c, tok):
        # stamped when the answer's first line is read; its JSON is parsed
        # after every poll has woken, so this one client's parsing does not
        # delay the answers it has still to read
        code, body = await c.answer()
        woke.append((c.stamp - t0, (code, body), tok))

    waits = [asyncio.ensure_future(wait_one(c, t)) for c, t in zip(held, tokens[:held_n])]
    admin = Conn(port)
    perf = None
    if os.environ.get("CP_PERF") and os.environ.get("CP_PERF_PHASE", "create") == "create":
        # a profile of the server while it creates the deployment and wakes the polls
        perf = subprocess.Popen(["perf", "record"] + os.environ.get("CP_PERF_ARGS", "-g -F 499").split() + ["-p", str(pid), "-o", os.environ["CP_PERF"]], stderr=subprocess.DEVNULL)
        await asyncio.sleep(1)
    t0 = time.monotonic()
    code, body = await admin.call("POST", "/api/v1/deployments", ADMIN, {"app": "bench", "version": "1.0", "selector": "group=held", "max_failures": held_n})
    created = time.monotonic() - t0
    if code != 200:
        raise SystemExit(f"deploy: {code} {body[:300]}")
    dep = json.loads(body)["id"]
    await asyncio.wait_for(asyncio.gather(*waits), 120)
    if perf:
        perf.send_signal(2)
        perf.wait(timeout=60)
    woke = [(t, [json.loads(i["payload"])["work"] for i in json.loads(body).get("work", [])] if code == 200 else [], tok) for t, (code, body), tok in woke]
    times = sorted(t for t, _, _ in woke)
    with_work = sum(1 for _, w, _ in woke if w)
    line(f"create a deployment to {held_n} targets", f"{created * 1000:.0f} ms", "<= 1 s (10k)")
    line(f"wake {held_n} held polls", f"p50 {times[len(times) // 2]:.2f} s, p99 {times[int(len(times) * 0.99)]:.2f} s ({with_work} with work)", "<= 1 s p99")
    for c in held:
        c.close()

    # reports: each woken target says received, then staged
    work = [w[0] for _, w, _ in woke if w]
    owner = {w[0]["instruction_id"]: tok for _, w, tok in woke if w}
    digest = json.loads((await admin.call("GET", "/api/v1/releases/bench/1.0", ADMIN))[1])["digest"]
    reports = [(w, {"kind": "received"}) for w in work]
    reports += [(w, {"kind": "staged", "digest": digest}) for w in work]
    # wrk posts each once, from CP_REPORTERS connections (64); the rate is
    # moves the server accepted over the time wrk took
    with open(f"{tmp}/report.lua", "w") as f:
        f.write(REPORT_LUA)
    rates = []
    reporters = int(os.environ.get("CP_REPORTERS", "64"))
    if os.environ.get("CP_PERF") and os.environ.get("CP_PERF_PHASE") == "reports":
        perf = subprocess.Popen(["perf", "record"] + os.environ.get("CP_PERF_ARGS", "-g -F 499").split() + ["-p", str(pid), "-o", os.environ["CP_PERF"]], stderr=subprocess.DEVNULL)
        await asyncio.sleep(1)
    hot0 = hot_updates(backend, schema) if backend != "sqlite" else None
    acc0 = metric(port, 'convoy_agent_reports_total{result="accepted"}')
    calls0 = metric(port, "convoy_store_calls_total")
    cpu0, kids0, pg0, m0 = cpu_s(pid), resource.getrusage(resource.RUSAGE_CHILDREN), postgres_cpu_s(), machine_cpu()
    for kind in ("received", "staged"):
        with open(f"{tmp}/reports", "w") as f:
            for w, k in reports:
                if k["kind"] != kind:
                    continue
                body = {"instruction_id": w["instruction_id"], "phase": "stage", "attempt": w["attempt"], "report": k, "metrics": {}, "output": "", "inventory": None}
                f.write(owner[w["instruction_id"]] + "\t" + json.dumps(body) + "\n")
        rates.append(await absorb(port, f"{tmp}/report.lua", dict(os.environ, REPORTS=f"{tmp}/reports"), reporters, len(reports) // 2))
    cpu1, kids, pg1, m1 = cpu_s(pid), resource.getrusage(resource.RUSAGE_CHILDREN), postgres_cpu_s(), machine_cpu()
    accepted = metric(port, 'convoy_agent_reports_total{result="accepted"}') - acc0
    # two /metrics requests since calls0: the one above and this one
    calls = metric(port, "convoy_store_calls_total") - calls0 - 2 * per_metrics
    server_us = (cpu1 - cpu0) * 1e6 / max(accepted, 1)
    wrk_us = (kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime) * 1e6 / max(accepted, 1)
    if perf and perf.poll() is None:
        perf.send_signal(2)
        perf.wait(timeout=60)
    line(f"reports absorbed (received, staged; {reporters} conns)", f"{statistics.mean(rates):,.0f}/s ({accepted:.0f} of {len(reports)} moved)", ">= 20,000/s")
    line("CPU per report: server, load generator", f"{server_us:.0f} us, {wrk_us:.0f} us", "-")
    if backend != "sqlite":
        pg_us = (pg1 - pg0) * 1e6 / max(accepted, 1)
        line("CPU per report: PostgreSQL (its processes here)", f"{pg_us:.0f} us", "-")
        # heap-only updates write no index entries (a backend's counts
        # reach the statistics within about a second while it works)
        await asyncio.sleep(1.5)
        hot1 = hot_updates(backend, schema)
        if hot0 and hot1:
            hot, upd = hot1[0] - hot0[0], hot1[1] - hot0[1]
            line("instruction updates heap-only (PostgreSQL)", f"{100 * hot / max(upd, 1):.0f}% of {upd:,} during the reports", "-")
    # the whole machine's CPU over both rounds (wrk's start-ups included)
    line("machine busy during the reports", f"{100 * (m1[0] - m0[0]) / max(m1[1] - m0[1], 1):.0f}% of {os.cpu_count()} cores", "-")
    line("store calls per report (writes included)", f"{calls / max(accepted, 1):.3f}", "-")
    if os.environ.get("CP_UNTIL") == "reports":
        return

    # status of the deployment, as an operator sees it
    lat = []
    for _ in range(7):
        t = time.monotonic()
        subprocess.run([exe, "status", dep], env=cli_env, check=True, capture_output=True, timeout=60)
        lat.append(time.monotonic() - t)
    api = []
    for _ in range(7):
        t = time.monotonic()
        code, body = await admin.call("GET", f"/api/v1/deployments/{dep}", ADMIN)
        api.append(time.monotonic() - t)
    line(f"convoy status of the {held_n}-target deployment", f"median {statistics.median(lat) * 1000:.0f} ms", "<= 300 ms")
    line("  GET /deployments/{id} (first page)", f"median {statistics.median(api) * 1000:.0f} ms, {len(body) / 1024:.0f} KiB", "summary + pages")
    admin.close()
    # one real agent, idle: its memory while it long-polls
    root = f"{tmp}/agent"
    os.makedirs(root)
    # polls every 5 s (so that several polls fall in the time measured)
    agent = subprocess.Popen([exe, "agent", "--server", f"http://127.0.0.1:{port}", "--root", root, "--labels", "group=idle", "--name", "idle-agent",
                              "--poll-wait", "5"],
                             env=dict(os.environ, CONVOY_TOKEN=ENROL), stdout=open(f"{tmp}/agent.log", "w"), stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            if os.path.exists(f"{root}/.convoy/agent.json"):
                break
            await asyncio.sleep(0.1)
        else:
            raise SystemExit("the idle agent did not enrol in 30 s")
        # the most it held over seconds 10 to 20 of idling, sampled every
        # second: past its start-up, and over two polls at least
        await asyncio.sleep(10)
        # (RSS, its anonymous part), at the sample with the most RSS
        most = (0, 0)
        for _ in range(11):
            most = max(most, (rss_kib(agent.pid), rss_kib(agent.pid, "RssAnon:")))
            await asyncio.sleep(1)
        line("agent RSS, idle (long-polling; most over 10 s)", f"{most[0] / 1024:.1f} MiB ({most[1] / 1024:.1f} MiB anonymous)", "<= 12 MB")
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    await asyncio.sleep(2)
    line("server RSS at rest", f"{rss_kib(pid) / 1024:.0f} MiB", "<= 200 MB (100k)")
    if os.environ.get("CP_SMAPS"):
        with open(f"/proc/{pid}/smaps") as src, open(os.environ["CP_SMAPS"], "w") as dst:
            dst.write(src.read())
    if os.environ.get("CP_AT_REST"):
        subprocess.run(os.environ["CP_AT_REST"].replace("{pid}", str(pid)), shell=True, timeout=120)
    if backend == "sqlite":
        size = sum(os.path.getsize(f"{tmp}/data/{f}") for f in os.listdir(f"{tmp}/data") if f.startswith("convoy.db"))
    else:
        out = subprocess.run(["psql", backend, "-Atc", f"SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' AND c.relkind = 'r'"], capture_output=True, text=True, timeout=60).stdout
        size = int(out.strip() or 0)
    line("database size", f"{size / 1e6:.0f} MB", "-")
    if os.environ.get("CP_KILL"):
        # ends the server as it is (what a heap profiler under CP_WRAP
        # then reports as not freed is the server's memory at rest)
        subprocess.run(["pkill", "-9", "-f", f"server --listen 127.0.0.1:{port} "], timeout=30)


if __name__ == "__main__":
    asyncio.run(main())

#!/usr/bin/env python3
"""The report writer's statements on SQLite alone, without the server: an
UPDATE ... FROM VALUES of BATCH instruction moves and an INSERT of their
events per transaction, over 10,000 instructions in convoy's schema, in WAL
mode with synchronous=NORMAL. BG=SECONDS checkpoints the WAL on a second
connection every SECONDS (with wal_autocheckpoint=0), as the server does;
without it SQLite's automatic checkpoint runs inside commits.
Usage: python3 bench/sqlite-moves.py BATCH [BG=0.5 in the environment]"""
import glob, os, random, sqlite3, sys, tempfile, threading, time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
path = os.path.join(tempfile.mkdtemp(prefix="convoy-moves-"), "moves.db")
db = sqlite3.connect(path, isolation_level=None)
for f in sorted(glob.glob(f"{root}/crates/convoy-store-sqlite/migrations/*.sql")):
    db.executescript(open(f).read())
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=NORMAL")
info = list(db.execute("PRAGMA table_info(deployments)"))
vals = [("d1" if c[1] == "id" else (0 if "INT" in c[2].upper() else "x")) for c in info]
db.execute(f"INSERT INTO deployments ({','.join(c[1] for c in info)}) VALUES ({','.join('?' * len(info))})", vals)
ids = [f"i-{random.getrandbits(64):016x}" for _ in range(10000)]
db.execute("BEGIN")
for i in ids:
    db.execute("INSERT INTO instructions (id, deployment_id, target_id, state, attempt, metrics, output, note, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
               (i, "d1", "t-" + i[2:], "sent", 0, "{}", "", "x", 0))
db.execute("COMMIT")
batch = int(sys.argv[1])
if os.environ.get("BG"):
    db.execute("PRAGMA wal_autocheckpoint=0")

    def checkpoints():
        c = sqlite3.connect(path, isolation_level=None)
        while True:
            time.sleep(float(os.environ["BG"]))
            c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    threading.Thread(target=checkpoints, daemon=True).start()
random.shuffle(ids)
t, n = time.time(), 0
for k in range(0, len(ids), batch):
    part = ids[k:k + batch]
    db.execute("BEGIN")
    q = ("WITH m(mid, mto, mnote) AS (VALUES " + ",".join(["(?,?,?)"] * len(part)) + ") UPDATE instructions SET state = m.mto, "
         "note = m.mnote, updated_at = 5 FROM m WHERE instructions.id = m.mid AND instructions.state = 'sent' RETURNING id, deployment_id")
    rows = db.execute(q, [x for i in part for x in (i, "received", "got it")]).fetchall()
    q = "INSERT INTO events (deployment_id, instruction_id, from_state, to_state, actor, note, at) VALUES " + ",".join(["(?,?,?,?,?,?,?)"] * len(rows))
    db.execute(q, [x for i, d in rows for x in (d, i, "sent", "received", "agent:t-" + i[2:], "got it", 5)])
    db.execute("COMMIT")
    n += len(rows)
dt = time.time() - t
print(f"batch {batch}{' with checkpoints every ' + os.environ['BG'] + ' s' if os.environ.get('BG') else ''}: "
      f"{n / dt:,.0f} moves/s, {dt / (len(ids) / batch) * 1000:.2f} ms a batch")

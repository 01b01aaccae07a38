#!/usr/bin/env python3
"""SQLite CPU per report move by statement shape (BENCHMARKS.md, tenth
session): the report writer's set statements (INSERT ... SELECT from a
VALUES list, UPDATE ... FROM with RETURNING) against one UPDATE and one
INSERT a move, in one transaction, on 20k instructions.
Usage: sqlite-statement-shape.py sets|rows [BATCH]   (Python's sqlite3;
PRAGMA="PRAGMA cache_size=-65536" adds a pragma; writes /tmp/exp/t.db)
SCHEMA picks how a target's open instructions are indexed:
  target   (target_id) alone (the default; migration 13's first form)
  virtual  (target_id, done), done a virtual column of the state (migration 13)
  kept     (target_id, done), done a column kept by triggers (migration 14;
           only its update trigger: the insert and guard triggers do not
           fire on a report's move)
EVENTS_BY_INSTRUCTION=0 leaves out the index events (instruction_id, seq).
"""
import sqlite3, random, time, os, sys, statistics
os.makedirs("/tmp/exp", exist_ok=True)
path="/tmp/exp/t.db"
for f in (path, path+"-wal", path+"-shm"):
    if os.path.exists(f): os.remove(f)
c=sqlite3.connect(path, isolation_level=None)
WORKING="('created', 'sent', 'received', 'staged', 'activating', 'rolling_back')"
SCHEMA=os.environ.get("SCHEMA","target")
DONE={"target":"", "virtual":f", done INTEGER GENERATED ALWAYS AS (state NOT IN {WORKING}) VIRTUAL",
      "kept":", done INTEGER NOT NULL DEFAULT 0"}[SCHEMA]
INDEX={"target":"CREATE INDEX instructions_target ON instructions (target_id);"}.get(SCHEMA,
      "CREATE INDEX instructions_target_done ON instructions (target_id, done);")
if SCHEMA=="kept":
    INDEX+=f"""
CREATE TRIGGER instructions_done_on_update AFTER UPDATE OF state ON instructions
    WHEN NEW.done IS NOT (NEW.state NOT IN {WORKING})
BEGIN UPDATE instructions SET done = (NEW.state NOT IN {WORKING}) WHERE rowid = NEW.rowid; END;"""
c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=NORMAL"); c.execute("PRAGMA temp_store=memory"); c.execute(os.environ.get("PRAGMA","PRAGMA cache_size=-2000"))
c.executescript("""
CREATE TABLE deployments (id TEXT PRIMARY KEY);
CREATE TABLE instructions (id TEXT PRIMARY KEY, deployment_id TEXT NOT NULL REFERENCES deployments (id), target_id TEXT NOT NULL,
 state TEXT NOT NULL, attempt INTEGER NOT NULL, previous_version TEXT, go_live_at INTEGER, reported_digest TEXT,
 metrics TEXT NOT NULL, output TEXT NOT NULL, note TEXT NOT NULL, updated_at INTEGER NOT NULL""" + DONE + """);
CREATE INDEX instructions_deployment_id ON instructions (deployment_id, id);
""" + INDEX + """
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, deployment_id TEXT NOT NULL, instruction_id TEXT, from_state TEXT NOT NULL,
 to_state TEXT NOT NULL, actor TEXT NOT NULL, note TEXT NOT NULL, at INTEGER NOT NULL);
CREATE INDEX events_deployment ON events (deployment_id, seq);
""" + ("" if os.environ.get("EVENTS_BY_INSTRUCTION") == "0" else "CREATE INDEX events_instruction ON events (instruction_id, seq);") + """
CREATE INDEX events_actor ON events (actor, seq) WHERE actor NOT LIKE 'agent:%';
""")
N=20000
dep="dep-"+os.urandom(8).hex()
c.execute("INSERT INTO deployments VALUES (?)",(dep,))
ids=[os.urandom(16).hex() for _ in range(N)]
c.execute("BEGIN")
c.executemany("INSERT INTO instructions (id, deployment_id, target_id, state, attempt, previous_version, go_live_at, reported_digest, metrics, output, note, updated_at) VALUES (?,?,?,?,?,NULL,NULL,NULL,'{}','','created',0)",[(i,dep,"target-%06d"%k,"sent",1) for k,i in enumerate(ids)])
c.execute("COMMIT")
state={i:"sent" for i in ids}
nxt={"sent":"received","received":"staged","staged":"activating","activating":"succeeded"}
BATCH=int(sys.argv[2]) if len(sys.argv)>2 else 28
def moves():
    sel=random.sample([i for i in ids if state[i] in nxt],BATCH)
    return [(i,state[i],1,nxt[state[i]],"agent:t","staged ok") for i in sel]
def pad(n):
    step=8 if n<=64 else 64
    return -(-n//step)*step
def sets(mv):
    rows=pad(len(mv))
    ev=", ".join(f"(?, ?, ?, ?, ?, ?, {k})" for k in range(rows))
    up=", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"]*rows)
    p1=[];p2=[]
    for (i,f,a,t,act,note) in mv: p1+= [i,f,a,t,act,note]; p2+=[i,t,a,None,"sha256:abc",None,None,note,f,a]
    p1+=[None]*6*(rows-len(mv)); p2+=[None]*10*(rows-len(mv))
    c.execute("BEGIN IMMEDIATE")
    c.execute(f"WITH e(mid, mfrom, mfromatt, mto, mactor, mnote, k) AS (VALUES {ev}) INSERT INTO events (deployment_id, instruction_id, from_state, to_state, actor, note, at) SELECT i.deployment_id, e.mid, e.mfrom, e.mto, e.mactor, e.mnote, ? FROM e JOIN instructions i ON i.id = e.mid AND i.state = e.mfrom AND i.attempt = e.mfromatt ORDER BY e.k", p1+[1])
    r=c.execute(f"WITH m(mid, mto, matt, mlive, mdigest, mmetrics, moutput, mnote, mfrom, mfromatt) AS (VALUES {up}) UPDATE instructions SET state = m.mto, attempt = m.matt, go_live_at = COALESCE(m.mlive, instructions.go_live_at), reported_digest = COALESCE(m.mdigest, instructions.reported_digest), metrics = COALESCE(m.mmetrics, instructions.metrics), output = COALESCE(m.moutput, instructions.output), note = m.mnote, updated_at = ? FROM m WHERE instructions.id = m.mid AND instructions.state = m.mfrom AND instructions.attempt = m.mfromatt RETURNING id, deployment_id", p2+[1]).fetchall()
    c.execute("COMMIT")
    return len(r)
def rows(mv):
    c.execute("BEGIN IMMEDIATE")
    n=0
    for (i,f,a,t,act,note) in mv:
        c.execute("INSERT INTO events (deployment_id, instruction_id, from_state, to_state, actor, note, at) SELECT deployment_id, ?, ?, ?, ?, ?, ? FROM instructions WHERE id = ? AND state = ? AND attempt = ?", (i,f,t,act,note,1,i,f,a))
        cur=c.execute("UPDATE instructions SET state = ?, attempt = ?, go_live_at = COALESCE(?, go_live_at), reported_digest = COALESCE(?, reported_digest), metrics = COALESCE(?, metrics), output = COALESCE(?, output), note = ?, updated_at = ? WHERE id = ? AND state = ? AND attempt = ?", (t,a,None,"sha256:abc",None,None,note,1,i,f,a))
        n+=cur.rowcount
    c.execute("COMMIT")
    return n
f={"sets":sets,"rows":rows}[sys.argv[1]]
cpu=0; tot=0; wall=0
for b in range(600):
    mv=moves()
    t=time.process_time(); w=time.perf_counter()
    tot+=f(mv)
    cpu+=time.process_time()-t; wall+=time.perf_counter()-w
    for (i,_,_,t2,_,_) in mv: state[i]=t2
    if b%100==99: c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
print(sys.argv[1], BATCH, SCHEMA, f"{cpu*1e6/tot:.1f} us cpu/move, {wall*1e6/tot:.1f} us wall/move")

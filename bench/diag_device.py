import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.sched_setaffinity(0, {0, 1})
import sandbox as b
from app.sandbox import Sandbox, Limits
progs = b.benchmark_programs()
items = [(p, b.mucode_program(r, c, p), "private") for r, c, p in progs]
tck = os.sysconf("SC_CLK_TCK")
def st(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tck, (int(f[13]) + int(f[14])) / tck
for numpy in (True, False):
    with Sandbox(workers=2, limits=Limits(timeout_s=3), preimport_numpy=numpy, allow_weak_isolation=False) as sb:
        e = sb._proc.pid
        kids = [int(d) for d in os.listdir("/proc") if d.isdigit() and open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1] == str(e)]
        z = kids[0]
        js = [int(d) for d in os.listdir("/proc") if d.isdigit() and "judge" in open(f"/proc/{d}/stat").read().split(")")[0] and open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1] == str(z)]
        rss = [l for l in open(f"/proc/{z}/status") if l.startswith(("VmRSS", "RssAnon"))]
        sb.run_many(items[:10])
        b0 = {p: st(p) for p in [e, z] + js}
        t0 = time.time(); sb.run_many(items); dt = time.time() - t0
        b1 = {p: st(p) for p in [e, z] + js}
        n = len(items)
        d = lambda p, i: (b1[p][i] - b0[p][i]) / n * 1e3
        print(f"numpy={numpy}: {n/dt:.0f}/s; ms/program: executor {d(e,0):.2f} zygote {d(z,0):.2f} candidates {d(z,1):.2f} judges {sum(d(j,0) for j in js):.2f}; zygote {[x.strip() for x in rss]}", flush=True)

#!/usr/bin/env python3
"""Writes the committed load series (deterministic): step, spike, sine, gaps.
Columns: t_seconds,scur,qcur,qtime; an empty cell is a failed sample."""
import math

def write(name, rows):
    with open(f"{name}.csv", "w") as f:
        f.write("t_seconds,scur,qcur,qtime\n")
        for t, scur, qcur, qtime in rows:
            cells = ["" if v is None else f"{v:g}" for v in (scur, qcur, qtime)]
            f.write(f"{t}," + ",".join(cells) + "\n")

def served(inflight, capacity):
    """What HAProxy shows: served up to capacity, the rest queued."""
    s = min(inflight, capacity)
    q = inflight - s
    return s, q, (40 if q else 0)

# step: 4 in flight, 60 for 3 minutes, then 4 again.
rows = []
for i in range(0, 240):
    t = 2 * i
    d = 60 if 60 <= t < 240 else 4
    s, q, qt = served(d, 48)
    rows.append((t, s, q, qt))
write("step", rows)

# spike: 16 in flight with a 4 s spike to 100 at t=100.
rows = []
for i in range(0, 150):
    t = 2 * i
    d = 100 if 100 <= t < 104 else 16
    s, q, qt = served(d, 32)
    rows.append((t, s, q, qt))
write("spike", rows)

# sine: 8..72 in flight, 10-minute period, 20 minutes.
rows = []
for i in range(0, 600):
    t = 2 * i
    d = round(40 + 32 * math.sin(2 * math.pi * t / 600))
    rows.append((t, d, 0, 0))
write("sine", rows)

# gaps: 40 in flight, then load drops to 4 while samples fail (every other sample,
# then a 30 s outage): the autoscaler must not scale down on the missing samples.
rows = []
for i in range(0, 150):
    t = 2 * i
    d = 40 if t < 100 else 4
    if 100 <= t < 160 and i % 2 == 0 or 200 <= t < 230:
        rows.append((t, None, None, None))
    else:
        rows.append((t, d, 0, 0))
write("gaps", rows)

#!/usr/bin/env python3
"""Writes the committed load series (deterministic): step, spike, sine, gaps, signals,
outage, weekday.
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

# The series below are replayed against signals.yaml (several targets, a tolerance per
# direction, a fallback). Columns add rtime (ms) and rate (requests per second).
def write_full(name, rows):
    with open(f"{name}.csv", "w") as f:
        f.write("t_seconds,scur,qcur,qtime,rtime,rate\n")
        for t, *values in rows:
            cells = ["" if v is None else f"{v:g}" for v in values]
            f.write(f"{t}," + ",".join(cells) + "\n")

# signals: 16 in flight throughout (2 replicas' worth). The request rate climbs to
# 300/s for two minutes (6 replicas at 50/s each), then the response time rises to
# 260 ms for 20 s (a slow dependency): each signal decides in turn.
rows = []
for i in range(0, 300):
    t = 2 * i
    rate = 300 if 60 <= t < 180 else 80
    rtime = 260 if 300 <= t < 320 else 120
    rows.append((t, 16, 0, 0, rtime, rate))
write_full("signals", rows)

# outage: 16 in flight, then HAProxy unreachable for 90 s (every sample fails), then
# back: after fallback.after (30 s) the count goes up to fallback.replicas (4), and
# comes down again only through the scale-down window once samples are good.
rows = []
for i in range(0, 200):
    t = 2 * i
    if 60 <= t < 150:
        rows.append((t, None, None, None, None, None))
    else:
        rows.append((t, 16, 0, 0, 120, 80))
write_full("outage", rows)

# weekday: replayed against schedule.yaml from Monday 2024-01-08 07:50 in Zurich
# (`--start 2024-01-08T07:50:00+01:00`), one sample every 5 s for 50 minutes. The
# window "0 8 * * 1-5" (Europe/Zurich, 30m) holds at least 4 replicas from 08:00 to
# 08:30. 6 in flight until 08:00 (1 replica); a morning ramp to 20 that the floor
# covers; 56 from 08:10 to 08:20 (7 replicas, beyond the floor); 12 from 08:20 on
# (2 replicas): the floor holds 4 until 08:30, then the count comes down through the
# scale-down window.
rows = []
for i in range(0, 600):
    t = 5 * i
    if t < 600:
        d = 6
    elif t < 1200:
        d = 6 + round(14 * (t - 600) / 600)
    elif t < 1800:
        d = 56
    else:
        d = 12
    rows.append((t, d, 0, 0))
write("weekday", rows)

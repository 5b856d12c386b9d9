#!/usr/bin/env python3
"""Standalone-server memory of N /ws?since=0 sockets (never read) of one user over a backlog.
usage: backlog_mem.py PORT SERVER_PID SOCKETS BACKLOG [BODY_CHARS]

Registers a reader and a writer, sends BACKLOG messages to the reader, opens SOCKETS
`/ws?since=0` sockets of the reader that never read, and prints the server's resident set
(VmRSS of SERVER_PID) before and after, and the kernel's socket buffers. Start the server with
its per-address limits off and a socket limit of at least SOCKETS, e.g.:

    target/release/chat-server --send-rate-per-sec 0 --send-burst 0 --logins-per-minute 0 \
        --registrations-per-hour 0 --max-sockets-per-user 100 --database sqlite:///tmp/m/chat.db \
        --listen 127.0.0.1:8772 &
    python3 scripts/bench/backlog_mem.py 8772 $! 100 1000 4000
"""
import json, socket, sys, time, threading, http.client, os, datetime

port, pid, n, backlog = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
prefix = "m%x_" % (int(time.time() * 1000) & 0xffffff)

def req(method, path, body=None, token=None, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    h = {"Content-Type": "application/json"}
    if token: h["Authorization"] = "Bearer " + token
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse(); data = r.read()
    if r.status >= 300: raise SystemExit(f"{method} {path}: {r.status} {data[:200]}")
    return json.loads(data) if data else None

def user(name):
    creds = {"username": name, "password": "loadgen-password"}
    req("POST", "/api/v1/auth/register", creds)
    return req("POST", "/api/v1/auth/login", creds)["token"]

def tcpmem():
    for line in open("/proc/net/sockstat"):
        if line.startswith("TCP:"): return int(line.split()[-1]) * 4  # KiB
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1])

reader, writer = prefix + "reader", prefix + "writer"
rtoken, wtoken = user(reader), user(writer)
body = "a message of a realistic length, some eighty characters long, give or take"
if len(sys.argv) > 5: body = ("x" * int(sys.argv[5]))
t0 = time.time()
def sender(count):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(count):
        req("POST", "/api/v1/message/", {"recipient": reader, "body": body}, wtoken, c)
threads = [threading.Thread(target=sender, args=(backlog // 8 + (1 if i < backlog % 8 else 0),)) for i in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
print(f"backlog of {backlog} messages of {len(body)} characters sent in {time.time()-t0:.1f} s")
time.sleep(5)
before = rss(); kbefore = tcpmem()
socks = []
handshake = (f"GET /ws?since=0 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             f"Authorization: Bearer {rtoken}\r\n\r\n").encode()
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small, like a slow client; never read
    s.sendall(handshake)
    resp = b""
    while not resp.endswith(b"\r\n\r\n"):
        b = s.recv(1)
        if not b: raise SystemExit(f"socket {i}: closed during handshake: {resp!r}")
        resp += b
    if not resp.startswith(b"HTTP/1.1 101"): raise SystemExit(f"socket {i}: {resp[:200]!r}")
    socks.append(s)
samples = []
for t in (1, 3, 5, 10):
    time.sleep(t - (samples[-1][0] if samples else 0))
    samples.append((t, rss()))
peak = max(r for _, r in samples)
print(f"kernel TCP buffers (all sockets, /proc/net/sockstat): {kbefore/1024:.1f} MiB before, {tcpmem()/1024:.1f} MiB with them open")
os.system(f"ss -tnm state established '( sport = :{port} )' | awk 'NR>1 && /ESTAB/ {{q+=$3}} END {{print \"server-side Send-Q total: \" q/1048576 \" MiB over \" NR/2 \" sockets\"}}'")
print(f"{n} sockets since=0 over a {backlog}-message backlog: VmRSS before {before/1024:.1f} MiB; after "
      + ", ".join(f"{t}s {r/1024:.1f} MiB" for t, r in samples)
      + f"; growth {(peak-before)/1024:.1f} MiB ({(peak-before)/n:.1f} KiB per socket)")
for s in socks: s.close()
time.sleep(2)
print(f"2 s after closing them: VmRSS {rss()/1024:.1f} MiB")

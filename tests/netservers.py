"""HTTP(S) servers for the remote-source tests: a test CA and server certificates made
with the openssl CLI, nginx serving a folder over HTTP and HTTPS, and a Python server
that serves a folder with Range, ETag, If-Match and Last-Modified and injects faults
(stalls, dropped connections, 5xx, 429, a Range ignored, wrong lengths, a replaced
object, 401/403/404) while it counts requests and body bytes per path.

Nothing here needs the daemon: the sanity tests in test_remote_http.py check these
servers with curl and urllib on their own.
"""
import contextlib
import email.utils
import hashlib
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import util

NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
START_TIMEOUT = 20.0


def in_ci():
    return bool(os.environ.get("CI"))


def skip_or_fail(reason):
    """Skips where a tool is missing on a developer's machine; fails in CI, which must have it."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: scripts/deps.sh must install it)", pytrace=False)
    pytest.skip(reason)


def free_port():
    """A loopback port free now (the caller binds it soon after; nginx retries on a clash)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, timeout, what, step=0.01):
    """Polls cond() until it is true; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


# ------------------------------------------------------------------- certificates

@dataclass
class Certs:
    ca: Path      # the CA's certificate: what -o cacert= and curl --cacert take
    cert: Path    # the server's certificate (chain: leaf only)
    key: Path     # the server's key
    names: tuple  # the SANs it carries


def _openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{r.stderr}")


def make_ca(d, cn="safetensorsfs test CA"):
    """A fresh CA in folder d: (ca.pem, ca.key)."""
    if not shutil.which("openssl"):
        skip_or_fail("the openssl CLI is not installed")
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "3", "-subj", f"/CN={cn}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return d / "ca.pem", d / "ca.key"


def make_certs(d, sans=("IP:127.0.0.1", "DNS:localhost"), ca=None):
    """A server certificate for `sans` signed by a CA made here (or ca=(pem, key) given)."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    ca_pem, ca_key = ca or make_ca(d / "ca")
    (d / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(sans)}\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=safetensorsfs test server", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", str(ca_pem), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", "server.pem", "-days", "3", "-extfile", "ext.cnf", cwd=d)
    return Certs(Path(ca_pem), d / "server.pem", d / "server.key", tuple(sans))


# ------------------------------------------------------------------------- nginx

class Nginx:
    """nginx serving `root` on 127.0.0.1 over HTTP (http_port) and HTTPS (https_port,
    with certs), in the foreground, everything of its own below `d`.  Its access log
    records method, URI, status, Range, If-Match and body bytes per request."""

    LOG_FORMAT = "$request_method $uri $status [$http_range] [$http_if_match] $body_bytes_sent"

    def __init__(self, root, d, certs):
        self.root = Path(root)
        self.d = Path(d)
        self.certs = certs
        self.proc = None
        self.http_port = self.https_port = None

    def _config(self):
        d = self.d
        user = "user root;\n" if os.geteuid() == 0 else ""
        temps = "".join(f"    {k}_temp_path {d / k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {d / 'nginx.pid'};
error_log {d / 'error.log'} info;
events {{ worker_connections 256; }}
http {{
    log_format stfs '{self.LOG_FORMAT}';
    access_log {d / 'access.log'} stfs;
{temps}    types {{ application/json json; }}
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{self.http_port};
        listen 127.0.0.1:{self.https_port} ssl;
        server_name localhost;
        ssl_certificate {self.certs.cert};
        ssl_certificate_key {self.certs.key};
        root {self.root};
        etag on;
    }}
}}
"""

    def start(self):
        if not os.path.exists(NGINX):
            skip_or_fail(f"nginx is not installed ({NGINX}; Debian's nginx-light)")
        self.d.mkdir(parents=True, exist_ok=True)
        last = ""
        for _ in range(5):  # a port taken between free_port() and nginx's bind: try others
            self.http_port, self.https_port = free_port(), free_port()
            conf = self.d / "nginx.conf"
            conf.write_text(self._config())
            with open(self.d / "stderr", "wb") as err:
                self.proc = subprocess.Popen([NGINX, "-p", str(self.d), "-e", str(self.d / "error.log"),
                                              "-c", str(conf)], stdin=subprocess.DEVNULL,
                                             stdout=err, stderr=err)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                if all(_connects(p) for p in (self.http_port, self.https_port)):
                    return self
                time.sleep(0.02)
            last = self.log("error.log") + self.log("stderr")
            self.stop()
            if "Address already in use" not in last:
                break
        raise RuntimeError(f"nginx did not start:\n{last}")

    def log(self, name):
        try:
            return (self.d / name).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def url(self, path, tls=False):
        path = path.lstrip("/")
        return f"https://127.0.0.1:{self.https_port}/{path}" if tls else f"http://127.0.0.1:{self.http_port}/{path}"

    def access(self):
        """The access log as (method, uri, status, range, if_match, bytes) tuples."""
        out = []
        for line in self.log("access.log").splitlines():
            head, rest = line.split(" [", 1)
            method, uri, status = head.split(" ")
            rng, rest = rest.split("] [", 1)
            im, sent = rest.rsplit("] ", 1)
            out.append((method, uri, int(status), rng, im, int(sent)))
        return out

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _connects(port):
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


# ---------------------------------------------------------- the fault-injecting server

FAULTS = ("stall", "trickle", "drop", "status", "ignore_range", "wrong_length", "wrong_range")


@dataclass
class Fault:
    kind: str               # one of FAULTS
    times: object = None    # how many requests it still applies to; None: every one
    after: int = 0          # body bytes sent before a stall or a drop
    status: int = 500       # for "status"
    headers: dict = field(default_factory=dict)  # more response headers (Retry-After)
    delta: int = 0          # for wrong_length: Content-Length off by this; wrong_range: start shifted
    every: float = 1.0      # for trickle: seconds between bytes


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict           # lower-cased names
    t: float                # time.monotonic() when it came
    status: int = 0
    sent: int = 0           # body bytes written to the socket
    fault: str = ""

    @property
    def range(self):
        return self.headers.get("range")


class FaultServer:
    """Serves the files below `root` over HTTP/1.1 with keep-alive (HTTPS with tls=Certs),
    with Range (one range), strong content ETags (etags=False: Last-Modified alone;
    etags="weak": W/ ones; last_modified=False: no Last-Modified),
    If-Match, If-Unmodified-Since (honour_conditions=False: ignored) and faults per path:

        stall(path, after=N)           N body bytes, then nothing, the connection kept open
        trickle(path, after=N, every=S) N body bytes, then one byte every S seconds
        drop(path, after=N)            N body bytes, then the connection closed
        fail(path, status=500)         that status (429 with Retry-After: fail(path, 429, retry_after=1))
        deny(path, status=404)         401/403/404 for the path
        ignore_range(path)             200 and the whole body, stopping when the client hangs up
        wrong_length(path, delta)      Content-Length off by delta (body as long as it says),
                                       Content-Range as asked
        wrong_range(path, delta)       Content-Range and body for a range shifted by delta
        replace(path, data)            new bytes, hence a new ETag (same_length or not)

    Each fault takes times=K (the next K matching requests, then normal) or applies to every
    request; path "*" matches all.  requests(path), bytes_sent(path) and log() say what came.
    """

    def __init__(self, root, tls=None, etags=True, honour_conditions=True, auth=None, last_modified=True):
        self.root = Path(root)
        self.tls = tls
        self.etags = etags
        self.last_modified = last_modified
        self.honour_conditions = honour_conditions
        self.auth = auth  # (user, password): 401 without that Basic Authorization
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends every stall (set at stop)
        self._faults = {}
        self._log = []
        self._cache = {}
        self.handshakes = 0
        self.httpd = None
        self.thread = None

    # -------------------------------------------------------------- life
    def start(self):
        server = self

        class Handler(_Handler):
            fs = server

        class Httpd(http.server.ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            allow_reuse_address = True

            def finish_request(self, request, client_address):
                if server.tls is not None:
                    with server.lock:
                        server.handshakes += 1
                    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    ctx.load_cert_chain(str(server.tls.cert), str(server.tls.key))
                    try:
                        request.settimeout(30)
                        request = ctx.wrap_socket(request, server_side=True)
                        request.settimeout(None)
                    except (ssl.SSLError, OSError):
                        return  # a client that refused our certificate: what the TLS tests want
                super().finish_request(request, client_address)

            def handle_error(self, request, client_address):
                pass  # clients hanging up mid-body are the point of most faults

        self.httpd = Httpd(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.release.set()
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def url(self, path, query=""):
        scheme = "https" if self.tls else "http"
        host = "localhost" if self.tls and "IP:127.0.0.1" not in self.tls.names else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}/{path.lstrip('/')}" + (f"?{query}" if query else "")

    # ------------------------------------------------------------ faults
    def add_fault(self, path, kind, times=None, **kw):
        assert kind in FAULTS, kind
        with self.lock:
            self._faults["/" + path.lstrip("/") if path != "*" else "*"] = Fault(kind, times, **kw)

    def stall(self, path, after=0, times=None):
        self.add_fault(path, "stall", times, after=after)

    def trickle(self, path, after=0, every=1.0, times=None):
        return self.add_fault(path, "trickle", times, after=after, every=every)

    def drop(self, path, after=0, times=None):
        self.add_fault(path, "drop", times, after=after)

    def fail(self, path, status=500, times=None, retry_after=None):
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self.add_fault(path, "status", times, status=status, headers=headers)

    def deny(self, path, status=404, times=None):
        self.fail(path, status, times)

    def ignore_range(self, path, times=None):
        self.add_fault(path, "ignore_range", times)

    def wrong_length(self, path, delta, times=None):
        self.add_fault(path, "wrong_length", times, delta=delta)

    def wrong_range(self, path, delta, times=None):
        self.add_fault(path, "wrong_range", times, delta=delta)

    def clear_faults(self):
        with self.lock:
            self._faults.clear()

    def replace(self, path, data, mtime=None):
        """Puts new bytes at path (a new file: a new ETag); mtime (seconds) if given."""
        p = self.root / path.lstrip("/")
        tmp = p.with_name(p.name + ".new")
        tmp.write_bytes(data)
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        os.replace(tmp, p)

    def _take_fault(self, path):
        with self.lock:
            for key in (path, "*"):
                f = self._faults.get(key)
                if f is None:
                    continue
                if f.times is not None:
                    if f.times <= 0:
                        continue
                    f.times -= 1
                return f
        return None

    # --------------------------------------------------------------- log
    def log(self, path=None):
        with self.lock:
            return [r for r in self._log if path is None or r.path == "/" + path.lstrip("/")]

    def requests(self, path=None):
        return len(self.log(path))

    def bytes_sent(self, path=None):
        return sum(r.sent for r in self.log(path))

    def reset_counts(self):
        with self.lock:
            self._log.clear()

    def _record(self, r):
        with self.lock:
            self._log.append(r)

    # ----------------------------------------------------------- objects
    def object(self, path):
        """(bytes, etag, mtime seconds) of the file at path, or None."""
        p = (self.root / path.lstrip("/")).resolve()
        if self.root.resolve() not in p.parents or not p.is_file():
            return None
        st = p.stat()
        key = (str(p), st.st_ino, st.st_size, st.st_mtime_ns)
        with self.lock:
            hit = self._cache.get(key)
        if hit is None:
            data = p.read_bytes()
            hit = (data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"', int(st.st_mtime))
            with self.lock:
                self._cache[key] = hit
        return hit


def _parse_range(value, size):
    """(start, end inclusive) of a one-range 'bytes=' header; None when unsatisfiable;
    'bad' when it is no range we serve."""
    if not value.startswith("bytes=") or "," in value:
        return "bad"
    a, _, b = value[6:].strip().partition("-")
    try:
        if a == "":
            n = int(b)
            return (max(0, size - n), size - 1) if n > 0 and size > 0 else None
        start = int(a)
        end = int(b) if b else size - 1
    except ValueError:
        return "bad"
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fs = None  # the FaultServer, set by the subclass
    timeout = 120  # a keep-alive connection idle this long is closed

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head):
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        req = Request(self.command, path, url.query, {k.lower(): v for k, v in self.headers.items()},
                      time.monotonic())
        self.fs._record(req)  # logged as it comes: a stalled request counts at once
        try:
            self._answer(req, head)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True

    def _send_head(self, req, status, headers, length):
        req.status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _simple(self, req, status, headers=None, body=b""):
        body = body or f"{status}\n".encode()
        self._send_head(req, status, {"Content-Type": "text/plain", **(headers or {})}, len(body))
        if req.method != "HEAD":
            self._write(req, body)

    def _write(self, req, data, limit=None):
        """Writes data in pieces, counting what went out; stops after `limit` bytes."""
        view = memoryview(data)[: len(data) if limit is None else min(limit, len(data))]
        for i in range(0, len(view), 65536):
            piece = view[i:i + 65536]
            with self.fs.lock:  # counted before it goes: a client never sees bytes not yet counted
                req.sent += len(piece)
            self.wfile.write(piece)
        self.wfile.flush()

    def _answer(self, req, head):
        fs = self.fs
        if fs.auth is not None:
            import base64
            want = "Basic " + base64.b64encode(f"{fs.auth[0]}:{fs.auth[1]}".encode()).decode()
            if req.headers.get("authorization") != want:
                return self._simple(req, 401, {"WWW-Authenticate": 'Basic realm="stfs"'})
        fault = fs._take_fault(req.path)
        if fault:
            req.fault = fault.kind
        if fault and fault.kind == "status":
            return self._simple(req, fault.status, fault.headers)
        obj = fs.object(req.path)
        if obj is None:
            return self._simple(req, 404)
        data, etag, mtime = obj
        size = len(data)
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if fs.last_modified:
            headers["Last-Modified"] = email.utils.formatdate(mtime, usegmt=True)
        if fs.etags:
            headers["ETag"] = "W/" + etag if fs.etags == "weak" else etag
        if fs.honour_conditions:
            im = req.headers.get("if-match")
            if im is not None and im.strip() != "*" and \
                    (not fs.etags or etag not in [t.strip() for t in im.split(",")]):
                return self._simple(req, 412)
            ius = req.headers.get("if-unmodified-since")
            if ius is not None:
                try:
                    limit = email.utils.parsedate_to_datetime(ius).timestamp()
                except (TypeError, ValueError):
                    limit = None
                if limit is not None and mtime > limit:
                    return self._simple(req, 412)
        rng = req.headers.get("range")
        if fault and fault.kind == "ignore_range":
            rng = None
        if rng is None:
            start, end, status = 0, size - 1, 200
        else:
            r = _parse_range(rng, size)
            if r == "bad":
                return self._simple(req, 400)
            if r is None:
                return self._simple(req, 416, {"Content-Range": f"bytes */{size}"})
            start, end = r
            status = 206
        body_start = start
        if fault and fault.kind == "wrong_range" and status == 206:
            start = max(0, min(size - 1, start + fault.delta))
            end = max(start, min(size - 1, end + fault.delta))
            body_start = start
        body = data[body_start:end + 1]
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = len(body)
        if fault and fault.kind == "wrong_length":
            length = max(0, length + fault.delta)
            body = (body + b"\0" * max(0, fault.delta))[:length]  # framed as it says
        self._send_head(req, status, headers, length)
        if head:
            return
        if fault and fault.kind == "stall":
            self._write(req, body, fault.after)
            fs.release.wait(120)  # keeps the connection open, sends nothing
            self.close_connection = True
            return
        if fault and fault.kind == "trickle":
            self._write(req, body, fault.after)
            for i in range(fault.after, len(body)):
                if fs.release.wait(fault.every):
                    break
                try:
                    self._write(req, body[i:i + 1])
                except OSError:
                    break
            self.close_connection = True
            return
        if fault and fault.kind == "drop":
            self._write(req, body, fault.after)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._write(req, body)


# ----------------------------------------------------------------- mounting a URL

class RemoteMount(util.Mount):
    """util.Mount for a URL (util.Mount takes SOURCE as a Path, which folds '//').
    stderr_ok: lines on stderr are allowed (faults may be reported) but none may hold one
    of `secrets` or a sanitizer report."""

    def __init__(self, url, mnt, opts=(), logdir=None, stderr_ok=False, secrets=()):
        super().__init__("/", mnt, opts, logdir)
        self.source = url
        self.stderr_ok = stderr_ok
        self.secrets = tuple(secrets)

    def check_output(self, expected=()):
        text = self.stderr()
        leaked = [s for s in self.secrets if s in text]
        if leaked:
            raise util.DaemonError(f"daemon for a URL wrote secrets {leaked} to stderr:\n{text}")
        if self.stderr_ok:
            if any(m in text for m in util.SANITIZER_MARKERS):
                raise util.DaemonError(f"sanitizer report:\n{text}")
            if self.stdout():
                raise util.DaemonError(f"daemon wrote to stdout:\n{self.stdout()}")
            self.checked = len(text)
            return
        super().check_output(expected)


@contextlib.contextmanager
def remote_mounts(tmp_path, prefix="rmnt"):
    """For a fixture: start(url, *opts, stderr_ok=False, secrets=()) -> a started RemoteMount,
    each unmounted at the end; fails if a daemon would not stop cleanly, wrote anything
    (unless stderr_ok) or wrote a secret."""
    mounts = []

    def start(url, *opts, stderr_ok=False, secrets=()):
        m = RemoteMount(url, Path(tmp_path) / f"{prefix}{len(mounts)}", opts, logdir=tmp_path,
                        stderr_ok=stderr_ok, secrets=secrets)
        mounts.append(m)
        return m.start()

    yield start
    problems = []
    for m in reversed(mounts):
        try:
            m.stop()
        except util.DaemonError as e:
            problems.append(str(e))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)

"""A small Hugging Face Hub for tests: the endpoints safetensorsfs (fs/hub.c) and huggingface_hub
(hf_hub_download, HfApi.list_repo_tree / model_info / get_paths_info, HfFileSystem) use, answered
as the Hub answers them, on loopback ports of its own; tests/test_hubserver.py checks it against
huggingface_hub itself.

  GET  /api/{type}s/{repo}/tree/{rev}[/{path}]?recursive=&expand=&cursor=   pages, Link rel="next"
  GET  /api/{type}s/{repo}[/revision/{rev}]                                 model_info
  POST /api/{type}s/{repo}/paths-info/{rev}                                 get_paths_info
  HEAD/GET /[{type}s/]{repo}/resolve/{rev}/{path}   LFS files: 302 to the CDN with X-Linked-Etag,
                                                    X-Linked-Size; others: the bytes (Range too)
  HEAD/GET CDN /blobs/{sha256}?X-Amz-Signature=...  bytes with Range, ETag, If-Match (412)

Refusals carry the X-Error-Code / X-Error-Message headers huggingface_hub maps to its errors:
RepoNotFound (401 anonymous, 404 with a token: a private repository looks missing),
GatedRepo (401 anonymous, 403 with a token of an account not let in), RevisionNotFound,
EntryNotFound, and 401 "Invalid credentials in Authorization header" for an unknown token.
Every request is counted (method, path without query) and kept in `requests`.
"""
import base64
import collections
import email.utils
import hashlib
import http.server
import json
import threading
import urllib.parse

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n"
DATE = "2024-05-01T12:00:00.000Z"
LAST_MODIFIED = email.utils.formatdate(1714564800, usegmt=True)
TYPES = ("models", "datasets", "spaces")


def git_oid(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Blob:
    def __init__(self, data, lfs):
        self.data = data
        self.lfs = lfs
        self.sha256 = hashlib.sha256(data).hexdigest()
        pointer = LFS_POINTER.format(sha=self.sha256, size=len(data)).encode()
        self.pointer_size = len(pointer)
        # The git blob is the pointer for an LFS file, the bytes themselves otherwise.
        self.oid = git_oid(pointer if lfs else data)


class Repo:
    def __init__(self, repo_id, repo_type, private, gated, readers):
        self.id = repo_id
        self.type = repo_type
        self.private = private
        self.gated = gated
        self.readers = set(readers)
        self.revisions = {}  # name -> commit sha
        self.commits = {}  # commit sha -> {path: Blob}

    def commit(self, files, lfs, revision="main"):
        """Makes FILES (path -> bytes) the tree of REVISION (a branch, tag or refs/pr/N)."""
        tree = {p: Blob(d, lfs(p)) for p, d in files.items()}
        sha = hashlib.sha1(repr((self.id, revision, len(self.commits), sorted(files))).encode()).hexdigest()
        self.commits[sha] = tree
        self.revisions[revision] = sha
        return sha

    def resolve(self, rev):
        if rev in self.revisions:
            return self.revisions[rev]
        return rev if rev in self.commits else None


class Refusal(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class HubServer:
    """The Hub at `endpoint` and its CDN at `cdn`; `with HubServer() as hub:` starts and stops both."""

    def __init__(self, page_size=1000, tokens=None):
        self.page_size = page_size
        self.tokens = dict(tokens or {"hf_alice": "alice"})  # token -> user
        self.repos = {}
        self.blobs = {}  # sha256 -> Blob, the CDN's store
        self.counts = collections.Counter()
        self.requests = []
        self.faults = []  # [path prefix, status, times left]
        self.lock = threading.Lock()
        self.servers = []

    # --- content ---------------------------------------------------------------------------
    def add_repo(self, repo_id, files, *, repo_type="models", private=False, gated=False, readers=(),
                 revision="main", lfs=None):
        """A repository with FILES at REVISION; returns the commit sha.  LFS files (by default the
        binary ones: not .json/.md/.txt) are redirected to the CDN, as the Hub does."""
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            repo = self.repos[(repo_type, repo_id)] = Repo(repo_id, repo_type, private, gated, readers)
        lfs = lfs or (lambda p: not p.endswith((".json", ".md", ".txt", ".gitattributes")))
        sha = repo.commit(files, lfs, revision)
        for blob in repo.commits[sha].values():
            self.blobs[blob.sha256] = blob
        return sha

    def fail(self, path_prefix, status, times=1):
        """The next TIMES requests whose path starts with PATH_PREFIX are answered STATUS."""
        with self.lock:
            self.faults.append([path_prefix, status, times])

    def count(self, path, method=None):
        with self.lock:
            return sum(n for (m, p), n in self.counts.items() if p == path and method in (None, m))

    # --- serving ---------------------------------------------------------------------------
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self):
        for handler in (HubHandler, CdnHandler):
            srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            srv.daemon_threads = True
            srv.hub = self
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            self.servers.append(srv)
        self.endpoint = "http://127.0.0.1:%d" % self.servers[0].server_port
        self.cdn = "http://127.0.0.1:%d" % self.servers[1].server_port
        return self

    def close(self):
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()
        self.servers = []

    # --- the Hub's rules -------------------------------------------------------------------
    def user(self, headers):
        auth = headers.get("Authorization")
        if auth is None:
            return None
        token = auth[7:] if auth.startswith("Bearer ") else None
        if token not in self.tokens:
            raise Refusal(401, None, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def repo(self, repo_type, repo_id, headers, files):
        """The repository, if USER may see it (and, for FILES, read its files)."""
        user = self.user(headers)
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user not in repo.readers):
            if user is None:
                raise Refusal(401, "RepoNotFound", "Invalid username or password.")
            raise Refusal(404, "RepoNotFound", "Repository not found")
        if files and repo.gated and user not in repo.readers:
            kind = repo_type[:-1]
            if user is None:
                raise Refusal(401, "GatedRepo", f"Access to {kind} {repo_id} is restricted. You must have "
                              "access to it and be authenticated to access it. Please log in.")
            raise Refusal(403, "GatedRepo", f"Access to {kind} {repo_id} is restricted and you are not in the "
                          f"authorized list. Visit {self.endpoint}/{repo_id} to ask for access.")
        return repo

    def commit(self, repo, rev):
        sha = repo.resolve(rev)
        if sha is None:
            raise Refusal(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return sha

    def entries(self, repo, sha, path, recursive, expand):
        tree = repo.commits[sha]
        prefix = path + "/" if path else ""
        dirs, files = set(), []
        for p in tree:
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix):].split("/")
            for i in range(1, len(parts)):
                dirs.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                files.append(p)
        if not recursive:
            dirs = {d for d in dirs if "/" not in d[len(prefix):]}
        if path and not files and not dirs:
            raise Refusal(404, "EntryNotFound", f"{path} does not exist on \"{sha}\"")
        out = [self.entry(repo, sha, p, expand) for p in sorted(dirs | set(files))]
        return sorted(out, key=lambda e: (e["type"] != "directory", e["path"]))

    def entry(self, repo, sha, path, expand):
        blob = repo.commits[sha].get(path)
        if blob is None:
            e = {"type": "directory", "oid": hashlib.sha1(f"{sha}:{path}".encode()).hexdigest(), "size": 0,
                 "path": path}
        else:
            e = {"type": "file", "oid": blob.oid, "size": len(blob.data), "path": path}
            if blob.lfs:
                e["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": blob.pointer_size}
        if expand:
            e["lastCommit"] = {"id": sha, "title": "Upload", "date": DATE}
        return e

    def info(self, repo, sha):
        tree = repo.commits[sha]
        org = repo.id.split("/")[0]
        return {"_id": hashlib.md5(repo.id.encode()).hexdigest()[:24], "id": repo.id, "modelId": repo.id,
                "author": org, "sha": sha, "lastModified": DATE, "createdAt": DATE, "private": repo.private,
                "gated": "manual" if repo.gated else False, "disabled": False, "downloads": 0, "likes": 0,
                "tags": [], "siblings": [{"rfilename": p} for p in sorted(tree)]}

    def cdn_url(self, blob):
        return f"{self.cdn}/blobs/{blob.sha256}?X-Amz-Expires=3600&X-Amz-Signature=" + blob.sha256[:16]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self):
        hub = self.server.hub
        url = urllib.parse.urlsplit(self.path)
        with hub.lock:
            hub.counts[(self.command, urllib.parse.unquote(url.path))] += 1
            hub.requests.append({"server": type(self).__name__, "method": self.command, "path": self.path,
                                 "headers": {k.title(): v for k, v in self.headers.items()}})
            for f in hub.faults:
                if f[2] > 0 and url.path.startswith(f[0]):
                    f[2] -= 1
                    return f[1]
        return None

    def answer(self, status, body=b"", headers=(), content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def refuse(self, r):
        headers = [("X-Error-Message", r.message)]
        if r.code:
            headers.append(("X-Error-Code", r.code))
        self.answer(r.status, json.dumps({"error": r.message}).encode(), headers)

    def send_bytes(self, data, etag, extra=()):
        """DATA with Range (one range) and If-Match, as S3 and CloudFront answer."""
        headers = [("ETag", etag), ("Accept-Ranges", "bytes"), ("Last-Modified", LAST_MODIFIED), *extra]
        if_match = self.headers.get("If-Match")
        if if_match and if_match.strip() != "*" and etag not in [t.strip() for t in if_match.split(",")]:
            return self.answer(412, b"<Error><Code>PreconditionFailed</Code></Error>", headers, "application/xml")
        start, end, rng = 0, len(data), self.headers.get("Range")
        if rng and rng.startswith("bytes=") and "," not in rng:
            first, _, last = rng[6:].strip().partition("-")
            try:
                if first:
                    start, end = int(first), min(int(last) + 1 if last else len(data), len(data))
                else:
                    start, end = max(len(data) - int(last), 0), len(data)
            except ValueError:
                start, end, rng = 0, len(data), None
            else:
                if start >= len(data) or start >= end:
                    return self.answer(416, b"", headers + [("Content-Range", f"bytes */{len(data)}")],
                                       "application/xml")
                headers.append(("Content-Range", f"bytes {start}-{end - 1}/{len(data)}"))
        else:
            rng = None
        self.answer(206 if rng else 200, data[start:end], headers, "application/octet-stream")

    def do_HEAD(self):
        self.dispatch()

    def do_GET(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def dispatch(self):
        fault = self.record()
        if fault:
            return self.answer(fault, json.dumps({"error": "injected"}).encode())
        try:
            self.route(urllib.parse.urlsplit(self.path))
        except Refusal as r:
            self.refuse(r)
        except (BrokenPipeError, ConnectionResetError):
            pass


class HubHandler(Handler):
    def route(self, url):
        # Each segment decoded alone: "refs%2Fpr%2F1" stays one segment, as on the Hub.
        seg = [urllib.parse.unquote(s) for s in url.path.split("/")[1:]]
        query = urllib.parse.parse_qs(url.query)
        if seg[:1] == ["api"] and len(seg) >= 4 and seg[1] in TYPES:
            return self.api(seg[1], "/".join(seg[2:4]), seg[4:], query)
        repo_type = seg[0] if seg and seg[0] in TYPES else "models"
        seg = seg[1:] if seg and seg[0] in TYPES else seg
        if len(seg) >= 5 and seg[2] == "resolve" and self.command in ("GET", "HEAD"):
            return self.resolve(repo_type, "/".join(seg[:2]), seg[3], "/".join(seg[4:]))
        raise Refusal(404, None, "Sorry, we can't find the page you are looking for.")

    def api(self, repo_type, repo_id, rest, query):
        hub = self.server.hub
        if not rest or rest[0] == "revision":
            repo = hub.repo(repo_type, repo_id, self.headers, files=False)
            sha = hub.commit(repo, rest[1] if len(rest) > 1 else "main")
            return self.answer(200, json.dumps(hub.info(repo, sha)).encode())
        if rest[0] == "tree" and len(rest) >= 2 and self.command == "GET":
            repo = hub.repo(repo_type, repo_id, self.headers, files=True)
            return self.tree(repo, hub.commit(repo, rest[1]), "/".join(rest[2:]).strip("/"), query)
        if rest[0] == "paths-info" and len(rest) == 2 and self.command == "POST":
            repo = hub.repo(repo_type, repo_id, self.headers, files=True)
            sha = hub.commit(repo, rest[1])
            length = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            expand = form.get("expand", ["false"])[0].lower() == "true"
            tree = repo.commits[sha]
            out = [hub.entry(repo, sha, p.strip("/"), expand) for p in form.get("paths", [])
                   if p.strip("/") in tree or any(f.startswith(p.strip("/") + "/") for f in tree)]
            return self.answer(200, json.dumps(out).encode())
        raise Refusal(404, None, "Sorry, we can't find the page you are looking for.")

    def tree(self, repo, sha, path, query):
        hub = self.server.hub
        flag = lambda name: query.get(name, ["false"])[0].lower() == "true"  # noqa: E731
        entries = hub.entries(repo, sha, path, flag("recursive"), flag("expand"))
        cursor = query.get("cursor", [None])[0]
        start = int(base64.urlsafe_b64decode(cursor).decode()) if cursor else 0
        page, headers = entries[start:start + hub.page_size], []
        if start + hub.page_size < len(entries):
            q = {k: v[0] for k, v in query.items() if k != "cursor"}
            q["cursor"] = base64.urlsafe_b64encode(str(start + hub.page_size).encode()).decode()
            base = urllib.parse.urlsplit(self.path).path
            headers.append(("Link", f'<{hub.endpoint}{base}?{urllib.parse.urlencode(q)}>; rel="next"'))
        self.answer(200, json.dumps(page).encode(), headers)

    def resolve(self, repo_type, repo_id, rev, path):
        hub = self.server.hub
        repo = hub.repo(repo_type, repo_id, self.headers, files=True)
        sha = hub.commit(repo, rev)
        blob = repo.commits[sha].get(path)
        if blob is None:
            raise Refusal(404, "EntryNotFound", "Entry not found")
        common = [("X-Repo-Commit", sha), ("ETag", f'"{blob.oid}"')]
        if not blob.lfs:
            return self.send_bytes(blob.data, f'"{blob.oid}"', [("X-Repo-Commit", sha)])
        location = hub.cdn_url(blob)
        body = f"Found. Redirecting to {location}".encode()
        self.answer(302, body, common + [("Location", location), ("X-Linked-Etag", f'"{blob.sha256}"'),
                                         ("X-Linked-Size", str(len(blob.data)))], "text/plain; charset=utf-8")


class CdnHandler(Handler):
    def route(self, url):
        hub = self.server.hub
        seg = url.path.split("/")[1:]
        blob = hub.blobs.get(seg[1]) if len(seg) == 2 and seg[0] == "blobs" else None
        if "X-Amz-Signature" not in urllib.parse.parse_qs(url.query) or blob is None:
            return self.answer(403, b"<Error><Code>AccessDenied</Code></Error>", (), "application/xml")
        self.send_bytes(blob.data, f'"{blob.sha256}"')

    def refuse(self, r):
        self.answer(r.status, r.message.encode(), (), "application/xml")

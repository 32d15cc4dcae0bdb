"""tests/hubserver.py against huggingface_hub itself: what the official client reads from the
fake Hub (listings, downloads, byte ranges, errors) is what it reads from the real one, so that
the daemon's hf:// tests run against a Hub that behaves like huggingface.co."""
import os
import tempfile
import urllib.error
import urllib.request

import pytest

# huggingface_hub reads its settings once, at import: a Hub home of the tests' own, no token
# of the developer's, no telemetry.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hubserver-home-")
os.environ["HF_HUB_OFFLINE"] = "0"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_ENDPOINT"):
    os.environ.pop(name, None)

hf = pytest.importorskip("huggingface_hub")
errors = pytest.importorskip("huggingface_hub.errors")

from hubserver import HubServer  # noqa: E402

WEIGHTS = bytes(range(256)) * 40 + b"tail"
SHARD = b"\x01\x02" * 3000
FILES = {
    "config.json": b'{"model_type": "test"}',
    "model.safetensors": WEIGHTS,
    "unet/diffusion_pytorch_model.safetensors": SHARD,
    "unet/config.json": b"{}",
    "vae/sub/deep.safetensors": b"x" * 100,
}


@pytest.fixture(scope="module")
def hub():
    with HubServer(page_size=2) as h:
        h.add_repo("org/public", FILES)
        h.add_repo("org/public", {"model.safetensors": b"pr bytes", "a.json": b"{}"}, revision="refs/pr/1")
        h.add_repo("org/private", {"model.safetensors": WEIGHTS}, private=True, readers={"alice"})
        h.add_repo("org/gated", {"model.safetensors": WEIGHTS}, gated=True)
        yield h


def api(hub):
    return hf.HfApi(endpoint=hub.endpoint, token=False)


def test_tree_pages_follow_link(hub):
    before = hub.count("/api/models/org/public/tree/main", "GET")
    got = list(api(hub).list_repo_tree("org/public", recursive=True))
    files = {e.path: e for e in got if isinstance(e, hf.hf_api.RepoFile)}
    folders = {e.path for e in got if isinstance(e, hf.hf_api.RepoFolder)}
    assert set(files) == set(FILES)
    assert folders == {"unet", "vae", "vae/sub"}
    # 8 entries at 2 a page: 4 requests, each after the first from the Link header.
    assert hub.count("/api/models/org/public/tree/main", "GET") - before == 4
    lfs = files["model.safetensors"].lfs
    assert lfs.size == len(WEIGHTS) and lfs.sha256 == __import__("hashlib").sha256(WEIGHTS).hexdigest()
    assert files["config.json"].lfs is None and files["config.json"].size == len(FILES["config.json"])
    first = next(r for r in hub.requests if r["path"].startswith("/api/models/org/public/tree/main?"))
    assert first["path"] == "/api/models/org/public/tree/main?recursive=true&expand=false"


def test_tree_of_a_folder_and_not_recursive(hub):
    got = [e.path for e in api(hub).list_repo_tree("org/public", path_in_repo="unet", recursive=True)]
    assert sorted(got) == ["unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    top = {e.path for e in api(hub).list_repo_tree("org/public")}
    assert top == {"config.json", "model.safetensors", "unet", "vae"}
    assert any(r["path"].startswith("/api/models/org/public/tree/main/unet?") for r in hub.requests)
    assert sorted(api(hub).list_repo_files("org/public")) == sorted(FILES)


def test_model_info_and_revision(hub):
    info = api(hub).model_info("org/public")
    pr = api(hub).model_info("org/public", revision="refs/pr/1")
    assert info.sha == hub.repos[("models", "org/public")].revisions["main"]
    assert pr.sha != info.sha and {s.rfilename for s in pr.siblings} == {"model.safetensors", "a.json"}
    assert hub.count("/api/models/org/public/revision/refs/pr/1") == 1  # sent as refs%2Fpr%2F1


def test_download_byte_equal_and_token_stays_on_the_hub(hub, tmp_path):
    for name, data in FILES.items():
        path = hf.hf_hub_download("org/public", name, endpoint=hub.endpoint, cache_dir=tmp_path, token=False)
        assert open(path, "rb").read() == data
    path = hf.hf_hub_download("org/private", "model.safetensors", endpoint=hub.endpoint, cache_dir=tmp_path,
                              token="hf_alice")
    assert open(path, "rb").read() == WEIGHTS
    pr = hf.hf_hub_download("org/public", "model.safetensors", revision="refs/pr/1", endpoint=hub.endpoint,
                            cache_dir=tmp_path, token=False)
    assert open(pr, "rb").read() == b"pr bytes"
    cdn = [r for r in hub.requests if r["server"] == "CdnHandler"]
    assert cdn and not any("Authorization" in r["headers"] for r in cdn)
    assert hub.count("/org/private/resolve/main/model.safetensors", "HEAD") >= 1


def test_filesystem_reads_a_range(hub):
    fs = hf.HfFileSystem(endpoint=hub.endpoint, token="hf_alice", skip_instance_cache=True)
    with fs.open("org/public/model.safetensors", "rb", block_size=512) as f:
        f.seek(1000)
        assert f.read(300) == WEIGHTS[1000:1300]
    assert fs.cat_file("org/private/model.safetensors", start=5, end=25) == WEIGHTS[5:25]
    assert fs.cat_file("hf://org/public@refs/pr/1/model.safetensors") == b"pr bytes"
    assert fs.info("org/public/unet/diffusion_pytorch_model.safetensors")["size"] == len(SHARD)
    assert sorted(fs.ls("org/public/vae", detail=False)) == ["org/public/vae/sub"]
    ranged = [r for r in hub.requests if r["server"] == "CdnHandler" and "Range" in r["headers"]]
    assert ranged and all(r["headers"]["Range"].startswith("bytes=") for r in ranged)


@pytest.mark.parametrize("call, error", [
    (lambda a: a.model_info("org/missing"), errors.RepositoryNotFoundError),
    (lambda a: list(a.list_repo_tree("org/missing")), errors.RepositoryNotFoundError),
    (lambda a: list(a.list_repo_tree("org/private")), errors.RepositoryNotFoundError),
    (lambda a: list(a.list_repo_tree("org/public", revision="nope")), errors.RevisionNotFoundError),
    (lambda a: list(a.list_repo_tree("org/public", path_in_repo="nope")), errors.RemoteEntryNotFoundError),
    (lambda a: list(a.list_repo_tree("org/gated")), errors.GatedRepoError),
    (lambda a: list(a.list_repo_tree("org/gated", token="hf_alice")), errors.GatedRepoError),
    (lambda a: list(a.list_repo_tree("org/private", token="hf_alice")), None),
    (lambda a: list(a.list_repo_tree("org/missing", token="hf_alice")), errors.RepositoryNotFoundError),
])
def test_api_errors_as_the_client_raises_them(hub, call, error):
    if error is None:
        assert call(api(hub))
        return
    with pytest.raises(error):
        call(api(hub))


def test_gated_metadata_is_public(hub):
    assert api(hub).model_info("org/gated").gated == "manual"


def test_invalid_token_is_a_plain_401(hub):
    with pytest.raises(errors.HfHubHTTPError) as e:
        list(api(hub).list_repo_tree("org/public", token="hf_wrong"))
    assert not isinstance(e.value, errors.RepositoryNotFoundError)
    assert e.value.response.status_code == 401


@pytest.mark.parametrize("repo, name, kw, error", [
    ("org/missing", "model.safetensors", {}, errors.RepositoryNotFoundError),
    ("org/private", "model.safetensors", {}, errors.RepositoryNotFoundError),
    ("org/gated", "model.safetensors", {}, errors.GatedRepoError),
    ("org/public", "model.safetensors", {"revision": "v9"}, errors.RevisionNotFoundError),
    ("org/public", "nope.safetensors", {}, errors.RemoteEntryNotFoundError),
])
def test_download_errors(hub, tmp_path, repo, name, kw, error):
    with pytest.raises(error):
        hf.hf_hub_download(repo, name, endpoint=hub.endpoint, cache_dir=tmp_path, token=False, **kw)


def cdn_get(url, headers):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_resolve_redirect_and_cdn_conditions(hub):
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(hub.endpoint + "/org/public/resolve/main/model.safetensors", method="HEAD")
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(req)
    h = e.value.headers
    assert e.value.code == 302 and h["Location"].startswith(hub.cdn + "/blobs/")
    assert h["X-Linked-Size"] == str(len(WEIGHTS)) and h["X-Linked-Etag"].startswith('"')
    assert h["X-Repo-Commit"] == hub.repos[("models", "org/public")].revisions["main"]
    etag = h["X-Linked-Etag"]
    status, hdr, body = cdn_get(h["Location"], {"Range": "bytes=10-19", "If-Match": etag})
    assert (status, body, hdr["Content-Range"], hdr["ETag"]) == (206, WEIGHTS[10:20], f"bytes 10-19/{len(WEIGHTS)}",
                                                                 etag)
    assert cdn_get(h["Location"], {"Range": "bytes=0-0", "If-Match": '"other"'})[0] == 412
    assert cdn_get(h["Location"], {"Range": f"bytes={len(WEIGHTS)}-"})[0] == 416
    assert cdn_get(h["Location"].split("?")[0], {})[0] == 403  # unsigned

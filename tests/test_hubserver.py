"""Tests of the offline Hub / static-file test infrastructure (tests/hubserver.py).

They drive the REAL client libraries (huggingface_hub on httpx2, torch.hub on urllib) against the
local servers, using a tiny model defined here (not the hiera package).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.error import HTTPError

import huggingface_hub
import pytest
import torch
import torch.nn as nn
from hubserver import file_server  # noqa: F401 - fixtures
from hubserver import hf_offline  # noqa: F401
from hubserver import hub_server  # noqa: F401
from hubserver import torch_home  # noqa: F401
from hubserver import (
    FAKE_TOKEN,
    HubServer,
    git_blob_sha1,
    prefill_hf_cache,
    prefill_torch_hub_cache,
    set_hf_offline,
    unused_local_url,
)
from huggingface_hub import HfApi, PyTorchModelHubMixin, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save


class Tiny(nn.Module, PyTorchModelHubMixin):
    def __init__(self, width: int = 3, depth: int = 1):
        super().__init__()
        self.width = width
        self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])

    def forward(self, x):
        return self.layers(x)


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# HubServer + huggingface_hub
# ---------------------------------------------------------------------------------------------


def test_patches_point_client_at_server(hub_server: HubServer):
    assert constants.ENDPOINT == hub_server.url
    assert HfApi().endpoint == hub_server.url
    assert huggingface_hub.hf_api.api.endpoint == hub_server.url  # module-level create_repo & co.
    assert huggingface_hub.hf_hub_url("a/b", "c.txt") == f"{hub_server.url}/a/b/resolve/main/c.txt"
    assert constants.HF_HUB_CACHE == str(hub_server.cache_dir)
    assert constants.HF_HUB_OFFLINE is False
    assert huggingface_hub.get_token() == FAKE_TOKEN
    # whoami through the module-level function (bound to the import-time HfApi instance)
    assert huggingface_hub.whoami()["name"] == hub_server.user
    assert hub_server.calls == [("GET", "/api/whoami-v2")]
    assert hub_server.requests[0].headers["authorization"] == f"Bearer {FAKE_TOKEN}"


def test_push_to_hub_from_pretrained_roundtrip(hub_server: HubServer):
    repo_id = f"{hub_server.user}/tiny"
    api = HfApi()
    url = api.create_repo(repo_id)
    assert url.repo_id == repo_id and url.endpoint == hub_server.url
    # exist_ok=True on an existing repo: the 409 answer must still carry the repo url.
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as exc:
        api.create_repo(repo_id)
    assert exc.value.response.status_code == 409

    torch.manual_seed(0)
    model = Tiny(width=4, depth=2)
    hub_server.clear_requests()
    commit = model.push_to_hub(repo_id)
    push_calls = hub_server.calls
    assert ("POST", "/api/repos/create") in push_calls
    assert ("POST", "/api/validate-yaml") in push_calls  # README.md model card is validated
    assert ("POST", f"/api/models/{repo_id}/preupload/main") in push_calls
    assert ("POST", f"/api/models/{repo_id}/commit/main") in push_calls
    assert not [c for c in push_calls if "lfs" in c[1] or "xet" in c[1]]
    commit_req = next(r for r in hub_server.requests if r.path.endswith("/commit/main"))
    assert commit_req.headers["authorization"] == f"Bearer {FAKE_TOKEN}"
    assert commit_req.headers["content-type"] == "application/x-ndjson"

    head = hub_server.head(repo_id)
    assert commit.oid == head
    assert hub_server.list_files(repo_id) == [".gitattributes", "README.md", "config.json", "model.safetensors"]
    assert json.loads(hub_server.read_file(repo_id, "config.json")) == {"depth": 2, "width": 4}
    stored = safetensors_load(hub_server.read_file(repo_id, "model.safetensors"))
    torch.testing.assert_close(stored["layers.0.weight"], model.layers[0].weight.detach(), rtol=0, atol=0)

    hub_server.clear_requests()
    loaded = Tiny.from_pretrained(repo_id)
    assert (loaded.width, len(loaded.layers)) == (4, 2)  # config.json -> __init__ kwargs
    _assert_same_weights(model, loaded)
    assert hub_server.calls == [
        ("HEAD", f"/{repo_id}/resolve/main/config.json"),
        ("GET", f"/{repo_id}/resolve/main/config.json"),
        ("HEAD", f"/{repo_id}/resolve/main/model.safetensors"),
        ("GET", f"/{repo_id}/resolve/main/model.safetensors"),
    ]
    # Files landed in the patched cache, in the standard layout.
    cached = hub_server.cache_dir / "models--test-user--tiny"
    assert (cached / "refs" / "main").read_text() == head
    assert (cached / "snapshots" / head / "model.safetensors").is_symlink()

    # Second load: HEAD only (etag matches the cached blob), no GET.
    hub_server.clear_requests()
    Tiny.from_pretrained(repo_id)
    assert [m for m, _ in hub_server.calls] == ["HEAD", "HEAD"]

    # Pushing new weights makes a new commit; from_pretrained follows main.
    with torch.no_grad():
        model.layers[0].weight.add_(1.0)
    commit2 = model.push_to_hub(repo_id)
    assert commit2.oid != commit.oid and hub_server.head(repo_id) == commit2.oid
    _assert_same_weights(model, Tiny.from_pretrained(repo_id))
    # ... while the old commit stays downloadable by sha.
    old = Tiny.from_pretrained(repo_id, revision=commit.oid)
    assert not torch.equal(old.layers[0].weight, model.layers[0].weight)

    # Pushing identical content: preupload returns matching oids -> nothing committed.
    head_before = hub_server.head(repo_id)
    model.push_to_hub(repo_id)
    assert hub_server.head(repo_id) == head_before


def test_save_pretrained_push_to_hub_with_name_only_repo_id(hub_server: HubServer, tmp_path: Path):
    model = Tiny()
    model.save_pretrained(tmp_path / "tiny-local", push_to_hub=True, repo_id="tiny-local")
    # The Hub puts a namespace-less repo under the token's user.
    assert hub_server.repo_exists(f"{hub_server.user}/tiny-local")
    _assert_same_weights(model, Tiny.from_pretrained(f"{hub_server.user}/tiny-local"))


def test_upload_file_download_errors_and_revisions(hub_server: HubServer):
    repo_id = "some-org/files"
    huggingface_hub.create_repo(repo_id)  # module-level function
    api = HfApi()
    c1 = api.upload_file(path_or_fileobj=b"v1", path_in_repo="dir/a.txt", repo_id=repo_id)
    c2 = api.upload_file(path_or_fileobj=b"v2", path_in_repo="dir/a.txt", repo_id=repo_id)
    assert c1.oid != c2.oid

    path = hf_hub_download(repo_id, "dir/a.txt")
    assert Path(path).read_bytes() == b"v2"
    assert Path(path).parent.parent.name == c2.oid
    assert Path(hf_hub_download(repo_id, "dir/a.txt", revision=c1.oid)).read_bytes() == b"v1"
    assert Path(hf_hub_download(repo_id, "dir/a.txt", revision=c1.oid[:10])).read_bytes() == b"v1"

    # HEAD metadata the client relies on.
    meta = huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(repo_id, "dir/a.txt"))
    assert (meta.commit_hash, meta.etag, meta.size) == (c2.oid, git_blob_sha1(b"v2"), 2)

    with pytest.raises(EntryNotFoundError) as exc:
        hf_hub_download(repo_id, "missing.bin")
    assert isinstance(exc.value, RemoteEntryNotFoundError)
    assert exc.value.response.status_code == 404
    # The client caches the miss under .no_exist/<commit> thanks to X-Repo-Commit on the 404.
    assert (hub_server.cache_dir / "models--some-org--files" / ".no_exist" / c2.oid / "missing.bin").exists()

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("some-org/does-not-exist", "a.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "dir/a.txt", revision="no-such-branch")

    info = api.model_info(repo_id)
    assert info.sha == c2.oid
    assert sorted(s.rfilename for s in info.siblings) == [".gitattributes", "dir/a.txt"]
    assert api.list_repo_files(repo_id) == [".gitattributes", "dir/a.txt"]
    assert api.file_exists(repo_id, "dir/a.txt") and not api.file_exists(repo_id, "nope")
    assert api.repo_exists(repo_id) and not api.repo_exists("some-org/nope")

    # snapshot_download: model_info(revision) + tree listing + per-file downloads
    snap = Path(snapshot_download(repo_id))
    assert snap.name == c2.oid and (snap / "dir" / "a.txt").read_bytes() == b"v2"

    # A wrong token is rejected like on the Hub.
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as exc:
        HfApi(token="hf_wrong").upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=repo_id)
    assert exc.value.response.status_code == 401


def test_upload_folder_with_deletions(hub_server: HubServer, tmp_path: Path):
    repo_id = f"{hub_server.user}/folder"
    hub_server.commit_files(repo_id, {"old/x.bin": b"x", "keep.txt": "keep"})
    folder = tmp_path / "up"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "w.bin").write_bytes(bytes(range(256)) * 100)
    (folder / "empty.txt").write_bytes(b"")
    HfApi().upload_folder(repo_id=repo_id, folder_path=folder, delete_patterns=["old/*"])
    assert hub_server.list_files(repo_id) == [".gitattributes", "empty.txt", "keep.txt", "sub/w.bin"]
    assert hub_server.read_file(repo_id, "sub/w.bin") == bytes(range(256)) * 100
    assert ("GET", f"/api/models/{repo_id}/tree/main") in hub_server.calls  # listing for delete_patterns


# ---------------------------------------------------------------------------------------------
# Prefilled huggingface_hub cache, offline
# ---------------------------------------------------------------------------------------------


def test_prefilled_cache_works_offline(hf_offline: Path):
    torch.manual_seed(1)
    model = Tiny(width=5)
    files = {
        "config.json": json.dumps({"width": 5, "depth": 1}),
        "model.safetensors": safetensors_save({k: v.contiguous() for k, v in model.state_dict().items()}),
        "nested/dir/file.txt": b"hello",
    }
    snapshot = prefill_hf_cache(hf_offline, "org/tiny", files)
    sha = snapshot.name
    assert constants.HF_HUB_OFFLINE is True and constants.HF_HUB_CACHE == str(hf_offline)

    # Default cache_dir (patched constant) and explicit cache_dir both resolve from refs/main.
    p = hf_hub_download("org/tiny", "nested/dir/file.txt")
    assert Path(p).read_bytes() == b"hello" and p == str(snapshot / "nested" / "dir" / "file.txt")
    assert Path(hf_hub_download("org/tiny", "config.json", cache_dir=hf_offline)).read_text() == files["config.json"]
    assert Path(hf_hub_download("org/tiny", "config.json", revision=sha)).is_file()

    loaded = Tiny.from_pretrained("org/tiny")
    assert loaded.width == 5
    _assert_same_weights(model, loaded)

    # The layout is one huggingface_hub's own cache scanner accepts without warnings.
    report = huggingface_hub.scan_cache_dir(hf_offline)
    assert report.warnings == []
    (repo,) = report.repos
    assert repo.repo_id == "org/tiny" and set(repo.refs) == {"main"}
    assert {f.file_name for f in next(iter(repo.revisions)).files} == {"config.json", "model.safetensors", "file.txt"}

    # Offline misses are LocalEntryNotFoundError (an EntryNotFoundError), caused by OfflineModeIsEnabled.
    with pytest.raises(LocalEntryNotFoundError) as exc:
        hf_hub_download("org/tiny", "not-cached.bin")
    assert isinstance(exc.value.__cause__, huggingface_hub.errors.OfflineModeIsEnabled)
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("org/other", "config.json")


def test_download_then_go_offline(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch):
    hub_server.commit_files("test-user/m", {"a.txt": "A"})
    p = hf_hub_download("test-user/m", "a.txt")
    set_hf_offline(monkeypatch)
    hub_server.clear_requests()
    assert hf_hub_download("test-user/m", "a.txt") == p  # served from refs/main + snapshot
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("test-user/m", "never-downloaded.txt")
    assert hub_server.calls == []  # offline mode blocks requests inside the client


def test_prefilled_cache_with_explicit_sha_and_local_files_only(tmp_path: Path):
    # No fixture at all: explicit cache_dir + commit sha short-circuits before any network call.
    sha = "0123456789abcdef0123456789abcdef01234567"
    snapshot = prefill_hf_cache(tmp_path / "cache", "org/m", {"w.bin": b"\x00\x01"}, revision_sha=sha)
    assert snapshot == tmp_path / "cache" / "models--org--m" / "snapshots" / sha
    assert (tmp_path / "cache" / "models--org--m" / "refs" / "main").read_text() == sha
    p = hf_hub_download("org/m", "w.bin", revision=sha, cache_dir=tmp_path / "cache")
    assert Path(p).read_bytes() == b"\x00\x01"
    p = hf_hub_download("org/m", "w.bin", cache_dir=tmp_path / "cache", local_files_only=True)
    assert Path(p).read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError):
        prefill_hf_cache(tmp_path / "cache", "org/m", {"w.bin": b""}, revision_sha="main")


# ---------------------------------------------------------------------------------------------
# torch.hub
# ---------------------------------------------------------------------------------------------


def test_torch_hub_download_from_static_server(file_server, torch_home: Path, tmp_path: Path):
    torch.manual_seed(2)
    sd = Tiny().state_dict()
    src = file_server.root / "weights" / "tiny-0123abcd.pth"
    src.parent.mkdir()
    torch.save(sd, src)
    url = file_server.url_for("weights/tiny-0123abcd.pth")

    model_dir = tmp_path / "ckpts"
    loaded = torch.hub.load_state_dict_from_url(url, model_dir=str(model_dir), weights_only=True, progress=False)
    assert loaded.keys() == sd.keys()
    for k in sd:
        torch.testing.assert_close(loaded[k], sd[k], rtol=0, atol=0)
    assert (model_dir / "tiny-0123abcd.pth").read_bytes() == src.read_bytes()
    assert file_server.calls == [("GET", "/weights/tiny-0123abcd.pth")]
    assert file_server.requests[0].headers["user-agent"] == "torch.hub"

    # Cached now: no second request.
    torch.hub.load_state_dict_from_url(url, model_dir=str(model_dir), weights_only=True, progress=False)
    assert len(file_server.calls) == 1

    # Default model_dir comes from TORCH_HOME (fixture).
    torch.hub.load_state_dict_from_url(url, weights_only=True, progress=False)
    assert (torch_home / "hub" / "checkpoints" / "tiny-0123abcd.pth").is_file()

    with pytest.raises(HTTPError) as exc:
        torch.hub.load_state_dict_from_url(file_server.url_for("missing.pth"), model_dir=str(model_dir),
                                           progress=False)
    assert exc.value.code == 404
    assert not list(model_dir.glob("missing.pth*"))


def test_torch_hub_prefilled_cache(torch_home: Path):
    sd = {"w": torch.arange(6.0).reshape(2, 3)}
    path = prefill_torch_hub_cache(torch_home, "prefilled-deadbeef.pth", sd)
    assert path == torch_home / "hub" / "checkpoints" / "prefilled-deadbeef.pth"
    # Nothing listens at this URL: only the cache can satisfy the call.
    url = f"{unused_local_url()}/some/path/prefilled-deadbeef.pth"
    loaded = torch.hub.load_state_dict_from_url(url, weights_only=True, progress=False)
    torch.testing.assert_close(loaded["w"], sd["w"], rtol=0, atol=0)
    # And the same URL without the cache really fails (proves no silent download path).
    os.remove(path)
    with pytest.raises(Exception):
        torch.hub.load_state_dict_from_url(url, weights_only=True, progress=False)

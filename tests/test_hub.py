"""`mage-hf push-to-hub`: checks the folder, then talks to the Hub API (mocked at the HTTP transport only)."""

from __future__ import annotations

import base64
import json

import huggingface_hub
import pytest

import mage_hf
from mage_hf.commands import main as cli_main

httpx = pytest.importorskip("httpx2")


@pytest.fixture
def fake_hub(monkeypatch):
    """A Hub stand-in behind huggingface_hub's real client: records requests and the committed files."""
    recorded = {"paths": [], "files": {}}

    def handler(request):
        path = request.url.path
        recorded["paths"].append((request.method, path))
        if path.endswith("/repos/create"):
            return httpx.Response(200, json={"url": "https://huggingface.co/me/mage-mnist", "name": "me/mage-mnist"})
        if path.endswith("/validate-yaml"):
            return httpx.Response(200, json={"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx.Response(200, json={"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if "/commit/" in path:
            for line in request.content.decode().splitlines():
                item = json.loads(line)
                if item.get("key") == "file":
                    recorded["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return httpx.Response(200, json={"commitUrl": "https://huggingface.co/me/mage-mnist/commit/1",
                                             "commitOid": "1" * 40})
        return httpx.Response(200, json={})

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(handler)))
    yield recorded
    from huggingface_hub.utils._http import default_client_factory

    huggingface_hub.set_client_factory(default_client_factory)


def test_push_default_model(fake_hub, capsys):
    code = cli_main(["push-to-hub", mage_hf.DEFAULT_MODEL, "--repo-id", "me/mage-mnist", "--token", "hf_test"])
    assert code == 0, capsys.readouterr().err
    assert ("POST", "/api/repos/create") in fake_hub["paths"]
    assert {"config.json", "model.safetensors", "README.md", "preprocessor_config.json"} <= set(fake_hub["files"])
    card = fake_hub["files"]["README.md"].decode()
    assert "library_name: mage_hf" in card and "mage" in card
    assert "commit/1" in capsys.readouterr().out


def test_push_refuses_incomplete_folders(tmp_path, fake_hub, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert cli_main(["push-to-hub", str(tmp_path), "--repo-id", "me/x"]) == 2
    assert "README.md" in capsys.readouterr().err
    (tmp_path / "README.md").write_text("card")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    assert cli_main(["push-to-hub", str(tmp_path), "--repo-id", "me/x"]) == 2
    assert "pickled" in capsys.readouterr().err
    assert cli_main(["push-to-hub", mage_hf.DEFAULT_MODEL, "--repo-id", "no-slash"]) == 2
    assert fake_hub["paths"] == []  # nothing reached the Hub

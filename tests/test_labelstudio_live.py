"""Pre-annotations through a real Label Studio server: import, accept, export, read back pixel-exact.

Slow and opt-in: Label Studio is a Django server whose pins clash with ours, so it lives in its own
virtual environment, and it takes a minute or two to start:

    python3 -m venv /tmp/lsvenv && /tmp/lsvenv/bin/pip install label-studio==1.23.2
    LABEL_STUDIO_BIN=/tmp/lsvenv/bin/label-studio .venv/bin/python -m pytest -m slow tests/test_labelstudio_live.py
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import cv2
import numpy as np
import pytest

from training.sources.labelstudio import load_labelstudio
from runtime.labelstudio import LabelStudioWriter, label_config

pytestmark = pytest.mark.slow
EMAIL, PASSWORD = "test@example.com", "segpipe-test-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    binary = os.environ.get("LABEL_STUDIO_BIN") or shutil.which("label-studio")
    if not binary:
        pytest.skip("no Label Studio: set LABEL_STUDIO_BIN to a label-studio executable (see the module docstring)")
    requests = pytest.importorskip("requests")
    port, root = free_port(), tmp_path / "files"
    root.mkdir()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(tmp_path / "ls"), "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED":
           "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root)}
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen([binary, "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
                                "--username", EMAIL, "--password", PASSWORD], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if process.poll() is not None:
                pytest.fail(f"Label Studio exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                if requests.get(base + "/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        else:
            pytest.fail("Label Studio did not answer /health within 300 s")
        yield base, root
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def login(base: str):
    import requests

    session = requests.Session()
    session.get(base + "/user/login/")
    session.post(base + "/user/login/", data={"email": EMAIL, "password": PASSWORD,
                                              "csrfmiddlewaretoken": session.cookies.get("csrftoken")},
                 headers={"Referer": base})
    return session, {"X-CSRFToken": session.cookies.get("csrftoken"), "Referer": base}


def test_predictions_import_into_label_studio_and_come_back_pixel_exact(server):
    base, root = server
    names = ["background", "horse", "rider"]
    (root / "imgs").mkdir()
    writer = LabelStudioWriter(root / "pre.json", names, model_version="unet-v1", image_prefix="/data/local-files/?d=imgs/")
    truth = {}
    for i in range(2):
        mask = np.zeros((60, 80), np.uint8)
        cv2.circle(mask, (25 + 10 * i, 30), 15, 1, -1)
        mask[40:55, 50:75 - 5 * i] = 2
        cv2.imwrite(str(root / "imgs" / f"p{i}.png"), np.zeros((60, 80, 3), np.uint8))
        writer.add(f"p{i}.png", mask, np.full((3, 60, 80), 0.5, np.float32))
        truth[f"p{i}.png"] = mask
    writer.close()
    session, headers = login(base)
    project = session.post(base + "/api/projects/", headers=headers,
                           json={"title": "pre-annotations", "label_config": label_config(names)})
    assert project.status_code == 201, project.text
    pid = project.json()["id"]
    done = session.post(base + f"/api/projects/{pid}/import", headers=headers,
                        json=json.loads((root / "pre.json").read_text()))
    assert done.status_code == 201 and done.json()["prediction_count"] == 2, done.text
    for task in session.get(base + f"/api/tasks?project={pid}", headers=headers).json()["tasks"]:
        prediction = session.get(base + f"/api/tasks/{task['id']}", headers=headers).json()["predictions"][0]
        assert prediction["model_version"] == "unet-v1"
        accepted = session.post(base + f"/api/tasks/{task['id']}/annotations/", headers=headers,
                                json={"result": prediction["result"]})  # an annotator accepts the pre-annotation
        assert accepted.status_code == 201, accepted.text
    export = session.get(base + f"/api/projects/{pid}/export?exportType=JSON", headers=headers)
    (root / "export.json").write_bytes(export.content)
    items = load_labelstudio(root / "export.json", root / "imgs", {"horse": 1, "rider": 2})
    assert sorted(item.image_path.name for item in items) == sorted(truth)
    for item in items:
        assert np.array_equal(item.mask, truth[item.image_path.name])

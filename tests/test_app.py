"""The demo (issue 14): upload checks, prompts, two methods side by side through the real web API
(gradio_client against a server on 127.0.0.1), two visitors at once, cancel without orphans."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_HEARTBEAT_INTERVAL", "0.5")  # a closed client counts as gone after 0.5 s, not 15

from likeness.app import Demo, RunRequest  # noqa: E402
from likeness.app.workspace import UploadError, Workspace, check_photo  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut_path):
    """The astronaut (one clear face), a group of two equal faces, a blank, a corrupt file, a huge one."""
    folder = tmp_path_factory.mktemp("uploads")
    astro = Image.open(astronaut_path).convert("RGB")
    face = astro.crop((150, 50, 290, 190))
    group = Image.new("RGB", (420, 220), (200, 200, 200))
    group.paste(face, (20, 40))
    group.paste(face, (260, 40))
    paths = {"astronaut": folder / "astronaut.jpg", "group": folder / "group.png", "blank": folder / "blank.png",
             "corrupt": folder / "corrupt.jpg", "huge": folder / "huge.png"}
    astro.save(paths["astronaut"], quality=95)
    group.save(paths["group"])
    Image.new("RGB", (256, 256), (128, 128, 128)).save(paths["blank"])
    paths["corrupt"].write_bytes(b"this is not an image, whatever its name says" * 10)
    Image.new("L", (8000, 6000), 0).save(paths["huge"])  # 48 MP: over the demo's 40 MP limit
    paths["oversized"] = folder / "oversized.jpg"
    with open(paths["oversized"], "wb") as handle:  # 21 MiB on paper, sparse on disk
        handle.truncate(21 * 2**20)
    return paths


def test_upload_checks_name_the_problem(photos, dlib_backend):
    image, note = check_photo(photos["astronaut"], dlib_backend)
    assert image is not None and note.startswith("ok")
    expected = {"group": "faces of similar size", "blank": "no face found", "corrupt": "not a recognised image format",
                "huge": "too large", "oversized": "(21 MiB, limit 20 MiB)"}  # the unit it is set in, not "21 MB"
    for key, words in expected.items():
        image, problem = check_photo(photos[key], dlib_backend)
        assert image is None and words in problem, (key, problem)


def test_workspace_keeps_only_usable_photos_and_checks_prompts(tmp_path, photos, dlib_backend):
    ws = Workspace(tmp_path, "visitor1")
    checks = ws.save_photos([photos["astronaut"], photos["blank"]], "José García", dlib_backend)
    assert [c.ok for c in checks] == [True, False]
    assert len(ws.photos()) == 1 and ws.photos()[0].suffix == ".png"
    with pytest.raises(UploadError, match="has no \\{\\} where the person goes"):
        ws.write_prompts("a cat on a couch")
    with pytest.raises(UploadError, match="type a prompt"):
        ws.write_prompts("  \n ")
    path = ws.write_prompts("{} on a couch\n{} playing chess", category="animals", from_open_set=2)
    entries = json.loads(path.read_text(encoding="utf-8"))
    assert [e["prompt_id"] for e in entries[:2]] == ["d00", "d01"] and len(entries) == 4
    assert all("animals" in e["categories"] for e in entries[2:])
    with pytest.raises(UploadError, match="invalid visitor"):
        Workspace(tmp_path, "../escape")


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    from likeness.app.ui import launch

    root = tmp_path_factory.mktemp("demo-root")
    app, url = launch(str(root), port=None, max_concurrent=1, block=False)
    yield url, root, app
    app.close()


def _run_args(photo, name, methods, prompts="{} riding a bicycle"):
    from gradio_client import handle_file

    # photos, name, methods, base_model, prompts, category, from_open_set, seed, images/prompt, steps, train steps
    return ([handle_file(str(photo))], name, methods, "likeness/tiny-sd", prompts, "", 0, 3, 1, 2, 2)


def test_two_visitors_two_methods_through_the_web_api(server, photos):
    from gradio_client import Client, handle_file

    url, root, _ = server
    alice, bob = Client(url, verbose=False), Client(url, verbose=False)
    refused = alice.predict([handle_file(str(photos["corrupt"]))], "Alice", api_name="/check_photos")
    assert "not a recognised image format" in refused
    # Alice keeps her files after leaving (the Chromium test below renders them); Bob's are deleted.
    assert "your files stay in" in alice.predict(True, api_name="/keep_files")

    results = {}

    def visit(client, key, *args):
        results[key] = client.predict(*args, api_name="/run")

    threads = [threading.Thread(target=visit, args=(alice, "alice", *_run_args(
                   photos["astronaut"], "Alice", ["textual-inversion", "dreambooth-lora"]))),
               threading.Thread(target=visit, args=(bob, "bob", *_run_args(
                   photos["astronaut"], "Bob", ["textual-inversion"], "{} playing chess")))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    status, grid, scores, downloads = results["alice"]
    assert "textual-inversion**: done" in status and "dreambooth-lora**: done" in status, status
    assert {row["method"] for row in scores} == {"textual-inversion", "dreambooth-lora"}
    assert {row["metric"] for row in scores} == {"IPS", "SIS", "APS"}
    assert all(row["prompt"] == "{} riding a bicycle" for row in scores)
    assert grid.count("<img") == 3 and "dreambooth-lora" in grid and "protocols behind the scores" in grid
    zips = {Path(d).name: Path(d) for d in downloads}
    with zipfile.ZipFile(zips["artifacts.zip"]) as z:
        names = z.namelist()
    assert any(n.startswith("textual-inversion/") and n.endswith(".safetensors") for n in names)
    assert any(n.startswith("dreambooth-lora/") and n.endswith("pytorch_lora_weights.safetensors") for n in names)
    with zipfile.ZipFile(zips["results.zip"]) as z:
        assert z.read("scores.csv").decode().startswith("method,item_id")

    status_b, _, scores_b, _ = results["bob"]
    assert "textual-inversion**: done" in status_b and {r["prompt"] for r in scores_b} == {"{} playing chess"}
    # The page's upload cache is the demo's own (<root>/.cache): uploads and downloads are there, nowhere else.
    demo = server[2].likeness_demo
    cache = root / ".cache"
    assert (cache / bob.session_hash / "results.zip").is_file() and demo._uploads[bob.session_hash]
    # Each visitor has a folder of their own: photos and run folders never mix.
    folders = [p for p in root.iterdir() if p.is_dir() and (p / "identities").is_dir()]
    assert len(folders) == 2
    people = sorted(p.name for f in folders for p in (f / "identities").iterdir())
    from likeness.data.names import name_key

    assert people == sorted([name_key("Alice"), name_key("Bob")])
    # The runs are ordinary bench run folders: `likeness report` works on them.
    from likeness.bench.report import build_report

    alice_folder = next(f for f in folders if (f / "identities" / name_key("Alice")).exists())
    page, _ = build_report(alice_folder / "runs" / "dreambooth-lora")
    assert page.exists()

    # Bob leaves (closes the page): his folder, his downloads and his uploads go from the cache; what is left
    # there is Alice's (she kept her files), including the photo both uploaded (one file: named by content).
    bob.close()
    deadline = time.monotonic() + 30
    while (root / bob.session_hash).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (root / bob.session_hash).exists() and not (cache / bob.session_hash).exists()
    left = {p for p in cache.rglob("*") if p.is_file()}
    alices = {p for p in left if p.is_relative_to(cache / alice.session_hash)} | demo._uploads[alice.session_hash]
    assert left == alices and len(demo._uploads[alice.session_hash]) == 2  # her photo and the corrupt file


def test_uploads_the_page_refuses_are_not_kept(server, photos, tmp_path):
    import httpx
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, root, _ = server
    before = {p for p in (root / ".cache").rglob("*") if p.is_file()}
    with open(photos["oversized"], "rb") as handle:  # over 20 MiB: refused while it streams in, never stored
        response = httpx.post(url.rstrip("/") + "/gradio_api/upload", files={"files": ("big.jpg", handle, "image/jpeg")})
    assert response.status_code == 413 and "maximum allowed size" in response.text
    notes = tmp_path / "notes.txt"  # not an image type: refused before any handler sees it, and deleted
    notes.write_text("not a photo")
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match="notes.txt: not an image file"):
        client.predict([handle_file(str(notes))], "Ana", api_name="/check_photos")
    client.close()
    assert {p for p in (root / ".cache").rglob("*") if p.is_file()} == before


def test_a_refused_photo_is_answered_while_runs_wait_for_workers(server, photos):
    """Every worker a run may take is busy (four runs waiting for the only slot, which the test holds): the
    check before a run still answers at once, while a fifth run would wait in the queue."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, root, app = server
    demo = app.likeness_demo
    clients = [Client(url, verbose=False) for _ in range(5)]
    demo.jobs.slots.acquire()
    try:
        jobs = [c.submit(*_run_args(photos["astronaut"], "Ada", ["textual-inversion"]), api_name="/run") for c in clients[:4]]
        deadline = time.monotonic() + 60
        while not all(job.outputs() for job in jobs) and time.monotonic() < deadline:  # each says "queued"
            time.sleep(0.2)
        assert all(job.outputs() for job in jobs)
        time.sleep(0.5)  # (each handler goes from its "queued" message to the slot it waits for)
        started = time.monotonic()
        with pytest.raises(AppError, match="no face found"):
            clients[4].predict(*_run_args(photos["blank"], "Ada", ["textual-inversion"]), api_name="/check_run")
        assert time.monotonic() - started < 15
        queued = clients[4].submit(*_run_args(photos["blank"], "Ada", ["textual-inversion"]), api_name="/run")
        time.sleep(2)
        assert not queued.outputs()  # no worker free for a run: it waits
    finally:
        for client in clients:
            demo.cancel(client.session_hash)
        demo.jobs.slots.release()
    for job in jobs:
        assert "cancelled" in job.result(timeout=60)[0]
    assert "no face found" in queued.result(timeout=60)[0]
    for client in clients:
        client.close()


def test_bad_base_model_and_prompt_are_messages_not_crashes(server, photos):
    from gradio_client import Client

    client = Client(server[0], verbose=False)
    args = list(_run_args(photos["astronaut"], "Ana", ["textual-inversion"]))
    args[3] = str(Path("/nonexistent") / "model")
    status, grid, scores, _ = client.predict(*args, api_name="/run")
    assert "is not available" in status and not grid and not scores
    args[3], args[4] = "likeness/tiny-sd", "no placeholder here"
    status, *_ = client.predict(*args, api_name="/run")
    assert "has no {} where the person goes" in status


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cancel_and_leaving_stop_every_process(tiny_models, tmp_path, photos):
    demo = Demo(tmp_path, max_concurrent=1)
    request = RunRequest(methods=["textual-inversion", "dreambooth-lora"], train_steps=100_000, steps=2)
    states = []
    runner = threading.Thread(target=lambda: states.extend(demo.run("v1", request, [photos["astronaut"]], "Ada")))
    runner.start()
    deadline = time.monotonic() + 120
    while not demo.jobs.pids("v1") and time.monotonic() < deadline:
        time.sleep(0.2)
    (pid,) = demo.jobs.pids("v1")
    assert _alive(pid)
    assert "1 running process stopped" in demo.cancel("v1")
    runner.join(timeout=60)
    assert not runner.is_alive() and not _alive(pid)
    assert "textual-inversion**: cancelled" in states[-1].status
    assert "dreambooth-lora**: cancelled" in states[-1].status  # the next method never started
    assert not (tmp_path / "v1" / "runs" / "dreambooth-lora").exists()
    demo.leave("v1")
    assert not (tmp_path / "v1").exists()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless chromium not installed")
def test_page_and_results_grid_render_in_chromium(server, tmp_path):
    url, root, _ = server
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([str(CHROMIUM), *flags, "--virtual-time-budget=15000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120).stdout
    assert "likeness: put a person in any scene" in dom and "Run" in dom
    # The results grid the page shows, as a standalone page (the visitors' runs of the test above).
    kept = [p.name for p in root.iterdir() if (p / "runs" / "dreambooth-lora").exists()]
    assert kept, "needs the kept run of test_two_visitors_two_methods_through_the_web_api (same module)"
    visitor = kept[0]
    demo = Demo(root)
    grid = demo.results(visitor, ["textual-inversion", "dreambooth-lora"]).grid
    page = tmp_path / "grid.html"
    page.write_text(f"<html><body>{grid}</body></html>", encoding="utf-8")
    shot = tmp_path / "grid.png"
    subprocess.run([str(CHROMIUM), *flags, f"--screenshot={shot}", "--window-size=800,600", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10  # images and text drawn, not a blank page


def test_a_second_run_from_the_same_visitor_is_refused_while_the_first_is_going(tmp_path, photos):
    """The first Run waits for the (held) run slot; the visitor's second Run is refused at once with a
    message, another visitor's is not; after a cancel the visitor can run again. No child is started."""
    from likeness.app.jobs import BUSY

    demo = Demo(tmp_path, max_concurrent=1)
    request = RunRequest(methods=["textual-inversion"], train_steps=2, steps=2)
    demo.jobs.slots.acquire()  # the slot is busy: the first Run stays queued
    first: list = []
    runner = threading.Thread(target=lambda: first.extend(demo.run("v1", request, [photos["astronaut"]], "Ada")))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while (not demo.jobs.active("v1") or not first) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "queued" in first[-1].status
        again = list(demo.run("v1", request, [photos["astronaut"]], "Ada"))
        assert [s.status for s in again] == [BUSY]
        assert runner.is_alive() and demo.jobs.active("v1")  # the first Run goes on, untouched
        other = demo.run("v2", request, [], "Bo")
        assert "upload a photo" in next(other).status  # another visitor is not refused for v1's Run
        demo.cancel("v1")
    finally:
        demo.jobs.slots.release()
    runner.join(timeout=60)
    assert not runner.is_alive() and "cancelled" in first[-1].status and not demo.jobs.active("v1")
    assert not demo.jobs.pids("v1")
    third = demo.run("v1", request, [], "Ada")
    assert "queued" in next(third).status  # free again (its photo is kept)
    third.close()
    assert not demo.jobs.active("v1")


# -- the methods a weights folder offers (issue 24) ----------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tiny_models, tmp_path_factory):
    from likeness.testing.weights_folder import write_weights_folder

    return write_weights_folder(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def arcface_photo(tmp_path_factory, astronaut_path):
    """The astronaut with a bright square where the tiny ArcFace detector finds its "face" (dlib still finds hers)."""
    photo = np.asarray(Image.open(astronaut_path).convert("RGB")).copy()
    photo[192:232, 192:232] = 255
    path = tmp_path_factory.mktemp("arcface-photo") / "astronaut.png"
    Image.fromarray(photo).save(path)
    return path


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless chromium not installed")
def test_the_demo_offers_what_a_weights_folder_holds_and_runs_two_tuning_free_methods(
        weights, arcface_photo, photos, tmp_path_factory, tmp_path, monkeypatch):
    """The methods offered are those whose files the weights folder holds (no hub cache here), each on a base of its
    family; the page (headless Chromium) lists them and what the others miss; IP-Adapter (SD 1.x) and InstantID
    (SDXL) run from it side by side, and the grid shows each one's base, encode time and scores."""
    import re

    from gradio_client import Client, handle_file

    from likeness.app.ui import launch

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-home"))  # no hub cache: only the folder counts
    root = tmp_path_factory.mktemp("demo-weights-root")
    app, url = launch(str(root), port=None, block=False, weights=[str(weights)])
    try:
        demo = app.likeness_demo
        offered = demo.offered()
        assert {"ip-adapter", "instantid", "textual-inversion", "dreambooth-lora", "flux-kontext"} <= set(offered)
        assert "pulid" not in offered and "photomaker" not in offered
        base, options, problem = demo.method_plan("instantid", demo.bases)
        assert (base, problem) == ("likeness/tiny-sdxl", "")
        assert options["face_model_dir"] == str(weights / "antelopev2") and options["controlnet"].endswith("ControlNetModel")
        assert demo.method_plan("ip-adapter", demo.bases)[0] == "likeness/tiny-sd"  # the family its file is for
        assert demo.method_plan("dreambooth-lora", {"flux1": "likeness/tiny-flux"})[0] == "likeness/tiny-flux"
        listing = demo.methods_found()
        assert "**instantid** on `likeness/tiny-sdxl` (tuning-free: encode time)" in listing
        assert "**textual-inversion** on `likeness/tiny-sd` (trained: training time)" in listing
        # A method without its files, or a base that cannot be found, is a message before any work.
        demo.workspace("v1").save_photos([photos["astronaut"]], "Ada", demo.backend)
        assert "pulid cannot run here: missing pulid_v1.bin" in demo.check_run("v1", RunRequest(methods=["pulid"]))
        bad = RunRequest(methods=["instantid"], base_model="sdxl=/nonexistent/sdxl")
        assert "is not available" in demo.check_run("v1", bad)
        assert "unknown family 'sdx'" in demo.check_run("v1", RunRequest(methods=["instantid"], base_model="sdx=a/b"))

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        dom = subprocess.run([str(CHROMIUM), *flags, "--virtual-time-budget=15000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120).stdout
        assert "methods found" in dom and "instantid" in dom and "antelopev2" in dom
        assert "pulid cannot run here: missing pulid_v1.bin (PuLID v1; guozinan/PuLID)" in dom
        client = Client(url, verbose=False)
        # photos, name, methods, base models ("": the demo's), prompts, category, open-set prompts, seed, images per
        # prompt, steps, training steps
        status, grid, scores, _ = client.predict(
            [handle_file(str(arcface_photo))], "Ada", ["ip-adapter", "instantid"], "", "{} riding a bicycle", "", 0, 3, 1,
            2, 0, api_name="/run")
        client.close()
    finally:
        app.close()
    assert "ip-adapter**: done" in status and "instantid**: done" in status, status
    assert grid.count("<img") == 3  # the reference and one image per method
    assert "likeness/tiny-sd<br>" in grid and "likeness/tiny-sdxl<br>" in grid
    times = re.findall(r'class="personalize" title="per person">encode (\d+\.\d) s<', grid)
    assert len(times) == 2 and all(float(t) > 0 for t in times), grid[:2000]
    assert {row["method"] for row in scores} == {"ip-adapter", "instantid"}
    assert {row["metric"] for row in scores} == {"IPS", "SIS", "APS"} and grid.count("IPS ") == 2
    page = tmp_path / "grid.html"
    page.write_text(f"<html><body>{grid}</body></html>", encoding="utf-8")
    shot = tmp_path / "grid.png"
    subprocess.run([str(CHROMIUM), *flags, f"--screenshot={shot}", "--window-size=800,600", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert np.asarray(Image.open(shot).convert("L"), dtype=np.float32).std() > 10  # images and text drawn

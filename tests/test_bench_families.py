"""Methods on bases of different families in one `likeness bench` leaderboard (`--method METHOD@BASE,...`): FLUX
methods beside an SDXL one, each run folder on its own base, the leaderboard saying which, the per-person
personalization time recorded, the same command continuing each method on its base."""

from __future__ import annotations

import importlib
import json

from bench_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from likeness.bench.leaderboard import PAGE, leaderboard_rows
from likeness.cli import main

FLUX = "likeness/tiny-flux"
SDXL = "likeness/tiny-sdxl"
# The methods run on tiny FLUX here: name -> its options, or, for a method with published files, the likeness.testing
# module whose write_published_files(folder, base_model) writes them in the published layout and returns the options
# (a method that needs an ArcFace model gets the tiny one).
FLUX_METHODS = {
    "pulid-flux": "likeness.testing.pulid_flux_layout",
    "infiniteyou": "likeness.testing.infiniteyou_layout",
}


def _options(name, spec, folder, arcface_dir) -> dict:
    from likeness.methods import METHODS
    from likeness.methods.discovery import needs_face_model

    options = importlib.import_module(spec).write_published_files(folder / name, FLUX) if isinstance(spec, str) else spec
    if needs_face_model(METHODS.get(name)):
        options = {**options, "face_model_dir": str(arcface_dir)}
    return options


def test_flux_and_sdxl_methods_fill_one_leaderboard(tiny_models, arcface_dir, tmp_path, capsys):
    from PIL import Image
    from skimage.data import astronaut

    run = tmp_path / "run"
    people = tmp_path / "people" / "astro"
    people.mkdir(parents=True)
    photo = astronaut().copy()
    photo[192:232, 192:232] = 255  # where the tiny ArcFace detector finds its "face"; dlib still finds the real one
    Image.fromarray(photo).save(people / "0.png")
    method = ",".join([f"{name}@{FLUX}" for name in FLUX_METHODS] + [f"textual-inversion@{SDXL}"])
    options = [f"{name}:{key}={json.dumps(value)}" for name, spec in FLUX_METHODS.items()
               for key, value in _options(name, spec, tmp_path / "weights", arcface_dir).items()]
    command = ["bench", "--out", str(run), "--method", method, "--identities", str(people.parent), "--limit", "1",
               "--train-steps", "2", "--steps", "2", "--resolution", "32", "--metrics", "ips", "--quiet", "--no-report"]
    for option in options:
        command += ["--method-option", option]
    assert main(command) == 0, capsys.readouterr().err
    names = [*FLUX_METHODS, "textual-inversion"]
    rows = leaderboard_rows([run / name for name in names])
    assert [r["method"] for r in rows] == names and all(r["done"] == 1 and not r["failed"] for r in rows)
    assert [r["base_model"] for r in rows] == [FLUX] * len(FLUX_METHODS) + [SDXL]
    for name in names:  # each image made on its method's base, as its sidecar says
        sidecar = json.loads(next((run / name / "images").rglob("*.json")).read_text())
        assert sidecar["base_model"] == (SDXL if name == "textual-inversion" else FLUX)
        manifest = json.loads(next((run / name / "artifacts").glob("*/likeness.json")).read_text())
        assert manifest["base_model"]["family"] == ("sdxl" if name == "textual-inversion" else "flux1")
    # How long each person's personalization took (training, or for the tuning-free ones encoding the photo): recorded.
    assert all(r["seconds_per_person"] is not None and r["seconds_per_person"] > 0 for r in rows)
    page = (run / PAGE).read_text()
    assert ">base model<" in page and ">s / person<" in page and f"<code>{FLUX}</code>" in page
    assert page.count(f"<td class='l'><code>{SDXL}</code></td>") == 1
    text = capsys.readouterr().out
    assert text.splitlines()[-2].split()[-1] == SDXL  # the terminal table says each method's base too

    # The same command continues the run: every method on the base its folder records, nothing redone.
    assert main(command) == 0
    assert [r["done"] for r in leaderboard_rows([run / name for name in names])] == [1] * len(names)
    # Another base for a method of this folder is another run: refused, the folder's results kept.
    moved = [part.replace(f"textual-inversion@{SDXL}", "textual-inversion@likeness/tiny-sd") for part in command]
    assert main(moved) == 2
    assert "now 'likeness/tiny-sd'. Use a new run folder" in capsys.readouterr().err
    # A method on a base of a family it does not run on, or named twice: said before any work.
    assert main(["bench", "--out", str(tmp_path / "bad"), "--method", f"pulid@{FLUX},textual-inversion", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pulid runs on SDXL (sdxl), but its base 'likeness/tiny-flux' is FLUX.1 (flux1)" in err
    assert main(["bench", "--out", str(tmp_path / "bad"), "--method", f"pulid@{FLUX}", "--quiet"]) == 2  # one method too
    assert "pulid runs on SDXL (sdxl)" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path / "bad"), "--method", f"textual-inversion,textual-inversion@{SDXL}"]) == 2
    assert "names textual-inversion more than once" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()

"""Which methods a weights folder or the local hub cache can run (likeness.methods.discovery), on tiny files in the
published layouts: found by name in any folder tree, the version / variant present chosen, ArcFace packs filling
face_model_dir, hub-cache files found offline, and what is missing said by file name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from likeness.methods.discovery import FACE_MODEL_NEED, discover
from likeness.testing.peer_layouts import clip_vision_encoder, eva_clip_state, ip_adapter_state, pulid_state, save_flat, save_published
from likeness.testing.tiny_arcface import export_tiny_arcface
from likeness.testing.weights_folder import hub_snapshot, write_weights_folder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tiny_models, tmp_path_factory):
    """One folder as a user fills it (IP-Adapter SD 1.x plus-face, InstantID, an ArcFace pack), and unrelated files."""
    root = write_weights_folder(tmp_path_factory.mktemp("weights"))
    (root / "notes").mkdir()
    (root / "notes" / "config.json").write_text("{}")  # a generic name outside any published subfolder: ignored
    return root


def _cache_file(cache: Path, repo: str, filename: str, source: Path) -> Path:
    """A file as `hf download` leaves it in the hub cache: in a snapshot of the main ref."""
    target = hub_snapshot(cache, repo) / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    return target


def test_a_weights_folder_offers_the_methods_whose_files_it_holds(weights, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-home"))
    found = discover([weights])
    ip = found["ip-adapter"]
    assert ip.available and ip.families == ("sd1",) and not ip.trains
    assert ip.options_for("sd1") == {
        "weights": str(weights / "IP-Adapter" / "models" / "ip-adapter-plus-face_sd15.safetensors"),
        "image_encoder": str(weights / "IP-Adapter" / "models" / "image_encoder"), "variant": "plus-face"}
    assert ip.options_for("sdxl") is None
    instantid = found["instantid"].options_for("sdxl")
    assert instantid == {"weights": str(weights / "InstantID" / "ip-adapter.bin"),
                         "controlnet": str(weights / "InstantID" / "ControlNetModel"),
                         "face_model_dir": str(weights / "antelopev2")}
    # Trained methods and editors need no published file: always offered, on every family they support.
    for name, family in (("textual-inversion", "sd1"), ("dreambooth-lora", "flux1"), ("flux-kontext", "flux1")):
        assert found[name].options_for(family) == {}, name
    assert found["dreambooth-lora"].trains and not found["flux-kontext"].trains
    # Not there: said by file name and where it is published.
    pulid = found["pulid"]
    assert not pulid.available and pulid.options_for("sdxl") is None
    assert pulid.missing == ["pulid_v1.bin (PuLID v1; guozinan/PuLID)",
                             "EVA02_CLIP_L_336_psz14_s6B.pt (EVA02-CLIP-L-336; QuanSun/EVA-CLIP)"]
    assert "ip-adapter-faceid_sd15.bin" in found["ip-adapter-faceid"].describe()
    # The same files without the ArcFace pack: InstantID needs one and says so.
    bare = tmp_path / "bare"
    shutil.copytree(weights / "InstantID", bare / "InstantID")
    without = discover([bare])["instantid"]
    assert not without.available and without.missing == [FACE_MODEL_NEED]
    assert "photoverse.json (encoder from `likeness train-encoder --method photoverse`)" in found["photoverse"].missing[0]
    # A folder marked by a JSON file (a trained encoder's photoverse.json; discovery reads names, loading checks
    # the contents): the option gets the folder.
    (bare / "runs" / "encoder").mkdir(parents=True)
    (bare / "runs" / "encoder" / "photoverse.json").write_text("{}")
    assert discover([bare])["photoverse"].options_for("sd1") == {"weights": str(bare / "runs" / "encoder")}
    with pytest.raises(FileNotFoundError, match="weights folder .*nowhere does not exist"):
        discover([tmp_path / "nowhere"])


def test_the_version_present_is_chosen_and_the_hub_cache_is_searched_offline(tiny_models, weights, monkeypatch, tmp_path):
    """PuLID v1.1 in a weights folder (not the default v1), its EVA-CLIP file only in the hub cache; IP-Adapter's
    SDXL plain file (not the default plus-face) with its ViT-bigG encoder, from the cache too."""
    from likeness.methods.peers.common import empty_unet

    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "home" / "hub"
    sdxl = empty_unet("likeness/tiny-sdxl")
    files = tmp_path / "made"
    eva = _cache_file(cache, "QuanSun/EVA-CLIP", "EVA02_CLIP_L_336_psz14_s6B.pt", save_flat(eva_clip_state(), files / "eva.pt"))
    plain = _cache_file(cache, "h94/IP-Adapter", "sdxl_models/ip-adapter_sdxl.safetensors",
                        save_published(ip_adapter_state(sdxl, "plain", embed=32), files / "plain.safetensors"))
    encoder = clip_vision_encoder(files / "bigg")
    for name in ("config.json", "model.safetensors"):
        _cache_file(cache, "h94/IP-Adapter", f"sdxl_models/image_encoder/{name}", encoder / name)
    mine = tmp_path / "mine"
    save_flat(pulid_state(sdxl, version="v1.1"), mine / "pulid_v1.1.safetensors")
    export_tiny_arcface(mine / "buffalo_l")

    found = discover([mine, weights])
    assert found["pulid"].options_for("sdxl") == {"weights": str(mine / "pulid_v1.1.safetensors"), "eva_clip": str(eva),
                                                   "version": "v1.1", "face_model_dir": str(mine / "buffalo_l")}
    ip = found["ip-adapter"]
    assert ip.families == ("sd1", "sdxl")
    assert ip.options_for("sdxl") == {"weights": str(plain), "image_encoder": str(plain.parent / "image_encoder"),
                                      "variant": "plain"}
    assert ip.options_for("sd1")["variant"] == "plus-face"  # the weights folder's, as before
    assert not discover([mine], hub_cache=False)["pulid"].available  # without the cache: no EVA-CLIP file



def test_photomaker_v2_alone_brings_the_arcface_stack_it_needs(tmp_path):
    """PhotoMaker v2 takes the ArcFace embedding: its file alone is offered only with an ArcFace pack, and the
    options choose the arcface face stack (discovery reads names only, so the file's bytes do not matter here)."""
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "photomaker-v2.bin").write_bytes(b"")
    alone = discover([folder], hub_cache=False, methods=["photomaker"])["photomaker"]
    assert not alone.available  # (what is missing is said for the default version, v1)
    export_tiny_arcface(folder / "antelopev2")
    found = discover([folder], hub_cache=False, methods=["photomaker"])["photomaker"]
    assert found.options_for("sdxl") == {"weights": str(folder / "photomaker-v2.bin"), "version": "v2",
                                         "face_backend": "arcface", "face_model_dir": str(folder / "antelopev2")}


def test_every_method_declares_its_families_and_files_consistently():
    """What discovery and `bench METHOD@BASE` rely on, for every registered method (FLUX methods added later too):
    known families; each published file's option is a method option and its `when` names method options (or the
    base family) with values of the right kind; methods with files declare their families."""
    from likeness.methods import METHODS
    from likeness.methods.baselines.reference_rows import PhotoRow
    from likeness.models.families import FAMILY_NAMES

    for name in METHODS.names():
        method = METHODS.get(name)
        if not method.__module__.startswith("likeness."):
            continue  # registered by a test (tests/bench_helpers.py)
        assert set(method.families) <= set(FAMILY_NAMES), name
        assert method.families or issubclass(method, PhotoRow), f"{name}: no families declared"
        for file in method.published_files:
            assert file.option in method.defaults, (name, file)
            assert file.filename and "/" not in file.filename, (name, file)
            for key, value in file.when:
                assert key == "family" and value in method.families or key in method.defaults, (name, file)
        if method.published_files:  # each version / variant gives every option its file
            from likeness.methods.discovery import _configurations

            configs = _configurations(method)
            assert configs, f"{name}: no version of its published files gives every option a file"
            assert all(c.get(k, v) == v for c in configs[:1] for k, v in method.defaults.items() if k in c), name

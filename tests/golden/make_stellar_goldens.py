"""Golden outputs of the official Stellar metric code, for ``tests/test_stellar_conformance.py``. Run by hand,
never by CI (it needs the official code and a side environment):

    # the official code (github.com/stellar-gen-ai/stellar-metrics), a work tree of it:
    git clone https://github.com/stellar-gen-ai/stellar-metrics /tmp/stellar-metrics-ref
    # a side environment with what its metric code needs (transformers 4.x: the official code calls
    # OwlViTProcessor.post_process_object_detection, which transformers 5 removed; pandas < 3: see APS below):
    python -m venv /tmp/stellar-ref-venv
    /tmp/stellar-ref-venv/bin/pip install torch==2.13.0 "transformers<5" "pandas<3" scikit-learn pillow numpy
    # then, from the repository root, in likeness' own environment:
    python tests/golden/make_stellar_goldens.py --official-src /tmp/stellar-metrics-ref \\
        --side-python /tmp/stellar-ref-venv/bin/python

What it does:
1. writes the inputs (``tests/golden/stellar_official/inputs``, committed): a two-person dataset in the official
   Stellar layout (``stellar/000/0.jpg`` ...) and eight "generated" images in the official flat layout
   (``syn/<save_name>.png`` + ``.json`` with prompt, attributes, detectables, image_path, save_name), all drawn
   from a seeded generator; and two hand-made tables: CLIP-T/CLIP-N values near the penalty's threshold
   (``penalty/clip.csv``) and APS predictions (``aps/attribute_preservation_syn.csv``), in the official CSV layouts;
2. builds likeness' tiny CLIP and tiny OWL-ViT (``likeness.models.tiny_vision``, seed 0: the same weights the
   test rebuilds) and adds the files transformers 4.x reads (slow-tokenizer vocab.json / merges.txt,
   preprocessor_config.json); OWL-ViT goes where the official code loads it from (``google/owlvit-large-patch14``,
   a path relative to the working directory);
3. runs the official code unchanged in the side environment (``--run-official``; its modules are imported one by
   one, so the packages of metrics not checked here, facenet-pytorch, hpsv2, dreamsim, ..., are not needed):
   ``CLIPMetrics`` (fp32 on the CPU; ``__main__.run`` hard-codes fp16, which does not run on a CPU) over the
   ``SynImageDataset`` in batches of 16 as ``run`` does, ``ObjectFaithfulness`` one image per call and the
   whole set in one batch of 16, and ``analysis.utils``' ``parse_exclusion`` and ``attribute_pres``;
4. runs ``attribute_pres`` once more under pandas 3 (this environment), where its prediction flip is a no-op;
5. writes ``tests/golden/stellar_official/goldens.json`` with the official commit, the package versions, a
   fingerprint of the tiny weights and every per-image output.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent / "stellar_official"
INPUTS = HERE / "inputs"
GOLDENS = HERE / "goldens.json"
APS_ATTRIBUTES = ("Young", "Male", "High_Cheekbones", "Pointy_Nose", "Narrow_Eyes", "Double_Chin", "Big_Lips", "Big_Nose")

# Generated images: (save_name, prompt template, detectables). Lists of different lengths (the official batch
# pads them with " "), Stellar role words (dropped: clown, Pope, astronaut, knight), words likeness used to drop
# and the official code keeps (chef, man, pirate), one prompt with only role words.
GENERATED = [
    ("000-0-00", "{} eating an apple in a library", ["apple", "library"]),
    ("000-0-01", "{} dressed as a clown playing the guitar on a planet", ["clown", "guitar", "planet"]),
    ("000-1-00", "{} as a chef holding a dog", ["chef", "dog"]),
    ("000-1-01", "{} meeting the Pope on a bicycle near a castle under the moon", ["Pope", "bicycle", "castle", "moon"]),
    ("001-0-00", "{} as an astronaut", ["astronaut"]),
    ("001-0-01", "{} next to a man with a hat", ["man", "hat"]),
    ("001-1-00", "{} as a pirate on a boat", ["pirate", "boat"]),
    ("001-1-01", "{} riding a horse in the snow with a knight", ["horse", "snow", "knight"]),
]


# ----------------------------------------------------------------------------------------------------------
# 1. inputs (likeness' environment)
# ----------------------------------------------------------------------------------------------------------


def _picture(rng, width: int, height: int):
    """Smooth colour fields with a few rectangles and ellipses: structured enough for CLIP, seeded."""
    import numpy as np
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    a, b, c = rng.uniform(-1, 1, (3, 3))
    pixels = np.stack([127 + 100 * np.sin(3 * a[k] * x + 3 * b[k] * y + c[k]) for k in range(3)], axis=-1)
    image = Image.fromarray(pixels.clip(0, 255).astype("uint8"))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = (int(v) for v in rng.integers(0, [width - 8, height - 8]))
        x1, y1 = x0 + int(rng.integers(6, width // 2)), y0 + int(rng.integers(6, height // 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
    return image


def write_inputs() -> None:
    import numpy as np

    rng = np.random.default_rng(2312_06116)
    if INPUTS.exists():
        shutil.rmtree(INPUTS)
    labels = {}
    for person in ("000", "001"):
        folder = INPUTS / "stellar" / person
        folder.mkdir(parents=True)
        for k in (0, 1):
            _picture(rng, int(rng.integers(56, 97)), int(rng.integers(56, 97))).save(folder / f"{k}.jpg", quality=95)
            labels[(person, k)] = {a: int(rng.choice([-1, 1])) for a in APS_ATTRIBUTES}
            (folder / f"{k}_attributes.json").write_text(json.dumps({"attributes": labels[(person, k)]}, indent=1))
    syn = INPUTS / "syn"
    syn.mkdir(parents=True)
    for save_name, prompt, detectables in GENERATED:
        person, k = save_name.split("-")[0], int(save_name.split("-")[1])
        _picture(rng, int(rng.integers(48, 129)), int(rng.integers(48, 129))).save(syn / f"{save_name}.png")
        record = {"prompt": prompt, "attributes": labels[(person, k)], "detectables": detectables,
                  "image_path": f"{person}/{k}.jpg", "save_name": save_name}
        (syn / f"{save_name}.json").write_text(json.dumps(record, indent=1))

    # Penalty: CLIP-N values and CLIP-T values placed around CLIP-N + 2 std, where the sample std (ddof 1, the
    # official one) and the population std (ddof 0) disagree for some images: CLIP-T = CLIP-N + 2 std0 +
    # f (std1 - std0) follows under ddof 1 only when f > 2, under ddof 0 when f > 0.
    n = [0.20, 0.24, 0.30, 0.22, 0.26, 0.28, 0.21, 0.25, 0.27, 0.23]
    std1, std0 = float(np.std(n, ddof=1)), float(np.std(n, ddof=0))
    t = [v + 2 * std0 + (std1 - std0) * f for v, f in zip(n, [2.5, 1.5, 0.5, 4.0, -0.5, 3.0, 0.3, -2.0, 1.9, 2.2])]
    _write_csv(INPUTS / "penalty" / "clip.csv", ["name", "clip_t", "clip_n", "clip_i"],
               [[f"p{i:02d}", t[i], n[i], 0.5] for i in range(len(n))])

    # APS: targets and predictions of 12 images in the official table layout (one row per image, <attr>_target /
    # <attr>_pred); Big_Nose has one class only; p03 and p07 have no face (predictions = -targets, as the official
    # code sets them). The clip table decides which images fail the penalty (their predictions get flipped).
    names = [f"a{i:02d}" for i in range(12)]
    rows = []
    for i, name in enumerate(names):
        row = [name]
        for attribute in APS_ATTRIBUTES:
            target = 1 if attribute == "Big_Nose" else int(rng.choice([-1, 1]))
            pred = -target if i in (3, 7) else int(rng.choice([-1, 1], p=[0.3, 0.7]) * target)
            row += [target, pred]
        rows.append(row)
    header = ["name"] + [f"{a}_{kind}" for a in APS_ATTRIBUTES for kind in ("target", "pred")]
    _write_csv(INPUTS / "aps" / "attribute_preservation_syn.csv", header, rows)
    aps_n = [float(v) for v in rng.uniform(0.18, 0.30, len(names))]
    aps_t = [v + float(rng.uniform(-0.02, 0.12)) for v in aps_n]
    _write_csv(INPUTS / "aps" / "clip.csv", ["name", "clip_t", "clip_n", "clip_i"],
               [[name, aps_t[i], aps_n[i], 0.5] for i, name in enumerate(names)])


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """A table as pandas' ``to_csv`` writes a frame with its default index (what the official code reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([""] + header)
        for i, row in enumerate(rows):
            writer.writerow([i] + [repr(v) if isinstance(v, float) else v for v in row])


# ----------------------------------------------------------------------------------------------------------
# 2. the tiny models (likeness' environment)
# ----------------------------------------------------------------------------------------------------------


def weight_fingerprint(folder: Path) -> dict[str, float]:
    """Sum of |w| per model file: the test checks it, so a transformers release that initialises the tiny
    models differently fails with that message instead of a wrong-looking difference."""
    from safetensors.numpy import load_file

    state = load_file(str(folder / "model.safetensors"))
    return {"sum_abs": float(sum(abs(v.astype("float64")).sum() for v in state.values())), "tensors": len(state)}


def build_models(root: Path) -> dict[str, Path]:
    import torch

    from likeness.models.tiny import build_vocabulary, tiny_words
    from likeness.models.tiny_vision import build_tiny_clip, build_tiny_owlvit

    torch.set_num_threads(1)
    folders = {"clip": build_tiny_clip(root / "clip", seed=0), "owlvit": build_tiny_owlvit(root / "owlvit", seed=0)}
    vocab, merges = build_vocabulary(tiny_words())
    for folder in folders.values():  # what transformers 4.x's slow CLIPTokenizer and image processors read
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        processor = json.loads((folder / "processor_config.json").read_text())
        image_processor = dict(processor["image_processor"])
        image_processor["image_processor_type"] = image_processor.get("image_processor_type", "").replace("Pil", "")
        (folder / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=1))
    return folders


# ----------------------------------------------------------------------------------------------------------
# 3. the official code (side environment)
# ----------------------------------------------------------------------------------------------------------


def import_official(src: Path):
    """The official modules needed here, without running the package's ``__init__`` (which imports every
    metric's third-party package). The modules themselves are the official files, unchanged."""
    import importlib
    import types

    package = src / "src" / "stellar_metrics"
    for name, path in (("stellar_metrics", package), ("stellar_metrics.models", package / "models"),
                       ("stellar_metrics.analysis", package / "analysis")):
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
    models = sys.modules["stellar_metrics.models"]
    models.CLIP = importlib.import_module("stellar_metrics.models.clip").CLIP
    models.OwlViT = importlib.import_module("stellar_metrics.models.owl_vit").OwlViT
    return types.SimpleNamespace(
        CLIPMetrics=importlib.import_module("stellar_metrics.clip_based").CLIPMetrics,
        ObjectFaithfulness=importlib.import_module("stellar_metrics.object_faithfulness").ObjectFaithfulness,
        SynImageDataset=importlib.import_module("stellar_metrics.syn_dataset").SynImageDataset,
        analysis=importlib.import_module("stellar_metrics.analysis.utils"),
    )


def _collate(samples: list[dict], keys) -> dict[str, list]:
    return {k: [s[k] for s in samples] for k in keys}


def run_official(src: Path, work: Path, out: Path) -> None:
    import inspect
    import os

    import pandas as pd
    import torch
    import transformers

    torch.set_num_threads(1)
    official = import_official(src)
    os.chdir(work)  # the official OWL-ViT loads "google/owlvit-large-patch14": here, a local folder
    for cls, folder in ((transformers.CLIPModel, work / "clip"),
                        (transformers.OwlViTForObjectDetection, work / "google" / "owlvit-large-patch14")):
        _, info = cls.from_pretrained(folder, output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        if bad:
            raise SystemExit(f"{folder}: transformers {transformers.__version__} does not load every weight: {bad}")

    dataset = official.SynImageDataset(INPUTS / "syn", INPUTS / "stellar")
    samples = [dataset[i] for i in range(len(dataset))]
    result: dict = {"per_image": {s["name"]: {"prompt": s["prompt"], "detectables": s["detectables"]} for s in samples}}

    # CLIP-T / CLIP-N / CLIP-I, batches of 16 as __main__.run, the CSV it writes, then the penalty on it.
    clip = official.CLIPMetrics("cpu", torch.float32, str(work / "clip"))
    keys = list(inspect.signature(clip).parameters)
    rows = []
    for start in range(0, len(samples), 16):
        batch = samples[start:start + 16]
        out_batch = clip(**_collate(batch, keys))
        for k, sample in enumerate(batch):
            rows.append({"name": sample["name"], **{m: float(v[k]) for m, v in out_batch.items()}})
    clip_dir = work / "results" / "clip"
    clip_dir.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(clip_dir / "clip_tiny.csv")
    follows = official.analysis.parse_exclusion(clip_dir)
    for row in rows:
        result["per_image"][row["name"]].update({m: row[m] for m in ("clip_t", "clip_n", "clip_i")},
                                                follows_prompt=bool(follows[row["name"]]))

    # GOA: one image per call (no padding), and the whole set in one batch of 16 (the official default).
    goa = official.ObjectFaithfulness(device="cpu", dtype=torch.float32)
    for sample in samples:
        try:
            value = float(goa(syn_img=[sample["syn_img"]], detectables=[sample["detectables"]])[0])
            result["per_image"][sample["name"]]["goa"] = value
        except Exception as exc:  # the official code on a prompt with only role words
            result["per_image"][sample["name"]]["goa_error"] = f"{type(exc).__name__}: {exc}"
    batched = goa(syn_img=[s["syn_img"] for s in samples], detectables=[s["detectables"] for s in samples])
    for sample, value in zip(samples, batched):
        result["per_image"][sample["name"]]["goa_batch16"] = float(value)

    # The penalty on the hand-made table, and APS on the hand-made predictions (pandas < 3 here).
    result["penalty_table"] = {k: bool(v) for k, v in official.analysis.parse_exclusion(INPUTS / "penalty").items()}
    result["aps"] = {f"pandas {pd.__version__}": float(official.analysis.attribute_pres(INPUTS / "aps")[0]["value"])}
    result["versions"] = {"python": sys.version.split()[0], "torch": torch.__version__,
                          "transformers": transformers.__version__, "pandas": pd.__version__,
                          "sklearn": __import__("sklearn").__version__}
    out.write_text(json.dumps(result, indent=1, sort_keys=True))


# ----------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-src", type=Path, required=True, help="a work tree of stellar-gen-ai/stellar-metrics")
    parser.add_argument("--side-python", type=Path, help="the side environment's python (transformers 4.x, pandas < 3)")
    parser.add_argument("--run-official", type=Path, help=argparse.SUPPRESS)  # the work folder (side environment)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_official:
        run_official(args.official_src, args.run_official, args.out)
        return
    if args.side_python is None:
        parser.error("--side-python is required")
    commit = subprocess.run(["git", "-C", str(args.official_src), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    write_inputs()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folders = build_models(work)
        (work / "google").mkdir()
        shutil.copytree(folders["owlvit"], work / "google" / "owlvit-large-patch14")
        side_out = work / "official.json"
        subprocess.run([str(args.side_python), __file__, "--official-src", str(args.official_src),
                        "--run-official", str(work), "--out", str(side_out)], check=True)
        result = json.loads(side_out.read_text())
        result["weights"] = {name: weight_fingerprint(folder) for name, folder in folders.items()}
    # attribute_pres once more under this environment's pandas (3.x: the flip of penalised predictions is a no-op).
    import pandas as pd

    official = import_official(args.official_src)
    result["aps"][f"pandas {pd.__version__}"] = float(official.analysis.attribute_pres(INPUTS / "aps")[0]["value"])
    result["official"] = {"repository": "https://github.com/stellar-gen-ai/stellar-metrics", "commit": commit}
    GOLDENS.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDENS}")


if __name__ == "__main__":
    main()

"""Clean output: third-party warnings only with -v, no training bars with --quiet (what reaches the terminal)."""

from __future__ import annotations

import importlib.util
import logging
import warnings

import pytest

from likeness.cli import main

MEAN_RESIZING = "multivariate normal distribution"  # transformers' mean_resizing notice (resize_token_embeddings)


def _forget_warned_once():
    """transformers warns some things once per process (an lru_cache on the call): forget what was warned. Its
    handler keeps the stderr of the moment it was made: point it at this test's (captured) stderr."""
    import sys

    import transformers.utils.logging as tlog

    tlog.warning_once.cache_clear()
    if tlog._default_handler is not None:
        tlog._default_handler.setStream(sys.stderr)


@pytest.fixture
def restore_levels(monkeypatch):
    """Put the libraries' log levels and verbosity variables back as they were after the test."""
    from likeness.cli.output import THIRD_PARTY

    for variable in filter(None, THIRD_PARTY.values()):
        monkeypatch.setenv(variable, "warning")  # recorded and restored by monkeypatch
    levels = {n: logging.getLogger(n).level for n in [*THIRD_PARTY, "likeness"]}
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


def test_third_party_notices_only_with_verbose(tiny_models, astronaut_path, tmp_path, capfd, restore_levels):
    import torch

    run = ["personalize", "--method", "textual-inversion", "--identity", str(astronaut_path), "--name", "ann",
           "--steps", "1", "--resolution", "32", "--seed", "0"]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _forget_warned_once()
        assert main([*run, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
        quiet = capfd.readouterr()
        _forget_warned_once()
        assert main([*run, "--out", str(tmp_path / "plain")]) == 0
        plain = capfd.readouterr()
        _forget_warned_once()
        assert main([*run, "--out", str(tmp_path / "verbose"), "-v"]) == 0
        verbose = capfd.readouterr()
    finally:
        torch.set_num_threads(previous)
    assert quiet.err == "" and quiet.out.startswith("artifact written")  # --quiet: nothing but the result
    assert MEAN_RESIZING not in plain.err and "torchvision" not in plain.err
    assert MEAN_RESIZING in verbose.err  # -v shows it


def test_torchvision_fallback_notice_only_with_verbose(tiny_models, astronaut_path, tmp_path, restore_levels):
    """transformers says it once per process, when diffusers' pipelines import: a fresh process per run."""
    import os
    import subprocess
    import sys

    from likeness.cli.output import THIRD_PARTY

    artifact = tmp_path / "artifact"
    assert main(["personalize", "--method", "textual-inversion", "--identity", str(astronaut_path), "--name", "ann",
                 "--steps", "1", "--resolution", "32", "--out", str(artifact), "--quiet"]) == 0
    env = {k: v for k, v in os.environ.items() if k not in THIRD_PARTY.values()}  # as a user's shell has it
    errs = {}
    for flag in ("", "-v"):
        command = [sys.executable, "-m", "likeness", "generate", "--artifact", str(artifact), "--prompt", "{} x",
                   "--out", str(tmp_path / f"images{flag}"), "--steps", "1", "--height", "32", "--width", "32"]
        done = subprocess.run(command + ([flag] if flag else []), env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        errs[flag] = done.stderr
    assert "torchvision" not in errs[""] and MEAN_RESIZING not in errs[""]
    assert MEAN_RESIZING in errs["-v"]  # loading the artifact's token grows the embedding table
    if importlib.util.find_spec("torchvision") is None:  # only then does transformers fall back (and say so)
        assert "requires torchvision" in errs["-v"]


def test_python_warnings_of_libraries_hidden_but_likeness_own_shown(capfd, restore_levels):
    from likeness.cli.output import third_party_output

    _forget_warned_once()
    library = logging.getLogger("transformers.models.clip")
    for verbose in (0, 1):
        with warnings.catch_warnings(record=True) as caught:
            third_party_output(verbose)
            warnings.warn_explicit("from a library", UserWarning, "lib.py", 1, module="transformers.models.x")
            warnings.warn_explicit("from likeness", UserWarning, "x.py", 1, module="likeness.methods.x")
        library.warning("a library notice")
        library.error("a library error")
        shown = [str(w.message) for w in caught]
        err = capfd.readouterr().err
        assert "from likeness" in shown and "a library error" in err  # ours and errors: always
        assert ("from a library" in shown) == bool(verbose) and ("a library notice" in err) == bool(verbose)


def test_train_encoder_quiet_turns_off_the_training_bar(monkeypatch, tmp_path, restore_levels):
    from likeness.methods.base import get_method

    seen = {}
    method = type(get_method("photoverse"))
    monkeypatch.setattr(method, "train_encoder", lambda self, data, out, base, **config: seen.update(config) or out)
    assert main(["train-encoder", "--data", str(tmp_path), "--out", str(tmp_path / "enc"), "--quiet"]) == 0
    assert seen["progress"] is False
    seen.clear()
    assert main(["train-encoder", "--data", str(tmp_path), "--out", str(tmp_path / "enc")]) == 0
    assert "progress" not in seen  # the method's default: bars on

"""The demo's web page (gradio): upload a photo, type prompts, run methods side by side, see scores.

The page only collects inputs and shows what :class:`likeness.app.demo.Demo` yields. Each browser
session is one visitor (its gradio session hash names its work folder); when the tab closes, the
visitor's processes are stopped and, unless "keep my files" was ticked, the folder is deleted.
Every button is also an API endpoint (``/check_photos``, ``/check_run``, ``/run``, ``/cancel``), so the demo
can be driven with ``gradio_client``.

The page forgets: gradio's upload cache is ``<root>/.cache`` (``GRADIO_TEMP_DIR``), a visitor's uploads and
downloads there are deleted with their folder, and an upload over the size limit is refused by gradio
before it is stored. Checks (photo, prompts, base model) have no concurrency limit and run before a Run is
queued, so a refusal never waits behind other visitors' runs.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import gradio as gr  # at module level: gradio resolves the `gr.Request` annotations below against it

from likeness.app.demo import Demo, PageState, RunRequest
from likeness.app.workspace import MAX_UPLOAD_BYTES, mebibytes

TITLE = "likeness: put a person in any scene, compare methods, see the scores"
INTRO = """Upload a photo of one person, pick methods and prompts (`{}` is where the person goes), run.
Each method personalizes on your photo (trained methods show their training time, tuning-free ones the time
to encode the photo), then every image is scored for identity (IPS, SIS, APS) under the protocol shown below
the grid. The methods offered are those whose weights were found (`likeness demo --weights DIR` and the local
model cache), each on a base model of a family it runs on. The built-in tiny bases have random weights and
make noise: set *base models* to real checkpoints (`sdxl=stabilityai/stable-diffusion-xl-base-1.0`, one
`FAMILY=MODEL` per line; hub id or local folder) for pictures."""


def _photo_path(component, f):
    """How the photo upload hands each file to a handler: its path in gradio's cache, as it is. (gradio 6's File
    also makes an empty temporary file in its cache for every file of every event and keeps only its name: one
    leftover per upload and click that would outlive the visitor.) A file that is not an image type reaches no
    handler, so it is deleted here. Set on the one component, not by subclassing: gradio writes a ``.pyi``
    file next to the module of every Component subclass."""
    from gradio.utils import NamedString
    from gradio_client.utils import is_valid_file

    if component.file_types and not is_valid_file(f.path, component.file_types):
        refused = Path(f.path)
        if refused.resolve().is_relative_to(Path(component.GRADIO_CACHE).resolve()):
            refused.unlink(missing_ok=True)
            try:
                refused.parent.rmdir()
            except OSError:
                pass
        raise gr.Error(f"{refused.name}: not an image file; upload a photo (JPEG, PNG, ...)")
    return NamedString(f.path)


def _visitor(request) -> str:
    """The gradio session hash, reduced to a safe folder name."""
    raw = getattr(request, "session_hash", None) or "anonymous"
    return re.sub(r"[^A-Za-z0-9_-]", "", str(raw))[:64] or "anonymous"


def _number(value) -> int | None:
    return int(value) if value not in (None, "", 0) else None


def build_app(demo: Demo):
    """The gradio Blocks app for ``demo`` (not launched)."""
    from likeness.data.prompts import CATEGORIES

    def check_photos(photos, name, request: gr.Request):
        return demo.check_photos(_visitor(request), photos or [], name or "me")

    def run_request(methods, base_model, prompts, category, from_open_set, seed, images_per_prompt, steps, train_steps):
        return RunRequest(
            methods=list(methods or []), base_model=(base_model or "").strip(), prompts=prompts or "",
            category=category or None, from_open_set=int(from_open_set or 0), seed=int(seed or 0),
            images_per_prompt=int(images_per_prompt or 1), steps=_number(steps), train_steps=_number(train_steps))

    def check_run(photos, name, methods, base_model, prompts, category, from_open_set, seed, images_per_prompt, steps,
                  train_steps, request: gr.Request):
        settings = run_request(methods, base_model, prompts, category, from_open_set, seed, images_per_prompt, steps,
                               train_steps)
        problem = demo.check_run(_visitor(request), settings, photos or [], name or "me")
        if problem:
            raise gr.Error(problem)  # stops the chain: the run is not queued
        return "checked: queued for a free slot"

    def run(photos, name, methods, base_model, prompts, category, from_open_set, seed, images_per_prompt, steps,
            train_steps, request: gr.Request):
        settings = run_request(methods, base_model, prompts, category, from_open_set, seed, images_per_prompt, steps,
                               train_steps)
        state = PageState("")
        for state in demo.run(_visitor(request), settings, photos or [], name or "me"):
            yield state.status, state.grid, state.scores or [], state.downloads or None
        return

    def cancel(request: gr.Request):
        return demo.cancel(_visitor(request))

    def keep_files(keep, request: gr.Request):
        visitor = _visitor(request)
        (demo.keep.add if keep else demo.keep.discard)(visitor)
        return f"your files stay in `{demo.workspace(visitor).folder}`" if keep else "your files are deleted when you leave"

    def leave(request: gr.Request):
        demo.leave(_visitor(request))

    # Backstop for files no visitor's leave() claims (an API client that uploads and never calls an event):
    # gradio deletes the cache files it made once a day old (checked hourly), and all of them at shutdown.
    with gr.Blocks(title="likeness demo", delete_cache=(3600, 24 * 3600)) as app:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Row():
            with gr.Column(scale=1):
                photos = gr.File(label=f"photos of one person (at most {mebibytes(MAX_UPLOAD_BYTES)} each)",
                                 file_count="multiple", file_types=["image"])
                photos._process_single_file = functools.partial(_photo_path, photos)
                name = gr.Textbox(label="name", value="me")
                photo_status = gr.Markdown()
                offered = demo.offered()
                methods = gr.CheckboxGroup(choices=offered, value=[m for m in ("textual-inversion",) if m in offered],
                                           label="methods (those whose weights were found)")
                gr.Markdown(demo.methods_found(), elem_id="methods-found")
                base_model = gr.Textbox(label="base models: FAMILY=MODEL per line (hub id or local folder; a bare MODEL "
                                              "is the base of its own family)", lines=3,
                                        value="\n".join(f"{family}={model}" for family, model in demo.bases.items()))
            with gr.Column(scale=1):
                prompts = gr.Textbox(label="prompts, one per line ({} = the person)", lines=4,
                                     value="{} riding a bicycle on the moon")
                with gr.Row():
                    category = gr.Dropdown(choices=[""] + list(CATEGORIES), value="", label="open prompt set: category")
                    from_open_set = gr.Slider(0, 8, value=0, step=1, label="prompts from the open set")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="seed")
                    images_per_prompt = gr.Slider(1, 4, value=1, step=1, label="images per prompt")
                with gr.Row():
                    steps = gr.Number(value=0, precision=0, label="denoising steps (0: default)")
                    train_steps = gr.Number(value=0, precision=0, label="training steps (0: default)")
                keep = gr.Checkbox(label="keep my files after I leave", value=False)
                keep_status = gr.Markdown()
        with gr.Row():
            run_button = gr.Button("Run", variant="primary")
            cancel_button = gr.Button("Cancel")
        status = gr.Markdown()
        grid = gr.HTML()
        scores = gr.JSON(label="scores")
        downloads = gr.File(label="downloads: images + scores, artifacts", file_count="multiple")

        # Checks take no worker a run may hold (concurrency_limit=None): answered while runs are queued.
        photos.upload(check_photos, [photos, name], photo_status, api_name="check_photos", concurrency_limit=None)
        inputs = [photos, name, methods, base_model, prompts, category, from_open_set, seed, images_per_prompt, steps,
                  train_steps]
        running = run_button.click(check_run, inputs, status, api_name="check_run", concurrency_limit=None).success(
            run, inputs, [status, grid, scores, downloads], api_name="run")
        cancel_button.click(cancel, None, status, cancels=[running], api_name="cancel")
        keep.change(keep_files, keep, keep_status, api_name="keep_files")
        app.unload(leave)
    return app


def launch(root: str, *, host: str = "127.0.0.1", port: int | None = None, max_concurrent: int = 1,
           queue_size: int = 16, block: bool = True, runtime: list[str] | None = None, weights=(),
           bases: dict[str, str] | None = None, hub_cache: bool = True):
    """Build and serve the demo; returns (gradio app, local URL). ``runtime``: device / precision options
    given to every run (e.g. ``["--dtype", "bfloat16"]``); ``weights``: folders to find methods' published files in
    (and, with ``hub_cache``, the local hub cache); ``bases``: the base model of each family (over the tiny ones)."""
    demo = Demo(root, max_concurrent=max_concurrent, runtime=runtime, weights=weights, bases=bases, hub_cache=hub_cache)
    demo.cache.mkdir(parents=True, exist_ok=True)
    # gradio reads its cache folder when each Blocks and the server are made: set it first, to a folder the demo
    # cleans with its visitors (not the system-wide /tmp/gradio, where uploads outlived them).
    os.environ["GRADIO_TEMP_DIR"] = str(demo.cache.resolve())
    app = build_app(demo)
    # More handlers than slots: a visitor waiting for a slot sees "queued" instead of a frozen page.
    app.queue(default_concurrency_limit=4 * max(1, max_concurrent), max_size=queue_size)
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block,
                           allowed_paths=[str(demo.root)], show_error=True,
                           max_file_size=MAX_UPLOAD_BYTES)  # refused while streaming, before the upload is stored
    app.likeness_demo = demo  # for tests and embedding
    return app, url

"""The demo's web page (gradio): upload a photo, type prompts, run methods side by side, see scores.

The page only collects inputs and shows what :class:`likeness.app.demo.Demo` yields. Each browser
session is one visitor (its gradio session hash names its work folder); when the tab closes, the
visitor's processes are stopped and, unless "keep my files" was ticked, the folder is deleted.
Every button is also an API endpoint (``/check_photos``, ``/run``, ``/cancel``), so the demo can be
driven with ``gradio_client``.
"""

from __future__ import annotations

import re

import gradio as gr  # at module level: gradio resolves the `gr.Request` annotations below against it

from likeness.app.demo import DEFAULT_BASE_MODEL, Demo, PageState, RunRequest

TITLE = "likeness: put a person in any scene, compare methods, see the scores"
INTRO = """Upload a photo of one person, pick methods and prompts (`{}` is where the person goes), run.
Each method personalizes on your photo (trained methods show training progress), then every image is
scored for identity (IPS, SIS, APS) under the protocol shown below the grid. The built-in base model
`likeness/tiny-sd` has random weights and makes noise: point *base model* at a real Stable Diffusion
checkpoint (hub id or local folder) for pictures."""


def _visitor(request) -> str:
    """The gradio session hash, reduced to a safe folder name."""
    raw = getattr(request, "session_hash", None) or "anonymous"
    return re.sub(r"[^A-Za-z0-9_-]", "", str(raw))[:64] or "anonymous"


def _number(value) -> int | None:
    return int(value) if value not in (None, "", 0) else None


def build_app(demo: Demo):
    """The gradio Blocks app for ``demo`` (not launched)."""
    from likeness.data.prompts import CATEGORIES
    from likeness.methods import METHODS

    def check_photos(photos, name, request: gr.Request):
        return demo.check_photos(_visitor(request), photos or [], name or "me")

    def run(photos, name, methods, base_model, prompts, category, from_open_set, seed, images_per_prompt, steps,
            train_steps, request: gr.Request):
        run_request = RunRequest(
            methods=list(methods or []), base_model=(base_model or DEFAULT_BASE_MODEL).strip(), prompts=prompts or "",
            category=category or None, from_open_set=int(from_open_set or 0), seed=int(seed or 0),
            images_per_prompt=int(images_per_prompt or 1), steps=_number(steps), train_steps=_number(train_steps))
        state = PageState("")
        for state in demo.run(_visitor(request), run_request, photos or [], name or "me"):
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

    with gr.Blocks(title="likeness demo") as app:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Row():
            with gr.Column(scale=1):
                photos = gr.File(label="photos of one person", file_count="multiple", file_types=["image"])
                name = gr.Textbox(label="name", value="me")
                photo_status = gr.Markdown()
                methods = gr.CheckboxGroup(choices=METHODS.names(), value=["textual-inversion"], label="methods")
                base_model = gr.Textbox(label="base model (hub id or local folder)", value=DEFAULT_BASE_MODEL)
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

        photos.upload(check_photos, [photos, name], photo_status, api_name="check_photos")
        running = run_button.click(
            run, [photos, name, methods, base_model, prompts, category, from_open_set, seed, images_per_prompt, steps,
                  train_steps], [status, grid, scores, downloads], api_name="run")
        cancel_button.click(cancel, None, status, cancels=[running], api_name="cancel")
        keep.change(keep_files, keep, keep_status, api_name="keep_files")
        app.unload(leave)
    return app


def launch(root: str, *, host: str = "127.0.0.1", port: int | None = None, max_concurrent: int = 1,
           queue_size: int = 16, block: bool = True, runtime: list[str] | None = None):
    """Build and serve the demo; returns (gradio app, local URL). ``runtime``: device / precision options
    given to every run (e.g. ``["--dtype", "bfloat16"]``)."""
    demo = Demo(root, max_concurrent=max_concurrent, runtime=runtime)
    app = build_app(demo)
    # More handlers than slots: a visitor waiting for a slot sees "queued" instead of a frozen page.
    app.queue(default_concurrency_limit=4 * max(1, max_concurrent), max_size=queue_size)
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block,
                           allowed_paths=[str(demo.root)], show_error=True)
    return app, url

"""The demo's web page and server (Gradio): one ``/segment`` event for both the browser and the API.

Why these settings: the server binds where ``--host`` says (loopback by default) and never opens a
public share link; uploads are capped in size; refused requests become a message in the page
(``gr.Error`` without a server-side traceback) and the server keeps serving; requests queue and
run one at a time, since one model answers them all.
"""
from __future__ import annotations

import atexit
import collections
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a demo server does not call home

import gradio as gr  # noqa: E402

from lseg.app.core import AppSettings, InputError, Segmenter, label_presets  # noqa: E402
from lseg.predict import PredictError, Predictor, parse_labels  # noqa: E402

ASSETS = Path(__file__).resolve().parent / "assets"
#: Bundled example scenes (drawn, not photographed) and labels that fit them.
EXAMPLES = [("street.jpg", "sky, building, road, car, tree, other"),
            ("beach.jpg", "sky, sea, sand, umbrella, sun, other"),
            ("field.jpg", "sky, grass, house, water, sheep, other")]
#: Requests waiting beyond this many are told the server is busy instead of waiting for minutes.
QUEUE_SIZE = 64
# System fonts only: the page must not fetch anything from the internet (offline nodes, tunnels).
_THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                           font_mono=["ui-monospace", "monospace"])


class _UploadedImage(gr.Image):
    """The image box, handing the handler the uploaded file's path without decoding it.

    ``gr.Image`` decodes uploads itself and answers a file that is not an image with a bare
    "Error"; decoding in :meth:`Segmenter.image` tells the user why. ``is_template`` keeps the
    page's own image component.
    """

    is_template = True

    def preprocess(self, payload: Any) -> str | None:  # payload: Gradio's ImageData
        return None if payload is None else payload.path


class _AnswerFiles:
    """A fresh folder per answer for its PNGs, handed to Gradio by path; the last ``keep`` are kept.

    Why not hand Gradio the images: it writes an image output to a cache file named after its
    content, in place, so two requests with the same answer (an example clicked twice) rewrite the
    file while the first browser is still downloading it. A path is copied into the cache
    atomically instead. Gradio copies after the handler returns, hence the few kept folders.
    """

    def __init__(self, keep: int = 16) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lseg-app-"))
        atexit.register(shutil.rmtree, self.root, ignore_errors=True)
        self.keep = keep
        self._folders: collections.deque[Path] = collections.deque()
        self._lock = threading.Lock()

    def save(self, **images: Image.Image) -> list[str]:
        with self._lock:
            folder = Path(tempfile.mkdtemp(dir=self.root))
            self._folders.append(folder)
            while len(self._folders) > self.keep:
                shutil.rmtree(self._folders.popleft(), ignore_errors=True)
        paths = [folder / f"{name}.png" for name in images]
        for path, image in zip(paths, images.values()):
            image.save(path, compress_level=1)  # lossless still; 4x faster than the default for +20 % bytes
        return [str(p) for p in paths]


def _label_choices(text: str | None, current: str | None) -> gr.Dropdown:
    try:
        labels = parse_labels(text or "")
    except PredictError:
        labels = []
    return gr.Dropdown(choices=labels, value=current if current in labels else (labels[0] if labels else None))


def build_page(segmenter: Segmenter, presets: dict[str, list[str]], title: str) -> gr.Blocks:
    """The page: image + labels + switches on the left, mask, overlay, heat map and shares on the right."""
    p = segmenter.predictor
    answers = _AnswerFiles()

    def segment(image: str | None, labels: str, multiscale: bool = False, heat_label: str | None = None):
        try:
            r = segmenter.run(image, labels, multiscale, heat_label)
        except InputError as exc:
            print(f"[lseg.app] refused: {exc}", file=sys.stderr, flush=True)
            raise gr.Error(str(exc), print_exception=False) from None
        for note in r.notes:
            gr.Warning(note)
        how = "multi-scale + flip" if multiscale else "single pass"
        lo, hi = r.heat_range
        info = "\n\n".join([f"**{1000 * r.seconds:.0f} ms** inference ({p.device.type}, {p.precision}, {how}, "
                             f"{r.mask.width}×{r.mask.height} px)", *r.notes,
                             f"Heat map: cosine similarity to *{r.heat_label}*, {lo:.3f} (dark) to {hi:.3f} (yellow)"])
        return (*answers.save(mask=r.mask, overlay=r.overlay, heat=r.heat), r.shares, info)

    # delete_cache: every answer leaves three PNGs in Gradio's cache; drop those older than an hour.
    with gr.Blocks(title="LSeg demo", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"## LSeg: type any labels, see the segmentation\n{title}")
        with gr.Row():
            with gr.Column():
                image = _UploadedImage(type="filepath", sources=["upload"], label="Image", elem_id="image")
                labels = gr.Textbox(label="Labels, comma-separated (\"other\" is just another label)",
                                    value=EXAMPLES[0][1], lines=2, elem_id="labels")
                preset = gr.Dropdown(choices=list(presets), value=None, label="Label preset",
                                     elem_id="preset", visible=bool(presets))
                multiscale = gr.Checkbox(label="multi-scale + flip (official protocol: 6 scales × 2, much slower)",
                                         elem_id="multiscale")
                heat_label = gr.Dropdown(choices=parse_labels(EXAMPLES[0][1]), label="Heat map for",
                                         allow_custom_value=True, elem_id="heat-label")
                run = gr.Button("Segment", variant="primary", elem_id="run")
                gr.Examples([[str(ASSETS / f), text] for f, text in EXAMPLES], [image, labels],
                            label="Examples (drawn scenes)")
            with gr.Column():
                overlay = gr.Image(label="Overlay and legend", interactive=False, elem_id="overlay")
                info = gr.Markdown(elem_id="info")
                shares = gr.JSON(label="Share of the pixels (%)", elem_id="shares")
                mask = gr.Image(label="Mask", interactive=False, elem_id="mask")
                heat = gr.Image(label="Similarity heat map", interactive=False, elem_id="heat")
        preset.input(lambda name: ", ".join(presets[name]), preset, labels, api_visibility="private")
        labels.change(_label_choices, [labels, heat_label], heat_label, queue=False, show_progress="hidden",
                      api_visibility="private")
        inputs, outputs = [image, labels, multiscale, heat_label], [mask, overlay, heat, shares, info]
        run.click(segment, inputs, outputs, api_name="segment")
        labels.submit(segment, inputs, outputs, api_visibility="private")
    return page


def serve(segmenter: Segmenter, presets: dict[str, list[str]], title: str, host: str, port: int | None,
          on_ready: Callable[[str, int], None] | None = None) -> None:
    """Start the server and serve until interrupted; ``on_ready(host, port)`` once it listens.

    ``port=None`` takes the first free port from 7860 (Gradio's range).
    """
    page = build_page(segmenter, presets, title)
    page.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    try:
        page.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                    show_error=False, ssr_mode=False, mcp_server=False, theme=_THEME,
                    max_file_size=int(segmenter.limits.max_upload_mb * 2**20))
    except OSError:  # Gradio's message talks about its own API; say it in the demo's flags
        where = f"port {port}" if port else "a port from 7860 to 7959"
        raise InputError(f"cannot serve on {host}, {where}: taken, or not an address of this machine "
                         "(choose another --port / --host)") from None
    if on_ready is not None:
        on_ready(host, page.server_port)
    page.block_thread()  # until Ctrl-C


def run_app(settings: AppSettings, on_ready: Callable[[str, int], None] | None = None) -> None:
    """Load the model once, then serve the page until interrupted."""
    s = settings
    predictor = Predictor(s.checkpoint, s.device, s.precision, s.use_ema)
    title = (f"checkpoint `{Path(s.checkpoint).name}` · {predictor.device.type} · {s.precision}"
             + (" · EMA weights" if s.use_ema else ""))
    serve(Segmenter(predictor, s.limits), label_presets(s.checkpoint), title, s.host, s.port, on_ready)

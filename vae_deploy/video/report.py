"""A self-contained report page of a video run: `report.html` beside the videos it shows.

The page holds the source (the frames the model saw, after fitting) and the reconstruction in two players that
play, pause and seek together, the quality metrics, PSNR / SSIM / flicker per frame plotted over time, and the
model, backend, sizes, latent shape, compression and speed. It needs no network: the CSS and the few lines of
script are inline, the plots are SVG drawn here, and the videos are files beside the page (relative src), so
the folder can be copied or zipped and opened anywhere.

Input: the metrics JSON of a run (`StreamReport.to_dict()`, video/pipeline.py; `evaluate` builds the same keys
per clip) plus a few words about the model. No torch: this runs on the edge install.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vae_deploy.errors import VaeDeployError
from vae_deploy.files import ensure_writable_dir, write_text_atomic

if TYPE_CHECKING:
    from vae_deploy.video.pipeline import StreamReport

REPORT_PAGE = "report.html"
SOURCE_VIDEO = "source.mp4"  # the frames the model saw (fitted to its working size)
DECODED_VIDEO = "decoded.mp4"  # the model's reconstruction of them, at the same size

# Plots: a line per metric over the frame index.
_PLOT_W, _PLOT_H, _PAD_L, _PAD_R, _PAD_T, _PAD_B = 420, 140, 56, 12, 12, 28
_PLOTS = (("psnr", "PSNR per frame", "dB", "#1f6feb"), ("ssim", "SSIM per frame", "", "#2da44e"),
          ("flicker", "flicker per frame (change vs. the source's change)", "", "#cf222e"))

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1f2328;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:24px 0 8px} .sub{color:#59636e;margin:0 0 16px}
.players{display:flex;gap:16px;flex-wrap:wrap} figure{margin:0;flex:0 1 420px;max-width:420px}
video{width:100%;background:#000;image-rendering:pixelated} figcaption{font-size:13px;color:#59636e}
.controls{margin:8px 0;display:flex;gap:10px;align-items:center} .controls input{flex:1;max-width:740px}
.tables{display:flex;gap:32px;flex-wrap:wrap} table{border-collapse:collapse;font-size:14px}
td,th{padding:3px 12px 3px 0;text-align:left;border-bottom:1px solid #d1d9e0} td.v{text-align:right;
font-variant-numeric:tabular-nums} .plots{display:flex;gap:16px;flex-wrap:wrap} svg text{font-size:11px;
fill:#59636e} .plot-title{font-size:13px;margin:4px 0}
"""

# Any player drives the others: play, pause, seek and rate follow it; the slider seeks all of them.
_SCRIPT = """
(function(){
  var videos = Array.prototype.slice.call(document.querySelectorAll('video.synced'));
  var slider = document.getElementById('seek'), button = document.getElementById('playpause');
  var busy = false, fps = Number(document.body.dataset.fps) || 25;
  function mark(t){ document.querySelectorAll('line.now').forEach(function(l){
    var d = l.dataset, frame = Math.min(Math.floor(t * fps + 1e-3), Number(d.last));
    var x = Number(d.x0) + Number(d.width) * frame / Number(d.last);
    l.setAttribute('x1', x); l.setAttribute('x2', x); }); }
  function others(v, f){ if (busy) return; busy = true;
    videos.forEach(function(o){ if (o !== v) f(o); }); busy = false; }
  videos.forEach(function(v){
    v.addEventListener('play', function(){ others(v, function(o){ o.currentTime = v.currentTime; o.play(); });
      button.textContent = 'pause'; });
    v.addEventListener('pause', function(){ others(v, function(o){ o.pause(); });
      button.textContent = 'play'; });
    v.addEventListener('seeked', function(){ others(v, function(o){
      if (Math.abs(o.currentTime - v.currentTime) > 0.02) o.currentTime = v.currentTime; }); });
    v.addEventListener('ratechange', function(){
      others(v, function(o){ o.playbackRate = v.playbackRate; }); });
    v.addEventListener('timeupdate', function(){ if (v !== videos[0] || !v.duration) return;
      slider.value = String(1000 * v.currentTime / v.duration); mark(v.currentTime); });
    v.addEventListener('seeked', function(){ if (v === videos[0]) mark(v.currentTime); });
  });
  button.addEventListener('click', function(){
    if (videos[0].paused) videos.forEach(function(v){ v.play(); });
    else videos.forEach(function(v){ v.pause(); }); });
  slider.addEventListener('input', function(){ var v = videos[0]; if (!v.duration) return;
    var t = v.duration * Number(slider.value) / 1000; videos.forEach(function(o){ o.currentTime = t; }); });
})();
"""


def _number(value, fmt: str, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # "inf" / "nan" as the metrics JSON writes them
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:{fmt}}{unit}"


def _size(wh: Sequence[int] | None) -> str:
    return f"{wh[0]}x{wh[1]}" if wh else "-"


def _finite(values: Sequence) -> list[tuple[int, float]]:
    """(frame index, value) of the plottable values: None (a first frame's flicker) and inf are skipped."""
    out = []
    for i, v in enumerate(values):
        if isinstance(v, (int, float)) and math.isfinite(v):
            out.append((i, float(v)))
    return out


def svg_plot(values: Sequence, name: str, unit: str, color: str) -> str:
    """An inline SVG line plot of `values` over the frame index, with min/max labels on the axes."""
    points = _finite(values)
    w, h = _PLOT_W, _PLOT_H
    inner_w, inner_h = w - _PAD_L - _PAD_R, h - _PAD_T - _PAD_B
    parts = [f'<svg class="plot" data-metric="{name}" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
             f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{name} per frame">',
             f'<rect x="{_PAD_L}" y="{_PAD_T}" width="{inner_w}" height="{inner_h}" fill="#f6f8fa" '
             f'stroke="#d1d9e0"/>']
    if points:
        low, high = min(v for _, v in points), max(v for _, v in points)
        if high - low < 1e-12:  # a flat line: give it a range so it sits in the middle
            low, high = low - 0.5 * (abs(low) or 1.0) * 0.01, high + 0.5 * (abs(high) or 1.0) * 0.01
        last = max(len(values) - 1, 1)

        def x(i: int) -> float:
            return _PAD_L + inner_w * i / last

        def y(v: float) -> float:
            return _PAD_T + inner_h * (1.0 - (v - low) / (high - low))

        line = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in points)
        suffix = f" {unit}" if unit else ""
        parts += [f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{line}"/>',
                  # the players' current frame, moved by the page's script
                  f'<line class="now" data-x0="{_PAD_L}" data-width="{inner_w}" data-last="{last}" '
                  f'x1="{_PAD_L}" x2="{_PAD_L}" y1="{_PAD_T}" y2="{_PAD_T + inner_h}" stroke="#59636e" '
                  f'stroke-dasharray="3,3"/>',
                  f'<text x="{_PAD_L - 4}" y="{_PAD_T + 10}" text-anchor="end">{high:.4g}{suffix}</text>',
                  f'<text x="{_PAD_L - 4}" y="{_PAD_T + inner_h}" text-anchor="end">{low:.4g}{suffix}</text>',
                  f'<text x="{_PAD_L}" y="{h - 8}">frame 0</text>',
                  f'<text x="{_PAD_L + inner_w}" y="{h - 8}" text-anchor="end">frame {len(values) - 1}'
                  f'</text>']
    else:
        parts.append(f'<text x="{w / 2}" y="{h / 2}" text-anchor="middle">not measured</text>')
    parts.append("</svg>")
    return "".join(parts)


def _rows(rows: list[tuple[str, str]], table_id: str) -> str:
    cells = "".join(f'<tr><th>{html.escape(k)}</th><td class="v">{html.escape(v)}</td></tr>' for k, v in rows)
    return f'<table id="{table_id}">{cells}</table>'


def render_report(metrics: dict, model: dict, videos: Sequence[tuple[str, str]], title: str = "") -> str:
    """The page as a string. `metrics`: the run's metrics JSON; `model`: name, kind, fingerprint and
    (optional) bytes, the model folder's size; `videos`: (caption, file name beside the page) for each
    synchronised player."""
    latency = metrics.get("chunk_latency_ms") or {}
    quality = [
        ("PSNR (dB)", _number(metrics.get("psnr"), ".2f")),
        ("SSIM", _number(metrics.get("ssim"), ".4f")),
        ("flicker", _number(metrics.get("flicker"), ".4f")),
        ("PSNR at the source size (dB)", _number(metrics.get("psnr_source"), ".2f")),
        ("compression ratio", _number(metrics.get("compression_ratio"), ".1f", "x")),
        ("speed (frames/s)", _number(metrics.get("frames_per_s"), ".1f")),
        ("frames", _number(metrics.get("frames"), "d")),
    ]
    if latency:
        quality.append((f"chunk of {metrics.get('chunk')} frames, p50 / p95 (ms)",
                        f"{latency['p50']:.0f} / {latency['p95']:.0f}"))
    latent = metrics.get("latent_shape") or []
    size_bytes = model.get("bytes")
    setup = [
        ("model", str(model.get("name", "-"))),
        ("kind", str(model.get("kind") or metrics.get("model_kind") or "-")),
        ("fingerprint", str(model.get("fingerprint") or metrics.get("model_fingerprint") or "-")[:16]),
        ("model folder size", f"{size_bytes / 1e6:.2f} MB" if size_bytes else "-"),
        ("backend", str(metrics.get("backend") or "-")),
        ("source size", _size(metrics.get("source_size"))),
        ("working size (metrics, videos)", _size(metrics.get("working_size"))),
        ("model input size", _size(metrics.get("model_size"))),
        ("latent shape per frame (C, h, w)", " x ".join(str(d) for d in latent) if latent else "-"),
        ("frame rate", _number(metrics.get("fps"), ".3g", " fps")),
        ("fit", str(metrics.get("fit") or "-")),
    ]
    per_frame = metrics.get("per_frame") or {}
    plots = "".join(
        f'<div><p class="plot-title">{html.escape(label)}</p>'
        f'{svg_plot(per_frame.get(key, []), key, unit, color)}</div>' for key, label, unit, color in _PLOTS)
    players = "".join(
        f'<figure><video class="synced" src="{html.escape(name)}" preload="auto" muted playsinline controls>'
        f'</video><figcaption>{html.escape(caption)}</figcaption></figure>' for caption, name in videos)
    # The heading names the file or folder read (the line below says all); a camera or a stream by its words.
    path = metrics.get("source_path")
    name = Path(path).name if path else str(metrics.get("source", ""))
    heading = html.escape(title or f"vae-deploy report: {name}")
    source = html.escape(str(metrics.get("source", "")))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>{heading}</title>
<style>{_STYLE}</style></head>
<body data-fps="{metrics.get('fps') or 25}">
<h1>{heading}</h1>
<p class="sub">source: {source}; quality measured at the working size, on the frames shown below</p>
<section id="videos"><div class="players">{players}</div>
<div class="controls"><button id="playpause" type="button">play</button>
<input id="seek" type="range" min="0" max="1000" value="0" aria-label="seek both videos"></div></section>
<section class="tables"><div><h2>Quality and speed</h2>{_rows(quality, "metrics")}</div>
<div><h2>Model and sizes</h2>{_rows(setup, "model")}</div></section>
<h2>Per frame</h2><section class="plots" id="plots">{plots}</section>
<script>{_SCRIPT}</script>
</body></html>
"""


def check_report_dir(folder: Path) -> Path:
    """Refuse, before any work, a report folder that is a file or cannot be written (one `error:` line)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise VaeDeployError(f"cannot write the report to {folder}: it is a file; give a folder")
    return ensure_writable_dir(folder)


def model_summary(model_dir: Path, report: StreamReport) -> dict:
    """The model as the page names it: its folder's name, kind, fingerprint and the bytes of its files."""
    model_dir = Path(model_dir)
    files = [p for p in model_dir.rglob("*") if p.is_file()] if model_dir.is_dir() else []
    return {"name": model_dir.name, "kind": report.model_kind, "fingerprint": report.model_fingerprint,
            "bytes": sum(p.stat().st_size for p in files)}


def write_report(folder: Path, metrics: StreamReport | dict, model: dict,
                 videos: Sequence[tuple[str, str]] = (("source (the frames the model saw)", SOURCE_VIDEO),
                                                      ("reconstruction (decoded, same size)", DECODED_VIDEO)),
                 title: str = "", page: str = REPORT_PAGE) -> Path:
    """Write `page` into `folder` atomically from a run's report (or, `evaluate`, a dict of the same keys);
    the videos named must lie beside it. Returns its path."""
    if not isinstance(metrics, dict):
        metrics = metrics.to_dict()
    path = Path(folder) / page
    write_text_atomic(path, render_report(metrics, model, videos, title))
    return path

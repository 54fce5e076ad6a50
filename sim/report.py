"""The main job's report: figures measured on the RTL and the golden model, as Markdown and HTML.

``write_report`` turns sections (title, Markdown body, PNG files) into ``report.md`` and one
self-contained ``index.html`` (PNGs inlined as data URIs, so the page can be mailed or archived
alone). The measuring functions (error of the hardware numerics per layer and scale, attention
cycles against block density, top-k cycles against k) and the plots live here too; each returns
plain rows that the report prints as tables beside the plot.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["linear_error_map", "attention_density_sweep", "plot_error_map", "plot_attention_density",
           "plot_topk_k", "plot_image_grid", "markdown_to_html", "write_report", "rows_table"]


# ------------------------------------------------------------------------------------ measuring
def linear_error_map(var, accel="mxfp4", seed=0, top_k=16, top_p=0.95):
    """Relative Frobenius error of every low-bit linear against float64, per (scale, layer).

    One generation with ``accel``; each quantized linear's output (the golden MX dot products,
    what hw/fp's dot unit computes) is compared with float64 ``x @ W^T + b`` on the same input.
    Returns ``{(si, layer name): error}``.
    """
    from golden.accel.hooks import AcceleratedHooks
    from golden.accel.infer import accelerated_infer

    errors = {}

    class ErrorProbe(AcceleratedHooks):
        def linear(self, layer, x, bias, ctx):
            y = super().linear(layer, x, bias, ctx)
            name = getattr(layer, "hook_name", "")
            if ctx is not None and ctx.mode == "ar" and self._quantized(name, layer.weight.shape[1]):
                ref = F.linear(x.double(), layer.weight.double(), None if bias is None else bias.double())
                errors[(ctx.si, name)] = float((y.double() - ref).norm() / ref.norm().clamp_min(1e-300))
            return y

    accelerated_infer(var, 1, 0, g_seed=seed, cfg=4.0, top_k=top_k, top_p=top_p, hooks=ErrorProbe(var.cfg, accel))
    return errors


def attention_density_sweep(params, Lq=32, Lk=64, densities=(1.0, 0.75, 0.5, 0.25), seed=0):
    """Attention core cycles against block density (sim.bench_attn.bench on ``params``)."""
    from sim.bench_attn import bench
    return bench(Lq=Lq, Lk=Lk, seed=seed, densities=densities, params=params)


# ------------------------------------------------------------------------------------ plots
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on CI machines
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _cycles_axes(ax, xlabel, title, legend_size):
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cycles")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=legend_size)


def plot_error_map(errors, path, title="MXFP4 linear layers: relative error vs float64"):
    """Heat map layer x scale of ``linear_error_map`` output (log10 colour)."""
    plt = _pyplot()
    layers = sorted({name for _, name in errors}, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])
    scales = sorted({si for si, _ in errors})
    grid = torch.full((len(layers), len(scales)), float("nan"))
    for (si, name), e in errors.items():
        grid[layers.index(name), scales.index(si)] = math.log10(max(e, 1e-12))
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(scales), 1.2 + 0.3 * len(layers)))
    im = ax.imshow(grid.numpy(), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(scales)), [str(s) for s in scales])
    ax.set_yticks(range(len(layers)), layers, fontsize=7)
    ax.set_xlabel("scale index")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="log10 relative error")
    return _save(fig, path)


def plot_attention_density(rows, path):
    plt = _pyplot()
    kept = [r["kept"] / r["blocks"] for r in rows]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(kept, [r["cycles"] for r in rows], "o-", label="measured (RTL)")
    ax.plot(kept, [r["floor"] for r in rows], "k--", label="floor: 1 (query, key) pair / cycle")
    _cycles_axes(ax, "kept (query tile, key block) fraction", "attention core: cycles against block density", 7)
    return _save(fig, path)


def plot_topk_k(rows, n, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for unordered, label in ((False, "sorted (descending)"), (True, "unordered")):
        pts = [(r["k"], r["cycles"]) for r in rows if r["unordered"] == unordered]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    ax.axhline(3 * n + 64, color="C0", ls=":", lw=1, label="goal sorted 3N+64")
    ax.axhline(2 * n + 64, color="C1", ls=":", lw=1, label="goal unordered 2N+64")
    ax.axhline(n, color="k", ls="--", lw=1, label="floor N (one read)")
    ax.set_xscale("log")
    _cycles_axes(ax, "k", f"top-k core: cycles against k (N = {n}, P = 1)", 6)
    return _save(fig, path)


def plot_image_grid(images, path):
    """``images``: list of (title, tensor (3, H, W) in [0, 1])."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(images), figsize=(2.6 * len(images), 2.9))
    for ax, (title, img) in zip(axes, images):
        ax.imshow(img.detach().float().clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return _save(fig, path)


# ------------------------------------------------------------------------------------ writing
def rows_table(rows, columns):
    """Markdown table of dict rows; ``columns``: list of (header, key or callable)."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [str(f(r) if callable(f) else r.get(f, "")) for _, f in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _inline(text):
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown_to_html(md):
    """The Markdown this report writes (headings, tables, lists, code blocks, paragraphs) as HTML."""
    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre>" + html.escape("\n".join(lines[i + 1:j])) + "</pre>")
            i = j + 1
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-+:?", c) for c in cells if c):
                    rows.append(cells)
                i += 1
            head, body = rows[0], rows[1:]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        elif line.strip():
            j = i
            while j < len(lines) and lines[j].strip() and not lines[j].startswith(("#", "|", "- ", "```")):
                j += 1
            out.append("<p>" + _inline(" ".join(lines[i:j])) + "</p>")
            i = j
        else:
            i += 1
    return "\n".join(out)


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse;margin:.6em 0;font-size:.85em}td,th{border:1px solid #ccc;"
          "padding:.25em .5em;text-align:left}th{background:#f2f2f2}code,pre{background:#f6f6f6}"
          "pre{padding:.6em;overflow-x:auto}img{max-width:100%;margin:.4em 0;border:1px solid #eee}")


def write_report(out_dir, title, sections):
    """Write ``report.md`` and ``index.html`` into ``out_dir``; returns (md path, html path).

    ``sections``: list of (heading, markdown body, list of PNG paths inside ``out_dir``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_parts, html_parts = [f"# {title}\n"], [f"<h1>{html.escape(title)}</h1>"]
    for heading, body, pngs in sections:
        md_parts.append(f"## {heading}\n\n{body.strip()}\n")
        html_parts.append(f"<h2>{html.escape(heading)}</h2>\n{markdown_to_html(body)}")
        for png in pngs:
            png = Path(png)
            md_parts.append(f"![{png.stem}]({png.name})\n")
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            html_parts.append(f'<img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}">')
    md_path, html_path = out_dir / "report.md", out_dir / "index.html"
    md_path.write_text("\n".join(md_parts))
    html_path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                         f"<style>{_STYLE}</style></head><body>\n" + "\n".join(html_parts) + "\n</body></html>\n")
    return md_path, html_path

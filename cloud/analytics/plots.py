"""The response's plots as base64 PNGs: data drawn by matplotlib's Agg canvas, text by PIL.

Speed over ornament, so that five plots fit in about a tenth of a second: small figures
(400 x 240 px), at most a few hundred points per line, no legends (the titles say what
the colours mean), and no matplotlib ticks. matplotlib spends most of a small plot's time
on tick and text objects (about 40 ms a plot here); instead the axes have no locators,
the grid is one line collection at "nice" values, and tick labels, titles and axis labels
are drawn into the rendered image with PIL's FreeType text (tens of microseconds each).
Figures use the object API, so requests in threads share no pyplot state; fonts are
built per call. matplotlib is imported on first use.
"""

from __future__ import annotations

import base64
import functools
import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import ImageFont

__all__ = ["render_plots"]

_WIDTH, _HEIGHT, _DPI = 400, 240, 80  # px
_AXES = (0.14, 0.15, 0.83, 0.69)  # left, bottom, width, height (figure fractions)
_POINTS = 200  # per line at most
_INK = (40, 40, 40)


def render_plots(plot_data: dict[str, Any], sections: dict[str, dict[str, Any]]) -> None:
    """Fill the ``*_plot`` keys of ``sections`` from ``Analysis.plot_data``."""
    fade = sections["capacity_fade"]
    profile = sections["voltage_profile"]
    canvas = _Canvas()  # one figure, cleared between plots
    fade["capacity_plot"] = _capacity(canvas, plot_data["capacity"])
    if plot_data["profiles"]:
        profile["voltage_profile_plot"] = _profiles(canvas, plot_data["profiles"])
    if any(c["capacities"] for c in plot_data["dvdq"]):
        profile["differential_voltage_plot"] = _dvdq(canvas, plot_data["dvdq"])
    if plot_data["ic"] is not None:
        profile["incremental_capacity_plot"] = _incremental(canvas, plot_data["ic"])
    if plot_data["temperature"] is not None and plot_data["temperature"]["q"].size:
        sections["temperature_analysis"]["temperature_vs_capacity_plot"] = _temperature(
            canvas, plot_data["temperature"]
        )


# --- the chart: matplotlib data, PIL text ---------------------------------------------


@functools.cache
def _font_bytes() -> bytes:
    from matplotlib import font_manager

    with open(font_manager.findfont("DejaVu Sans"), "rb") as file:
        return file.read()


class _Fonts:
    """FreeType faces for one call (PIL fonts are not shared between threads)."""

    def __init__(self) -> None:
        from PIL import ImageFont

        data = _font_bytes()
        self.tick = ImageFont.truetype(io.BytesIO(data), 9)
        self.label = ImageFont.truetype(io.BytesIO(data), 10)
        self.title = ImageFont.truetype(io.BytesIO(data), 11)


class _Canvas:
    """One figure and axes for a call's plots: data by matplotlib, the rest by PIL."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import NullLocator

        self.fonts = _Fonts()
        self.fig = Figure(figsize=(_WIDTH / _DPI, _HEIGHT / _DPI), dpi=_DPI)
        FigureCanvasAgg(self.fig)
        self.ax = self.fig.add_axes(_AXES)
        for axis in (self.ax.xaxis, self.ax.yaxis):
            axis.set_major_locator(NullLocator())
            axis.set_minor_locator(NullLocator())
        for spine in self.ax.spines.values():
            spine.set_linewidth(0.8)
            spine.set_color("#555555")
        self._xs: list[float] = []
        self._ys: list[float] = []

    def _extent(self, x: Any, y: Any) -> None:
        for values, into in ((x, self._xs), (y, self._ys)):
            if values is None:
                continue
            arr = np.asarray(values, dtype=np.float64)
            arr = arr[np.isfinite(arr)]
            if arr.size:
                into += [float(arr.min()), float(arr.max())]

    def line(self, x: Any, y: Any, fmt: str = "-", **style: Any) -> None:
        self._extent(x, y)
        self.ax.plot(x, y, fmt, **style)

    def scatter(self, x: Any, y: Any, **style: Any) -> None:
        self._extent(x, y)
        self.ax.scatter(x, y, **style)

    def hline(self, y: float, **style: Any) -> None:
        self._extent(None, [y])
        self.ax.axhline(y, **style)

    def render(self, *, title: str, x: str, y: str) -> str:
        """The PNG (base64) of what was drawn since the last render; then clears."""
        try:
            return self._render(title, x, y)
        finally:
            for artist in [*self.ax.lines, *self.ax.collections]:
                artist.remove()
            self._xs, self._ys = [], []

    def _render(self, title: str, x_label: str, y_label: str) -> str:
        from matplotlib.collections import LineCollection
        from PIL import Image, ImageDraw

        ax, fonts = self.ax, self.fonts
        x0, x1 = _limits(self._xs)
        y0, y1 = _limits(self._ys)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        xs, x_text = _ticks(x0, x1)
        ys, y_text = _ticks(y0, y1)
        grid = [[(v, y0), (v, y1)] for v in xs] + [[(x0, v), (x1, v)] for v in ys]
        ax.add_collection(
            LineCollection(grid, colors="#dddddd", linewidths=0.6, zorder=0), autolim=False
        )
        self.fig.canvas.draw()
        rgba = np.asarray(self.fig.canvas.buffer_rgba())  # type: ignore[attr-defined]
        image = Image.fromarray(rgba[:, :, :3])
        draw = ImageDraw.Draw(image)
        # axes corners in image pixels (PIL's y runs down)
        left, top = _WIDTH * _AXES[0], _HEIGHT * (1 - _AXES[1] - _AXES[3])
        right, bottom = left + _WIDTH * _AXES[2], _HEIGHT * (1 - _AXES[1])
        for value, text in zip(xs, x_text, strict=True):
            px = left + (value - x0) / (x1 - x0) * (right - left)
            draw.line([(px, bottom), (px, bottom + 3)], fill=_INK)
            draw.text((px, bottom + 4), text, fill=_INK, font=fonts.tick, anchor="mt")
        for value, text in zip(ys, y_text, strict=True):
            py = bottom - (value - y0) / (y1 - y0) * (bottom - top)
            draw.line([(left - 3, py), (left, py)], fill=_INK)
            draw.text((left - 5, py), text, fill=_INK, font=fonts.tick, anchor="rm")
        draw.text(
            ((left + right) / 2, _HEIGHT - 3), x_label, fill=_INK, font=fonts.label, anchor="md"
        )
        draw.text((_WIDTH / 2, 5), title, fill=(0, 0, 0), font=fonts.title, anchor="mt")
        _vertical_text(image, y_label, fonts.label, centre_y=(top + bottom) / 2)
        buffer = io.BytesIO()
        image.save(buffer, format="png", compress_level=1)
        return base64.b64encode(buffer.getvalue()).decode("ascii")


def _limits(values: list[float]) -> tuple[float, float]:
    """The data range with 5 % margins (a flat or empty range gets a unit span)."""
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    span = high - low
    if span <= 0:
        span = abs(low) * 0.1 or 1.0
        return low - span / 2, high + span / 2
    return low - 0.05 * span, high + 0.05 * span


def _ticks(low: float, high: float) -> tuple[list[float], list[str]]:
    """Nice tick values in [low, high] and their labels, with as many decimals as the
    values need (0.025 keeps three)."""
    from matplotlib.ticker import MaxNLocator

    values = [float(v) for v in MaxNLocator(5).tick_values(low, high) if low <= v <= high]
    scale = max((abs(v) for v in values), default=1.0) or 1.0
    decimals = next(
        (d for d in range(7) if all(abs(round(v, d) - v) <= 1e-9 * scale for v in values)), 6
    )
    return values, [f"{v:.{decimals}f}".replace("-", "\u2212") for v in values]


def _vertical_text(image: Any, text: str, font: ImageFont.FreeTypeFont, *, centre_y: float) -> None:
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text)
    stamp = Image.new("L", (int(right - left) + 2, int(bottom - top) + 2), 0)
    ImageDraw.Draw(stamp).text((1 - left, 1 - top), text, fill=255, font=font)
    stamp = stamp.rotate(90, expand=True)
    y = int(centre_y - stamp.height / 2)
    image.paste(_INK, (3, y, 3 + stamp.width, y + stamp.height), stamp)


def _thin(*arrays: Any, points: int = _POINTS) -> list[Any]:
    n = len(arrays[0])
    if n <= points:
        return list(arrays)
    keep = np.linspace(0, n - 1, points).astype(np.int64)
    return [np.asarray(a)[keep] for a in arrays]


def _colours(count: int) -> list[Any]:
    from matplotlib import colormaps

    return list(colormaps["viridis"](np.linspace(0.85, 0.0, max(count, 1))))


# --- the plots -----------------------------------------------------------------------


def _capacity(canvas: _Canvas, data: dict[str, Any]) -> str:
    cycles, charge, discharge = _thin(data["cycles"], data["charge"], data["discharge"])
    canvas.line(cycles, charge, ".", color="tab:blue", markersize=2.5)
    canvas.line(cycles, discharge, ".", color="tab:red", markersize=2.5)
    if data["fit"] is not None:
        grid, curve = data["fit"]
        canvas.line(grid, curve, "-", color="black", linewidth=0.9)
        canvas.hline(data["eol_capacity"], color="grey", linestyle="--", linewidth=0.9)
    return canvas.render(
        title="Capacity: charge blue, discharge red, fit and EOL black",
        x="Cycle",
        y="Capacity (Ah)",
    )


def _span(first: int, last: int) -> str:
    return f"cycles {first} (light) to {last} (dark)"


def _profiles(canvas: _Canvas, curves: list[dict[str, Any]]) -> str:
    for colour, curve in zip(_colours(len(curves)), curves, strict=True):
        for phase, style in (("charge", "-"), ("discharge", "--")):
            if phase in curve:
                q, v = curve[phase]
                canvas.line(q, v, style, color=colour, linewidth=1)
    span = _span(curves[0]["cycle_number"], curves[-1]["cycle_number"])
    return canvas.render(
        title=f"Voltage, {span}; discharge dashed", x="Capacity (Ah)", y="Voltage (V)"
    )


def _dvdq(canvas: _Canvas, curves: list[dict[str, Any]]) -> str:
    shown = [c for c in curves if c["capacities"]]
    for colour, curve in zip(_colours(len(shown)), shown, strict=True):
        q = np.array(curve["capacities"], dtype=np.float64)
        slope = np.array([np.nan if s is None else s for s in curve["dv_dq"]], dtype=np.float64)
        canvas.line(q, slope, color=colour, linewidth=1)
    span = _span(shown[0]["cycle_number"], shown[-1]["cycle_number"])
    return canvas.render(
        title=f"Differential voltage (discharge), {span}",
        x="Capacity (Ah)",
        y="\u2212dV/dQ (V/Ah)",
    )


def _incremental(canvas: _Canvas, data: dict[str, Any]) -> str:
    voltage = data["voltage"]
    for colour, (_, curve) in zip(_colours(len(data["curves"])), data["curves"], strict=True):
        v, c = _thin(voltage, curve)
        canvas.line(v, c, color=colour, linewidth=1)
    for _, peak_v, peak_h in data["tracks"]:
        v, h = _thin(peak_v, peak_h, points=60)
        canvas.line(v, h, ".", color="tab:red", markersize=2)
    span = _span(data["curves"][0][0], data["curves"][-1][0])
    return canvas.render(
        title=f"dQ/dV (discharge), {span}; peaks red", x="Voltage (V)", y="dQ/dV (Ah/V)"
    )


def _temperature(canvas: _Canvas, data: dict[str, Any]) -> str:
    t, q, cycles = _thin(data["t_mean"], data["q"], data["cycles"])
    canvas.scatter(t, q, c=cycles, cmap="viridis_r", s=5)
    return canvas.render(
        title="Temperature vs capacity; colour: cycle, light early",
        x="Mean cycle temperature (\u00b0C)",
        y="Discharge capacity (Ah)",
    )

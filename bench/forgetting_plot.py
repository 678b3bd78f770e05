"""The forgetting bench's figure: target accuracy (x) against retention (y), one path per condition
through its epochs (mean over seeds), base and sft marked, drawn with pillow. Up and to the right is
better: the dashed lines through sft's best-validation point split the plane into what forgets less
(above), learns more (right of it), both, or neither."""

from __future__ import annotations

from pathlib import Path

COLORS = {"base": (40, 40, 40), "sft": (214, 39, 40), "stm": (31, 119, 180), "stm-22": (23, 190, 207),
          "stm-keep-shared": (148, 103, 189),
          "regen": (44, 160, 44), "soft": (255, 127, 14)}
OTHER_COLORS = [(140, 86, 75), (227, 119, 194), (127, 127, 127)]


def nice_step(span: float) -> float:
    for step in (0.5, 1, 2, 5, 10, 20, 25, 50):
        if span / step <= 8:
            return float(step)
    return 100.0


def axis_range(values: list[float]) -> tuple[float, float, float]:
    """(low, high, step): round ticks with a margin around the values, at least 4 points wide."""
    low, high = min(values), max(values)
    middle, half = (low + high) / 2, max(high - low, 4.0) / 2 * 1.15
    step = nice_step(2 * half)
    return (middle - half) // step * step, ((middle + half) // step + 1) * step, step


def dashed(draw, start, end, color, dash: int = 6) -> None:
    (x0, y0), (x1, y1) = start, end
    length = max(abs(x1 - x0), abs(y1 - y0))
    for offset in range(0, int(length), 2 * dash):
        a, b = offset / length, min(offset + dash, length) / length
        draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)], fill=color, width=1)


def plot(conditions: dict[str, list[tuple[float, float]]], best: dict[str, int], path: Path, title: str) -> None:
    """`conditions`: per condition, its (target %, retention %) per epoch, epoch 1 first (base: one
    point); `best`: per condition, the index of its best-validation epoch (drawn larger)."""
    from PIL import Image, ImageDraw, ImageFont

    width, height, left, right, top, bottom = 960, 640, 80, 210, 70, 70
    points = [point for path_points in conditions.values() for point in path_points]
    x_low, x_high, x_step = axis_range([p[0] for p in points])
    y_low, y_high, y_step = axis_range([p[1] for p in points])
    plot_w, plot_h = width - left - right, height - top - bottom

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_low) / (x_high - x_low) * plot_w, top + plot_h - (y - y_low) / (y_high - y_low) * plot_h)

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    draw.text((left, 12), title, fill="black", font=font)
    draw.text((left, 40), "retention: multiple choice on what the base model knew (%)", fill="black", font=small)
    draw.text((left + plot_w / 2 - 150, height - 36), "target: exact answers on the test split (%)", fill="black", font=font)
    tick = x_low
    while tick <= x_high + 1e-9:
        x, _ = at(tick, y_low)
        draw.line([(x, top), (x, top + plot_h)], fill=(235, 235, 235))
        draw.text((x - 10, top + plot_h + 6), f"{tick:g}", fill="black", font=small)
        tick += x_step
    tick = y_low
    while tick <= y_high + 1e-9:
        _, y = at(x_low, tick)
        draw.line([(left, y), (left + plot_w, y)], fill=(235, 235, 235))
        draw.text((left - 40, y - 7), f"{tick:g}", fill="black", font=small)
        tick += y_step
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    if "sft" in conditions:  # the lines a condition must clear to beat sft
        x, y = at(*conditions["sft"][best.get("sft", -1)])
        dashed(draw, (x, top), (x, top + plot_h), COLORS["sft"])
        dashed(draw, (left, y), (left + plot_w, y), COLORS["sft"])
    # sft last, as a ring, so that the conditions it would hide stay visible under it.
    order = [name for name in conditions if name != "sft"] + [name for name in conditions if name == "sft"]
    others = iter(OTHER_COLORS)
    colors = {name: COLORS.get(name) or next(others, (0, 0, 0)) for name in conditions}
    for name in order:
        color = colors[name]
        placed = [at(*point) for point in conditions[name]]
        if len(placed) > 1:
            draw.line(placed, fill=color, width=2)
        for epoch, (x, y) in enumerate(placed):
            radius = 8 if epoch == best.get(name, -1) or name == "base" else 4
            box = [x - radius, y - radius, x + radius, y + radius]
            if name == "base":
                draw.rectangle(box, fill=color)
            elif name == "sft":
                draw.ellipse(box, outline=color, width=3)
            else:
                draw.ellipse(box, fill=color)
            if len(placed) > 1:
                draw.text((x + 7, y - 17), str(epoch + 1), fill=color, font=small)
    legend_y = top
    for name in conditions:
        box = [width - right + 20, legend_y + 4, width - right + 32, legend_y + 16]
        if name == "sft":
            draw.ellipse(box, outline=colors[name], width=2)
        else:
            (draw.rectangle if name == "base" else draw.ellipse)(box, fill=colors[name])
        draw.text((width - right + 40, legend_y + 2), name, fill="black", font=font)
        legend_y += 24
    draw.text((width - right + 20, legend_y + 10),
              "numbers: epochs\nlarge: best-validation\nepoch\ndashed: sft's; above\nforgets less, right\nlearns more",
              fill=(90, 90, 90), font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)

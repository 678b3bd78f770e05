"""The forgetting bench's figure: target accuracy (x) against retention (y), one path per condition
through its epochs (mean over seeds), base and sft marked, drawn with pillow. Up and to the right is
better: a condition above sft's path forgets less, one to its right learns more."""

from __future__ import annotations

from pathlib import Path

COLORS = {"base": (40, 40, 40), "sft": (214, 39, 40), "stm": (31, 119, 180), "stm-22": (23, 190, 207),
          "regen": (44, 160, 44), "soft": (255, 127, 14), "stm-keep-shared": (148, 103, 189)}
OTHER_COLOR = (140, 86, 75)


def nice_step(span: float) -> float:
    for step in (1, 2, 5, 10, 20, 25, 50):
        if span / step <= 8:
            return float(step)
    return 100.0


def plot(conditions: dict[str, list[tuple[float, float]]], best: dict[str, int], path: Path, title: str) -> None:
    """`conditions`: per condition, its (target %, retention %) per epoch, epoch 1 first (base: one
    point); `best`: per condition, the index of its best-validation epoch (drawn larger)."""
    from PIL import Image, ImageDraw, ImageFont

    width, height, left, right, top, bottom = 900, 620, 80, 200, 50, 70
    points = [point for path_points in conditions.values() for point in path_points]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_step, y_step = nice_step(max(xs) - min(xs) + 1), nice_step(max(ys) - min(ys) + 1)
    x_low, x_high = (min(xs) // x_step) * x_step, (max(xs) // x_step + 1) * x_step
    y_low, y_high = (min(ys) // y_step) * y_step, (max(ys) // y_step + 1) * y_step
    plot_w, plot_h = width - left - right, height - top - bottom

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_low) / (x_high - x_low) * plot_w, top + plot_h - (y - y_low) / (y_high - y_low) * plot_h)

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    draw.text((left, 14), title, fill="black", font=font)
    tick = x_low
    while tick <= x_high + 1e-9:
        x, _ = at(tick, y_low)
        draw.line([(x, top), (x, top + plot_h)], fill=(232, 232, 232))
        draw.text((x - 10, top + plot_h + 6), f"{tick:g}", fill="black", font=small)
        tick += x_step
    tick = y_low
    while tick <= y_high + 1e-9:
        _, y = at(x_low, tick)
        draw.line([(left, y), (left + plot_w, y)], fill=(232, 232, 232))
        draw.text((left - 34, y - 7), f"{tick:g}", fill="black", font=small)
        tick += y_step
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    draw.text((left + plot_w / 2 - 150, height - 40), "target: exact answers on the test split (%)", fill="black", font=font)
    draw.text((8, top - 28), "retention: multiple choice (%)", fill="black", font=font)
    legend_y = top
    for name, path_points in conditions.items():
        color = COLORS.get(name, OTHER_COLOR)
        placed = [at(*point) for point in path_points]
        if len(placed) > 1:
            draw.line(placed, fill=color, width=2)
        for epoch, (x, y) in enumerate(placed):
            radius = 8 if epoch == best.get(name, -1) or name == "base" else 4
            if name == "base":
                draw.rectangle([x - radius, y - radius, x + radius, y + radius], fill=color)
            else:
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)
            if len(placed) > 1:
                draw.text((x + 6, y - 16), str(epoch + 1), fill=color, font=small)
        draw.rectangle([width - right + 20, legend_y + 4, width - right + 32, legend_y + 16], fill=color)
        draw.text((width - right + 40, legend_y + 2), name, fill="black", font=font)
        legend_y += 24
    draw.text((width - right + 20, legend_y + 10), "numbers: epochs;\nlarge: best\nvalidation epoch", fill=(90, 90, 90),
              font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)

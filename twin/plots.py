"""Plots for the reports: matplotlib without a display, PNG bytes without a timestamp or software tag
(the same bytes on every rebuild)."""
from __future__ import annotations

import io


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def png(fig, dpi: int = 100) -> bytes:
    """The figure laid out tight, as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    pyplot().close(fig)
    return buf.getvalue()

"""`python -m workbench.app.streamlit_run run ENTRY [flags]`: `streamlit run`, with torch imported meanwhile.

Streamlit runs the app's script in its own server process, so a module imported there once serves every session.
`kdw app` starts the server through this module, which imports torch and plotly in a background thread while the
server starts and waits for its first browser: the first page no longer spends about a second on that import
(benchmarks/first_load.py; docs/performance.md, section 8). Streamlit's own modules are imported before the thread
starts, so the two threads never import the same module in opposite orders.
"""

from __future__ import annotations

import sys
import threading

WARM = ("torch", "plotly.graph_objects")  # what the first page needs and Streamlit's start never imports


def _warm() -> None:
    import importlib

    for name in WARM:
        try:
            importlib.import_module(name)
        except Exception:  # the page imports it again and says what is wrong
            return


def main(argv: list[str]) -> int:
    from streamlit.web import cli

    threading.Thread(target=_warm, name="kdw-warm-imports", daemon=True).start()
    sys.argv = ["streamlit", *argv]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

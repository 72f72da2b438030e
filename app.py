"""KD Workbench: the Streamlit entry point for `streamlit run app.py` in a clone; `kdw app` runs the same
workbench/app/entry.py from an installed wheel."""

from workbench.app.entry import main

main()

"""KD Workbench: an exact knowledge-distillation core with a Streamlit app and Jupyter widgets.

The objective, with α weighting the distillation term (docs/conventions.md):

    L = (1 − α)·CE(z_s, y) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))
"""

__version__ = "0.1.0"

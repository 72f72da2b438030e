"""Vanilla KD's objective as text, with no torch to import: the CLI's help and the app's sidebar show it.

α weights the distillation term (docs/conventions.md), so α = 0 is the scratch baseline and α = 1 is pure
distillation; torchdistill and the Keras example put their α on the cross-entropy instead.
"""

OBJECTIVE = "L = (1 − α)·CE(z_s, y) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))"

"""Meeting the evaluation ecosystem: our tasks out to lm-evaluation-harness and
lmms-eval (``export``), their per-sample logs and VLMEvalKit's prediction sheets
in (``logs``, ``matching``, read by the ``predictions`` system).

Nothing here imports lm-eval or lmms-eval; the exported folders run in their
environments, and their files are read as plain JSON and spreadsheets.
"""

"""Reading the evaluation ecosystem's outputs: lm-evaluation-harness's and lmms-eval's
per-sample logs and VLMEvalKit's prediction sheets (``logs``, ``matching``, read by the
``predictions`` system); ``gold`` writes a gold answer as text for both directions.

These sit beside systems and tasks; the way out (our tasks as their task files) is
:mod:`harness.export`. Nothing here imports lm-eval or lmms-eval: their outputs are
read as plain JSON and spreadsheets.
"""

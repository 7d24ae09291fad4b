"""Meeting the evaluation ecosystem: our tasks out to lm-evaluation-harness and
lmms-eval (``export``), their per-sample logs and VLMEvalKit's prediction sheets
in (``logs``, ``matching``, read by the ``predictions`` system).

Layers: ``logs``, ``matching`` and ``gold`` sit beside systems and tasks (the
predictions system imports them); ``export`` sits above systems (it takes its
prompts from a direct-VLM system). ``task_utils`` is shipped to the other
harnesses and imported by none of ours. Nothing here imports lm-eval or
lmms-eval: their task files are written as text and their outputs read as plain
JSON and spreadsheets.
"""

"""Our tasks out to lm-evaluation-harness and lmms-eval (``python -m harness export``).

It sits above systems and tasks (it takes its prompts from a direct-VLM system);
the way back, reading their logs, is :mod:`harness.interop`. ``task_utils`` is
shipped to the other harnesses and imported by none of ours.
"""

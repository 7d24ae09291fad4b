"""Evaluation runs spread over a Ray cluster: one run, many GPUs and nodes, the same records.

``python -m harness run ... --ray [ADDRESS]`` gives the runner a
:class:`~harness.distributed.system.RaySystem` in place of the configured system; the rest
of the run (records, resume, scores, results) is the runner's, unchanged. Modules:
``settings`` (what is asked for), ``shipping`` (samples that travel), ``replica`` (one
replica in a Ray actor), ``shared`` (the caches and API rate limits the replicas share),
``system`` (handing out the samples). Ray is imported only when a run asks for it.
"""

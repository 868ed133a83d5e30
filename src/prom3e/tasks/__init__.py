"""Evaluation tasks: retrieval (modality inversion), zero-shot, probing, uncertainty, gap.

``prom3e.tasks.evaluate.evaluate`` runs them all and writes the report; the modules
``retrieval``, ``zeroshot``, ``probe``, ``uncertainty`` and ``gap`` work on plain arrays;
``oracle.OracleFuser`` is a reference model for checking a pipeline. See docs/EVALUATION.md.
"""

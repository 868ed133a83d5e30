"""The method comparison (`prom3e benchmark`): protocols, validation-tuned fitting, scoring,
result store and report, over the methods of :mod:`prom3e.methods`."""

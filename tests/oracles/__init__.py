"""Oracles: slower, plainer implementations the tests compare the job's code with, bit for bit.

* ``windows_oracle`` -- windowing of one application at a time (open windows,
  late events, duplicates, same-instant conflicts), over the aggregation
  registry (jobs/aggregations.py);
* ``stateful_step_oracle`` -- the per-bucket step, application by application,
  over ``windows_oracle``; tests/test_step_vectorised.py runs random input
  through it and through the vectorised step (jobs/stateful_step.py);
* ``cad_pure_python`` -- CAD OSE as one Python loop over the stored contexts
  per step; tests/detectors/test_cad_speed_equivalence.py checks the
  vectorised detectors/cad.py against it.

They are test code: neither the job nor bench/ imports them
(tests/test_floor_plan.py).
"""

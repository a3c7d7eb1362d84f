"""Layer 5, runs and the command line: configs, run folders, checkpoints, jobs (one per
model kind), figures, ``pyrovae train | evaluate | sample | compare | check-kl``.

May import from every layer below.
"""

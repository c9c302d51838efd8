"""Everything that touches a run directory: its layout and rank-0 writes (``rundir``: ``RunDir``, ``open_run_dir``),
checkpoints (``checkpoint``: safetensors + JSON, the newest intact one, the optimizer state's layout on resume),
what resuming and stopping find and leave (``run_state``: ``finished``, ``previous_summary``, ``stopped_by``,
``tidy_on_failure``), and what a finished run exports (``export``: the plain student, ONNX). Import the modules
directly; this package imports nothing, so that reading a run directory stays light.
"""

"""Evaluation: what a run reports about its models on the test split. ``evaluate`` (top-1 and the student-teacher
agreement, the heads' top-1, k-NN and linear probe on the embedding, the teachers' top-1, ``logits_in_order``) and
``retrieval`` (mean average precision, ``eval: [map]``). Import the modules directly."""

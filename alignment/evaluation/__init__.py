"""Evaluation: greedy (tool-loop) generation with answer extraction and matching, accuracy, and
SPECS' Generalization Factor."""

"""Evaluation apart from the detectors: NAB scoring of detector output against labelled windows."""

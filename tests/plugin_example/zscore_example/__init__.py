"""Example detector plugin package; the detector lives in :mod:`zscore_example.detector`."""

from zscore_example.detector import ZScoreDetector

__all__ = ["ZScoreDetector"]

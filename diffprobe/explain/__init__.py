"""Explanation tools of Park, Ju & Lee (ESWA 2024) on any diffusers UNet (no Lightning here)."""

from diffprobe.explain.schedules import compare_schedules

__all__ = ["compare_schedules"]
